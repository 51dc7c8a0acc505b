"""LabelMap construction from array-likes: casting, sorting and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from relabel_maps import InvalidLabelMapError, LabelMap

IDX = np.array([[[0, 1]], [[2, 3]], [[4, 0]]])  # (k=3, H=1, W=2)
SC = np.array([[[1.0, 0.5]], [[3.0, 2.0]], [[2.0, 9.0]]])


def test_sorts_by_descending_score_and_keeps_padding_last() -> None:
    lm = LabelMap.from_arrays(IDX, SC, num_classes=5, counts=[[3, 2]])
    assert lm.indices[:, 0, 0].tolist() == [2, 4, 0]
    assert lm.scores[:, 0, 0].tolist() == [3.0, 2.0, 1.0]
    # location 1 holds 2 valid entries (1: 0.5, 3: 2.0); the padding entry (0: 9.0) stays at rank 2
    assert lm.indices[:, 0, 1].tolist() == [3, 1, 0]
    assert lm.scores[:2, 0, 1].tolist() == [2.0, 0.5]
    assert lm.valid()[:, 0, 1].tolist() == [True, True, False]


@pytest.mark.parametrize("counts", [[[258, 2]], [[0, 2]], [[4, 2]], [[-1, 2]], [[1.5, 2]], [[1, 2, 3]]])
def test_counts_out_of_range_or_misshapen_are_rejected(counts) -> None:
    """258 would wrap to 2 in uint8: it must be rejected before the cast, not stored as 2."""
    with pytest.raises(InvalidLabelMapError, match="counts"):
        LabelMap.from_arrays(IDX, SC, num_classes=5, counts=counts)


@pytest.mark.parametrize("indices", [IDX + 5, IDX - 1, IDX + 0.5])
def test_class_indices_out_of_range_are_rejected(indices) -> None:
    with pytest.raises(InvalidLabelMapError, match="class indices"):
        LabelMap.from_arrays(indices, SC, num_classes=5)


def test_index_dtype_follows_the_class_count() -> None:
    assert LabelMap.from_arrays(IDX, SC, num_classes=65536).indices.dtype == np.uint16
    assert LabelMap.from_arrays(IDX, SC, num_classes=65537).indices.dtype == np.uint32


def test_dense_refuses_a_huge_map_before_allocating() -> None:
    """A valid map whose class count makes (C, H, W) enormous gets a typed error, not a MemoryError."""
    import tracemalloc

    from relabel_maps.errors import InvalidArgumentError

    lm = LabelMap.from_arrays(np.zeros((1, 2, 2), np.uint32), np.zeros((1, 2, 2), np.float32),
                              num_classes=2**31 - 1)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgumentError, match="dense"):
            lm.dense()
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
