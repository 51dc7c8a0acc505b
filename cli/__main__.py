"""``python -m relabel_maps_cli``: the same as the ``relabel-maps`` command."""

from .main import main

main(prog_name="relabel-maps")
