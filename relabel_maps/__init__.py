"""relabel-maps: versioned, compressed top-k label maps and crop-level soft labels.

The core (this package's top level) needs only numpy and zstandard::

    import relabel_maps
    with relabel_maps.open("maps/") as maps:
        soft = maps["n01440764/n01440764_10026.JPEG"].pool((0.1, 0.2, 0.7, 0.9), flip=True)
"""

from __future__ import annotations

from ._version import __version__
from .errors import (
    CorruptRecordError,
    DependencyError,
    FormatError,
    InvalidArgumentError,
    InvalidBoxError,
    InvalidLabelMapError,
    MissingKeyError,
    RelabelMapsError,
    UnsupportedVersionError,
    WriterError,
)
from .format import FORMAT_VERSION
from .labelmap import LabelMap
from .opener import open
from .reader import LabelMaps
from .writer import Writer

__all__ = [
    "__version__",
    "FORMAT_VERSION",
    "open",
    "Writer",
    "LabelMap",
    "LabelMaps",
    "RelabelMapsError",
    "FormatError",
    "UnsupportedVersionError",
    "CorruptRecordError",
    "MissingKeyError",
    "InvalidBoxError",
    "InvalidLabelMapError",
    "InvalidArgumentError",
    "WriterError",
    "DependencyError",
]
