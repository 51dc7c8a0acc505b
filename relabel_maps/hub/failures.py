"""What a failed Hub call means: a typed :class:`~relabel_maps.errors.HubError`, and whether to try again.

huggingface_hub raises its own classes (``RepositoryNotFoundError``, ``HfHubHTTPError`` carrying a status
code, ...) and lets its HTTP stack's errors (connection reset, timeout) through, sometimes wrapped in a
``LocalEntryNotFoundError`` or a ``RuntimeError``. :func:`classify` walks the cause chain, maps the first
failure it recognises to a typed error whose one-line message names what was asked for and keeps the
Hub's own explanation, and says whether the failure is transient (HTTP 408/429/5xx, a dropped, reset or
refused connection, a timeout, a truncated download, a commit that lost a race for the branch head).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ..errors import HubAuthError, HubError, HubNetworkError, HubNotFoundError, RelabelMapsError, require

__all__ = ["TRANSIENT_STATUS", "classify", "detail"]

#: HTTP statuses worth retrying: timeout, rate limit, server errors, and 412 (a commit's parent is no longer
#: the branch head: push re-lists the branch on retry, so the next attempt diffs against the new head)
TRANSIENT_STATUS = frozenset({408, 412, 429, 500, 502, 503, 504})
_HTTP_STACK = frozenset({"httpx", "httpx2", "httpcore", "httpcore2", "h11", "requests", "urllib3"})
_TRANSIENT_WORDS = ("Timeout", "Connect", "Network", "Read", "Write", "Protocol", "ChunkedEncoding", "Disconnected")
_REQUEST_ID = re.compile(r"\s*\((?:Request ID|Amzn Trace ID|Amz CF ID): [^)]*\)")
_BARE_STATUS = re.compile(r"^\d{3} [A-Za-z ]+?(?:\.|: None\.)?$")
_LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from (explicitly, else implicitly), without loops."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _status(exc: BaseException) -> int | None:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def detail(exc: BaseException) -> str:
    """The informative part of ``exc``'s message on one line: ``HTTP 404: Repository Not Found for url: ...``.

    huggingface_hub puts a bare ``404 Client Error.`` first and the explanation on the next lines; this keeps
    the explanation (and the server's own message), and drops request ids.
    """
    lines = [_REQUEST_ID.sub("", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    informative = [line for line in lines if not _BARE_STATUS.match(line)]
    server = (getattr(exc, "server_message", None) or "").strip().splitlines()[:1]
    parts = informative[:1] or server or lines[:1] or [type(exc).__name__]
    if server and server[0].lower() not in parts[0].lower():
        parts += server
    status = _status(exc)
    text = "; ".join(parts)
    return f"HTTP {status}: {text}" if status is not None else text


def _from_hub_library(exc: BaseException) -> bool:
    """Whether ``exc`` is a huggingface_hub class or was raised inside huggingface_hub."""
    if type(exc).__module__.split(".")[0] == "huggingface_hub":
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("huggingface_hub")


def _transport(exc: BaseException) -> tuple[HubError, bool] | None:
    """A failure of the HTTP transport itself (no HTTP status): connection refused/reset/dropped, timeout."""
    name, root = type(exc).__name__, type(exc).__module__.split(".")[0]
    if root in _HTTP_STACK and any(word in name for word in _TRANSIENT_WORDS):
        return HubNetworkError(f"connection to the Hub failed ({name}: {detail(exc)})"), True
    if root in _HTTP_STACK:
        return HubError(f"the Hub request failed ({name}: {detail(exc)})"), False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return HubNetworkError(f"connection to the Hub failed ({name}: {detail(exc)})"), True
    if isinstance(exc, OSError) and str(exc).startswith("Consistency check failed"):  # a truncated download
        return HubNetworkError(f"a download from the Hub was cut short ({detail(exc)})"), True
    return None


def _one(exc: BaseException, hf: Any) -> tuple[HubError, bool] | None:
    """The typed error for ``exc`` alone (message without the target), or None when not recognised."""
    if isinstance(exc, getattr(hf, "OfflineModeIsEnabled", ())):
        return HubNetworkError("not in the local cache, and HF_HUB_OFFLINE=1 forbids downloading it"), False
    if isinstance(exc, hf.GatedRepoError):
        return HubAuthError(f"gated repo: request access on the Hub, then {_LOGIN_HINT} ({detail(exc)})"), False
    if isinstance(exc, hf.RepositoryNotFoundError):
        return HubNotFoundError(
            f"no such dataset repo on the Hub, or it is private and the token cannot read it ({detail(exc)})"
        ), False
    if isinstance(exc, hf.RevisionNotFoundError):
        return HubNotFoundError(f"revision not found ({detail(exc)})"), False
    remote_entry = getattr(hf, "RemoteEntryNotFoundError", hf.EntryNotFoundError)  # older releases: one class
    if isinstance(exc, remote_entry) and not isinstance(exc, hf.LocalEntryNotFoundError):
        return HubNotFoundError(f"file not found in the repo ({detail(exc)})"), False
    if isinstance(exc, hf.HfHubHTTPError):
        status = _status(exc)
        if status in (401, 403):
            return HubAuthError(f"the Hub refused the request ({detail(exc)}); {_LOGIN_HINT}"), False
        if status == 412:
            return HubError(f"the branch moved while committing ({detail(exc)})"), True
        if status in TRANSIENT_STATUS:
            return HubNetworkError(f"the Hub failed ({detail(exc)})"), True
        return HubError(f"the Hub refused the request ({detail(exc)})"), False
    return _transport(exc)


def classify(exc: BaseException, target: str) -> tuple[HubError, bool] | None:
    """``(typed error, transient)`` for a failure of a Hub call about ``target``, or None when ``exc`` is not
    a Hub failure (a local error, or already a :class:`RelabelMapsError`). The message starts with ``target``."""
    if isinstance(exc, RelabelMapsError):
        return None
    hf = require("huggingface_hub.errors", "hub")
    found = None
    for cause in _causes(exc):
        found = _one(cause, hf)
        if found is not None:
            break
    if found is None:
        if isinstance(exc, hf.LocalEntryNotFoundError):
            hub = require("huggingface_hub", "hub")
            if hub.constants.is_offline_mode():
                found = HubNetworkError("not in the local cache, and HF_HUB_OFFLINE=1 forbids downloading it"), False
            else:
                found = HubNotFoundError(f"not in the local cache ({detail(exc)})"), False
        elif _from_hub_library(exc):
            found = HubError(f"{type(exc).__name__}: {detail(exc)}"), False
        else:
            return None
    error, transient = found
    typed = type(error)(f"{target}: {error}")
    return typed, transient
