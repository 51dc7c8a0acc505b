"""``push`` and ``pull``: datasets on the Hugging Face Hub.

Failures arrive as typed ``HubError``s whose one-line message names the repo and keeps the Hub's
explanation; transient ones (HTTP 5xx, dropped connections) were already retried by the library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from relabel_maps import hub
from relabel_maps.errors import InvalidArgumentError

from .common import console, progress_bar

__all__ = ["push", "pull"]


def _repo_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A validated ``owner/name`` or normalised ``hf://`` URL."""
    try:
        if value.startswith(hub.HF_SCHEME):
            return str(hub.parse_hub_url(value))
        return hub.validate_repo_id(value)
    except InvalidArgumentError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(
    epilog="""\b
Examples:
  relabel-maps push maps/ my-name/imagenet-relabel
  relabel-maps push maps/ my-org/relabel-l2 --private --license apache-2.0
  relabel-maps push maps/ my-name/labels --path-in-repo l2-475 --dry-run
\b
Log in first with `hf auth login` or set HF_TOKEN; the token is never printed.
Transient failures (HTTP 5xx, dropped connections) are retried: RELABEL_MAPS_HUB_RETRIES
tries in all (default 4), RELABEL_MAPS_HUB_RETRY_DELAY seconds before the first retry
(default 1, doubling). An interrupted push is completed by running it again: only what
the Hub lacks is uploaded, and readers see the old dataset until the single commit lands."""
)
@click.argument("path", type=click.Path(exists=True))
@click.argument("repo_id", callback=_repo_id)
@click.option(
    "--private", is_flag=True, default=None, help="Create the repo as private (only when it does not exist yet)."
)
@click.option("--revision", default=None, help="Branch to push to (default: main).")
@click.option("--path-in-repo", default="", help="Folder inside the repo for the shards and index.")
@click.option("--license", "license_", default="other", show_default=True, help="License id for the dataset card.")
@click.option("--tag", "tags", multiple=True, help="Extra dataset-card tag (repeatable).")
@click.option("--no-preview", is_flag=True, help="Do not upload the Parquet preview.")
@click.option("--keep-stale", is_flag=True, help="Keep remote .rlm/.index.json files this dataset no longer has.")
@click.option("--message", "-m", default=None, help="Commit message.")
@click.option("--dry-run", is_flag=True, help="Show what would be uploaded; change nothing.")
def push(
    path: str,
    repo_id: str,
    private: bool | None,
    revision: str | None,
    path_in_repo: str,
    license_: str,
    tags: Sequence[str],
    no_preview: bool,
    keep_stale: bool,
    message: str | None,
    dry_run: bool,
) -> None:
    """Upload the dataset at PATH to the Hub dataset repo REPO_ID (owner/name).

    Creates the repo when needed and uploads the shards, index, a README dataset
    card and a Parquet preview. Re-pushing uploads only files whose content changed.
    """
    out = console()
    if repo_id.startswith(hub.HF_SCHEME):
        raise click.BadParameter("give REPO_ID as owner/name (use --path-in-repo / --revision)", param_hint="REPO_ID")
    dataset_options: dict[str, Any] = {
        "path_in_repo": path_in_repo, "license": license_, "preview": not no_preview, "tags": tags,
    }
    if dry_run:
        with progress_bar(None, "preparing") as advance:
            plan = hub.plan_push(path, repo_id, progress=advance, **dataset_options)
        for up in plan:
            out.print(f"would upload {up.path_in_repo} ({up.size:,} bytes, sha256 {up.sha256[:12]})")
        return
    with progress_bar(None, "preparing") as advance:
        result = hub.push(
            path,
            repo_id,
            private=private,
            revision=revision,
            delete_stale=not keep_stale,
            commit_message=message,
            progress=advance,
            **dataset_options,
        )
    for name in result.uploaded:
        out.print(f"uploaded  {name}")
    for name in result.deleted:
        out.print(f"deleted   {name}")
    if not result.changed:
        out.print(f"{repo_id} is up to date ({len(result.unchanged)} file(s) unchanged)")
    else:
        out.print(
            f"pushed to {repo_id} "
            f"({len(result.uploaded)} uploaded, {len(result.unchanged)} unchanged, {len(result.deleted)} deleted)"
        )
        if result.commit_url:
            out.print(f"commit    {result.commit_url}")


@click.command(
    epilog="""\b
Examples:
  relabel-maps pull my-name/imagenet-relabel
  relabel-maps pull my-name/imagenet-relabel --revision v1.0 --local-dir maps/
  relabel-maps pull hf://my-name/labels/l2-475 --local-dir l2/
\b
Transient failures are retried as for push (RELABEL_MAPS_HUB_RETRIES, RELABEL_MAPS_HUB_RETRY_DELAY);
a pull that was interrupted fetches only the missing files when run again."""
)
@click.argument("repo_id", callback=_repo_id)
@click.option("--revision", default=None, help="Branch, tag or commit (default: main).")
@click.option(
    "--local-dir", type=click.Path(file_okay=False), default=None, help="Download here instead of the HF cache."
)
def pull(repo_id: str, revision: str | None, local_dir: str | None) -> None:
    """Download a dataset from the Hub (through huggingface_hub's cache) and print its path."""
    click.echo(hub.pull(repo_id, revision=revision, local_dir=local_dir))
