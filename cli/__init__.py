"""The ``relabel-maps`` command line (installed as the ``relabel_maps_cli`` package).

:func:`run` is the console entry point: it checks the ``cli`` extra before importing the command
group, so an install without it prints one line naming the fix instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys

CLI_REQUIREMENTS = ("click", "rich")
INSTALL_HINT = 'pip install "relabel-maps[cli]"'


def missing_requirements() -> list[str]:
    """The modules of the ``cli`` extra that cannot be imported."""
    missing = []
    for name in CLI_REQUIREMENTS:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def run() -> None:
    """Entry point of the ``relabel-maps`` command."""
    missing = missing_requirements()
    if missing:
        print(f"relabel-maps: the command line needs {', '.join(missing)}: {INSTALL_HINT}", file=sys.stderr)
        raise SystemExit(1)
    from .main import main

    main(prog_name="relabel-maps")
