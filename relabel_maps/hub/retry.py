"""Retrying Hub calls on transient failures, with a bounded exponential backoff.

Every call that talks to the Hub (push, pull, ``hf://`` reads) goes through :func:`hub_call`: a transient
failure (HTTP 408/429/5xx, a dropped, reset or refused connection, a timeout) is retried after
``delay``, ``2 * delay``, ... (at most ``max_delay``) until ``attempts`` tries are spent; every failure
leaves as a typed :class:`~relabel_maps.errors.HubError`. The defaults can be set with the environment
variables ``RELABEL_MAPS_HUB_RETRIES`` (tries in all) and ``RELABEL_MAPS_HUB_RETRY_DELAY`` (seconds).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import InvalidArgumentError
from .failures import classify

__all__ = ["RetryPolicy", "hub_call", "RETRIES_ENV", "DELAY_ENV"]

RETRIES_ENV = "RELABEL_MAPS_HUB_RETRIES"
DELAY_ENV = "RELABEL_MAPS_HUB_RETRY_DELAY"
_log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the n-th retry waits ``min(max_delay, delay * 2**(n-1))`` seconds."""

    attempts: int = 4
    delay: float = 1.0
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise InvalidArgumentError(f"retry attempts must be an integer >= 1, got {self.attempts!r}")
        if not (0 <= self.delay <= self.max_delay):
            raise InvalidArgumentError(
                f"retry delays must satisfy 0 <= delay <= max_delay, got delay={self.delay!r}, "
                f"max_delay={self.max_delay!r}"
            )

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy, with ``RELABEL_MAPS_HUB_RETRIES`` / ``RELABEL_MAPS_HUB_RETRY_DELAY`` applied."""
        options: dict[str, float | int] = {}
        for name, key, kind in ((RETRIES_ENV, "attempts", int), (DELAY_ENV, "delay", float)):
            raw = os.environ.get(name, "").strip()
            if raw:
                try:
                    options[key] = kind(raw)
                except ValueError:
                    raise InvalidArgumentError(f"{name} must be a number, got {raw!r}") from None
        if "delay" in options:
            options["max_delay"] = max(cls.max_delay, float(options["delay"]))
        return cls(**options)  # type: ignore[arg-type]

    def wait(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return float(min(self.max_delay, self.delay * 2 ** (retry - 1)))


def hub_call(target: str, fn: Callable[[], T], retry: RetryPolicy | None = None) -> T:
    """``fn()``, retried on transient Hub failures; any Hub failure is raised as a typed ``HubError`` whose
    message starts with ``target`` (what was asked for, e.g. ``hf://owner/repo``)."""
    policy = retry if retry is not None else RetryPolicy.from_env()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            found = classify(exc, target)
            if found is None:
                raise
            error, transient = found
            if not transient or attempt == policy.attempts:
                if transient and attempt > 1:
                    error = type(error)(f"{error} (gave up after {attempt} attempts)")
                raise error from exc
            wait = policy.wait(attempt)
            _log.info("%s; retrying in %.2f s (attempt %d of %d)", error, wait, attempt + 1, policy.attempts)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
