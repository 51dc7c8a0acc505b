"""The ``relabel-maps`` command line (installed as the ``relabel_maps_cli`` package)."""
