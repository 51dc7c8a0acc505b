"""Package discovery: every ``relabel_maps`` subpackage is found, so a new one cannot miss the wheel.

Everything else lives in pyproject.toml; ``cli/`` is installed as ``relabel_maps_cli`` (its
``package-dir`` mapping there), which ``packages.find`` alone cannot express.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["relabel_maps", "relabel_maps.*"]), "relabel_maps_cli"])
