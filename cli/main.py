"""The ``relabel-maps`` command group.

Commands live in their own modules and are imported only when run, so ``relabel-maps --help``
stays fast and a command never pays for another command's dependencies (torch, pyarrow, the Hub).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import click

from relabel_maps.errors import RelabelMapsError

# name -> (module inside relabel_maps_cli, attribute, one-line help shown by ``--help``)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "annotate": ("annotate", "annotate", "Run a teacher over images and write label maps."),
    "info": ("inspection", "info", "Show metadata, sizes and a top-1 class histogram."),
    "verify": ("inspection", "verify", "Check every checksum and structural rule."),
    "keys": ("keys", "keys", "List the keys (optionally matching a pattern)."),
    "show": ("show", "show", "Draw a label map (and its image) to a PNG."),
    "pool": ("pool", "pool", "Soft label of a crop box of one record."),
    "convert": ("convert", "convert", "Convert the official ReLabel or TokenLabeling release."),
    "merge": ("merge", "merge", "Merge shards/ranks into one dataset."),
    "export": ("export", "export", "Export a per-image summary table (Parquet)."),
    "audit": ("audit", "audit", "Find mislabelled and multi-object images; write an HTML report."),
    "push": ("hub", "push", "Upload a dataset to the Hugging Face Hub."),
    "pull": ("hub", "pull", "Download a dataset from the Hugging Face Hub."),
}

_PACKAGE = __name__.rpartition(".")[0] or "relabel_maps_cli"


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(f"{_PACKAGE}.{module}") is not None
    except (ImportError, ValueError):
        return False


def _debug_requested(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get("RELABEL_MAPS_DEBUG", "") not in ("", "0")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class RelabelMapsGroup(click.Group):
    """A group whose commands are imported on first use and whose errors are one line long.

    ``--debug`` works anywhere on the command line (``relabel-maps info x --debug`` too)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:end]:
            args = ["--debug", *(a for i, a in enumerate(args) if i >= end or a != "--debug")]
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = [n for n, (mod, _, _) in COMMANDS.items() if _module_exists(mod)]
        return sorted(set(names) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        spec = COMMANDS.get(cmd_name)
        if spec is None or not _module_exists(spec[0]):
            return None
        module = importlib.import_module(f"{_PACKAGE}.{spec[0]}")
        command = getattr(module, spec[1], None)
        return command if isinstance(command, click.Command) else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(60)))
            else:
                rows.append((name, COMMANDS[name][2]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if _debug_requested(ctx):
                raise
            if _is_hub_error(exc) and not isinstance(exc, RelabelMapsError):
                raise click.ClickException(_hub_line(exc)) from None
            if isinstance(exc, (RelabelMapsError, OSError)):
                raise click.ClickException(_one_line(exc)) from None
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)"
            ) from None


def _is_hub_error(exc: BaseException) -> bool:
    """Errors of huggingface_hub and its HTTP stack (bad token, missing repo, offline, ...)."""
    return type(exc).__module__.split(".")[0] in ("huggingface_hub", "httpx", "httpx2", "requests")


def _hub_line(exc: BaseException) -> str:
    """A raw huggingface_hub error on one line that keeps its explanation (not just ``404 Client Error.``).

    The library raises typed errors itself; this covers Hub calls made by other packages (timm, datasets).
    """
    from relabel_maps.hub.failures import detail

    return detail(exc)


@click.group(
    cls=RelabelMapsGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Run 'relabel-maps COMMAND --help' for a command's options and examples.",
)
@click.option(
    "--debug", is_flag=True,
    help="Show full tracebacks instead of one-line error messages (before or after the command).",
)
@click.version_option(package_name="relabel-maps", prog_name="relabel-maps")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Inspect, convert, pool and share ReLabel-style top-k label maps.

    \b
    Examples:
      relabel-maps info maps/                     # what is in a dataset
      relabel-maps pool maps/ cat.jpg --box 0.1,0.1,0.8,0.9 --flip
      relabel-maps show maps/ cat.jpg --image cat.jpg --out cat.png
      relabel-maps push maps/ my-name/imagenet-relabel
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


if __name__ == "__main__":  # pragma: no cover
    main()
