"""``python -m relabel_maps_cli``: the same as the ``relabel-maps`` command."""

from . import run

run()
