"""``keys``: list a dataset's keys (all, or those matching shell-style patterns)."""

from __future__ import annotations

import fnmatch

import click

from .common import echo_json, open_maps

__all__ = ["keys"]


@click.command(
    epilog="""\b
Examples:
  relabel-maps keys maps/ | head
  relabel-maps keys maps/ --glob 'n01440764/*'
  relabel-maps keys maps/ --glob '*.png' --glob '*.webp' --count
  relabel-maps keys hf://my-name/imagenet-relabel --json"""
)
@click.argument("path")
@click.option("--glob", "patterns", multiple=True,
              help="Only keys matching this shell-style pattern ('*' also matches '/'); repeatable.")
@click.option("--count", is_flag=True, help="Print only the number of matching keys.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def keys(path: str, patterns: tuple[str, ...], count: bool, as_json: bool) -> None:
    """Print the keys of PATH, one per line, in the dataset's (sorted) order."""
    with open_maps(path) as maps:
        selected = (k for k in maps if not patterns or any(fnmatch.fnmatchcase(k, p) for p in patterns))
        if count:
            click.echo(sum(1 for _ in selected))
        elif as_json:
            echo_json(list(selected))
        else:
            for key in selected:
                click.echo(key)
