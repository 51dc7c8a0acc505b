"""Fuzz the reader (seeded): mutated, truncated and spliced files raise only RelabelMapsError."""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from types import ModuleType

import pytest

import relabel_maps as rm


@pytest.fixture()
def hang_guard() -> Iterator[None]:
    """Fail (instead of hanging the suite) if the fuzz loop stalls for minutes."""

    def stalled(*_: object) -> None:
        raise TimeoutError("fuzz loop stalled")

    old = signal.signal(signal.SIGALRM, stalled)
    signal.alarm(300)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_base_files_are_valid(fuzz: ModuleType) -> None:
    for data in fuzz.base_files():
        with rm.open(io.BytesIO(data)) as maps:
            assert maps.verify() == []


@pytest.mark.slow
@pytest.mark.parametrize("seed", [20261125, 7])
def test_fuzz_reader(seed: int, hang_guard: None, fuzz: ModuleType) -> None:
    outcomes = fuzz.run(1500, seed).outcomes
    assert sum(outcomes.values()) == 1500
    # the mutations reach every layer: open-time rejections, record rejections and clean reads
    assert outcomes["FormatError"] and outcomes["CorruptRecordError"] and outcomes["ok"]


@pytest.mark.slow
def test_fuzz_cases_stay_under_64_mib(hang_guard: None, fuzz: ModuleType) -> None:
    """No mutated file or index makes one case allocate more than 64 MiB (traced memory)."""
    stats = fuzz.run(1000, 3, memory=True)
    assert sum(stats.outcomes.values()) == 1000
    assert 0 < stats.peak_bytes < 64 << 20, stats
