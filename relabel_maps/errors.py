"""Typed errors raised by relabel-maps.

Every error the library raises on bad input derives from :class:`RelabelMapsError`, so callers can
catch one class. Each subclass also derives from the closest built-in (``ValueError``, ``KeyError``,
``OSError``) so generic handlers keep working.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "RelabelMapsError",
    "FormatError",
    "UnsupportedVersionError",
    "CorruptRecordError",
    "MissingKeyError",
    "InvalidBoxError",
    "InvalidLabelMapError",
    "InvalidArgumentError",
    "WriterError",
    "OutputLockedError",
    "DatasetReplacedError",
    "DependencyError",
    "HubError",
    "HubNotFoundError",
    "HubAuthError",
    "HubNetworkError",
]


class RelabelMapsError(Exception):
    """Base class of every error raised by relabel-maps."""


class FormatError(RelabelMapsError, ValueError):
    """A file or index does not follow spec/FORMAT.md (bad magic, truncation, bad offsets, ...)."""


class UnsupportedVersionError(FormatError):
    """The file declares a MAJOR format version this reader does not implement."""


class CorruptRecordError(FormatError):
    """A stored checksum does not match the bytes read, or a record does not decode."""


class MissingKeyError(RelabelMapsError, KeyError):
    """A key is not present in the label-map file or dataset."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else ""


class InvalidBoxError(RelabelMapsError, ValueError):
    """A crop box is malformed: wrong shape, NaN/inf, empty or inverted."""


class InvalidLabelMapError(RelabelMapsError, ValueError):
    """Arrays given as a label map have the wrong shape, dtype or values."""


class InvalidArgumentError(RelabelMapsError, ValueError):
    """An option has an invalid value (unknown fill mode, bad temperature, ...)."""


class WriterError(RelabelMapsError):
    """A write cannot proceed (writer closed, duplicate key, output exists, ...)."""


class OutputLockedError(WriterError):
    """Another process (or another writer in this one) is writing the same output: it holds the
    output's lock file; the message names its pid, host and start time."""


class DatasetReplacedError(RelabelMapsError, OSError):
    """The dataset was replaced or deleted on disk after it was opened, and a shard it now needs
    belongs to the new one (or is gone); reopen the dataset to read the new one."""


class DependencyError(RelabelMapsError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class HubError(RelabelMapsError, OSError):
    """The Hugging Face Hub refused or failed a request (the message keeps the Hub's own explanation)."""


class HubNotFoundError(HubError, LookupError):
    """A Hub repo, revision or file does not exist (or is private and the token cannot see it)."""


class HubAuthError(HubError, PermissionError):
    """The Hub rejected the token, or the token lacks the rights for the request."""


class HubNetworkError(HubError, ConnectionError):
    """The Hub could not be reached or kept failing (HTTP 5xx, dropped connections, offline mode)."""


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency lazily, or raise :class:`DependencyError` naming the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DependencyError(
            f"{module} is required for this feature: pip install 'relabel-maps[{extra}]'"
        ) from exc
