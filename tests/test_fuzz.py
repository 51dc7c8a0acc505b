"""Fuzz the reader (seeded): mutated, truncated and spliced files raise only RelabelMapsError."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "fuzz_reader", Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_reader.py"
)
fuzz = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(fuzz)  # type: ignore[union-attr]


@pytest.fixture()
def hang_guard():
    """Fail (instead of hanging the suite) if the fuzz loop stalls for minutes."""

    def stalled(*_):
        raise TimeoutError("fuzz loop stalled")

    old = signal.signal(signal.SIGALRM, stalled)
    signal.alarm(300)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_base_files_are_valid():
    import io

    import relabel_maps as rm

    for data in fuzz.base_files():
        with rm.open(io.BytesIO(data)) as maps:
            assert maps.verify() == []


@pytest.mark.parametrize("seed", [20261125, 7])
def test_fuzz_reader(seed, hang_guard):
    outcomes, _ = fuzz.run(1500, seed)
    assert sum(outcomes.values()) == 1500
    # the mutations reach every layer: open-time rejections, record rejections and clean reads
    assert outcomes["FormatError"] and outcomes["CorruptRecordError"] and outcomes["ok"]
