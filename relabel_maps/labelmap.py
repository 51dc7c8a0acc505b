"""`LabelMap`: one image's top-k label map, as stored in a label-map file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .classmap import ClassMap
from .errors import InvalidArgumentError, InvalidLabelMapError
from .format import SCORE_KINDS, index_dtype_for
from .pooling import MAX_POOL_OUTPUT
from .pooling import pool as _pool

__all__ = ["LabelMap", "SCORE_KINDS"]


class LabelMap:
    """Top-k class scores at every location of an ``H x W`` grid.

    Attributes:
        indices: ``(k, H, W)`` unsigned class indices (uint16, or uint32 when ``num_classes > 65536``),
            ordered by descending score at every location.
        scores: ``(k, H, W)`` float32 scores matching ``indices``.
        num_classes: size ``C`` of the class set.
        score_kind: ``"logits"`` or ``"probabilities"``.
        lse: optional ``(H, W)`` float32 log-sum-exp of the logits over all ``C`` classes.
        counts: optional ``(H, W)`` uint8 number of valid entries per location (variable k);
            entries at rank ``>= counts`` are padding (index 0, score 0) and carry no mass.
        key: the record's key, when read from a file.
        metadata: the file's metadata, when read from a file.
    """

    __slots__ = ("indices", "scores", "num_classes", "score_kind", "lse", "counts", "key", "metadata")

    def __init__(
        self,
        indices: np.ndarray,
        scores: np.ndarray,
        *,
        num_classes: int,
        score_kind: str = "logits",
        lse: np.ndarray | None = None,
        counts: np.ndarray | None = None,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        validate: bool = True,
    ) -> None:
        self.indices = indices
        self.scores = scores
        self.num_classes = int(num_classes)
        self.score_kind = score_kind
        self.lse = lse
        self.counts = counts
        self.key = key
        self.metadata = metadata if metadata is not None else {}
        if validate:
            self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        indices: Sequence | np.ndarray,
        scores: Sequence | np.ndarray,
        *,
        num_classes: int,
        score_kind: str = "logits",
        lse: Sequence | np.ndarray | None = None,
        counts: Sequence | np.ndarray | None = None,
        sort: bool = True,
        **kwargs: Any,
    ) -> LabelMap:
        """Build a validated map from array-likes, casting dtypes and (optionally) sorting each
        location's entries by descending score."""
        if num_classes < 1:
            raise InvalidLabelMapError(f"num_classes must be >= 1, got {num_classes}")
        index_dtype = index_dtype_for(num_classes)
        idx = np.asarray(indices)
        sc = np.asarray(scores, dtype=np.float32)
        if idx.ndim != 3 or sc.shape != idx.shape:
            raise InvalidLabelMapError(
                f"indices and scores must both have shape (k, H, W); got {idx.shape} and {sc.shape}"
            )
        if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= num_classes):
            raise InvalidLabelMapError(f"class indices must be integers in [0, {num_classes})")
        idx = idx.astype(index_dtype)
        cnt = None
        if counts is not None:  # check before the uint8 cast, which would wrap out-of-range values
            c = np.asarray(counts)
            k = idx.shape[0]
            bad_values = c.size and (not np.issubdtype(c.dtype, np.integer) or c.min() < 1 or c.max() > k)
            if c.shape != idx.shape[1:] or bad_values:
                raise InvalidLabelMapError(f"counts must be integers in [1, {k}] of shape {idx.shape[1:]}")
            cnt = c.astype(np.uint8)
        if sort and idx.size:
            keyed = -sc
            if cnt is not None:  # keep padding entries at the back
                pad = np.arange(idx.shape[0])[:, None, None] >= cnt[None]
                keyed = np.where(pad, np.inf, keyed)
            order = np.argsort(keyed, axis=0, kind="stable")
            idx = np.take_along_axis(idx, order, axis=0)
            sc = np.take_along_axis(sc, order, axis=0)
        lse_arr = None if lse is None else np.asarray(lse, dtype=np.float32)
        return cls(
            np.ascontiguousarray(idx),
            np.ascontiguousarray(sc),
            num_classes=num_classes,
            score_kind=score_kind,
            lse=lse_arr,
            counts=cnt,
            **kwargs,
        )

    def validate(self) -> None:
        """Check shapes, dtypes and values (class ids in range, finite scores, counts in ``[1, k]``);
        raise :class:`~relabel_maps.errors.InvalidLabelMapError` on the first problem."""
        idx, sc = self.indices, self.scores
        if self.score_kind not in SCORE_KINDS:
            raise InvalidLabelMapError(f"score_kind must be one of {SCORE_KINDS}, got {self.score_kind!r}")
        if not isinstance(idx, np.ndarray) or not isinstance(sc, np.ndarray):
            raise InvalidLabelMapError("indices and scores must be numpy arrays")
        if idx.ndim != 3 or sc.shape != idx.shape:
            raise InvalidLabelMapError(
                f"indices and scores must both have shape (k, H, W); got {idx.shape} and {sc.shape}"
            )
        k, h, w = idx.shape
        if k < 1 or h < 1 or w < 1:
            raise InvalidLabelMapError(f"label map shape must be positive, got (k, H, W) = {idx.shape}")
        if idx.dtype not in (np.uint16, np.uint32):
            raise InvalidLabelMapError(f"indices must be uint16 or uint32, got {idx.dtype}")
        if sc.dtype != np.float32:
            raise InvalidLabelMapError(f"scores must be float32, got {sc.dtype}")
        if int(idx.max()) >= self.num_classes:
            raise InvalidLabelMapError(f"class index {int(idx.max())} out of range for {self.num_classes} classes")
        if not np.isfinite(sc).all():
            raise InvalidLabelMapError("scores must be finite (found NaN or inf)")
        if self.lse is not None:
            if not isinstance(self.lse, np.ndarray) or self.lse.shape != (h, w) or self.lse.dtype != np.float32:
                raise InvalidLabelMapError(f"lse must be a float32 array of shape {(h, w)}")
            if not np.isfinite(self.lse).all():
                raise InvalidLabelMapError("lse must be finite")
        if self.counts is not None:
            c = self.counts
            if not isinstance(c, np.ndarray) or c.shape != (h, w) or c.dtype != np.uint8:
                raise InvalidLabelMapError(f"counts must be a uint8 array of shape {(h, w)}")
            if c.min() < 1 or c.max() > k:
                raise InvalidLabelMapError(f"counts must lie in [1, {k}]")

    # ------------------------------------------------------------------ properties
    @property
    def k(self) -> int:
        """Number of stored entries per location (the maximum, when ``counts`` is set)."""
        return int(self.indices.shape[0])

    @property
    def height(self) -> int:
        return int(self.indices.shape[1])

    @property
    def width(self) -> int:
        return int(self.indices.shape[2])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(k, H, W)``."""
        k, h, w = self.indices.shape
        return int(k), int(h), int(w)

    def valid(self) -> np.ndarray:
        """``(k, H, W)`` bool mask of entries that carry a score (all True without ``counts``)."""
        if self.counts is None:
            return np.ones(self.indices.shape, dtype=bool)
        return np.arange(self.k)[:, None, None] < self.counts[None]

    # ------------------------------------------------------------------ views
    def dense(self, fill_value: float = 0.0) -> np.ndarray:
        """The ``(C, H, W)`` float32 score map: stored scores, ``fill_value`` for every other class.

        Refuses (:class:`InvalidArgumentError`) maps above :data:`~relabel_maps.pooling.MAX_POOL_OUTPUT`
        values before allocating; the sparse :meth:`pool` never builds this array."""
        k, h, w = self.shape
        if self.num_classes * h * w > MAX_POOL_OUTPUT:
            raise InvalidArgumentError(
                f"a dense {self.num_classes}x{h}x{w} map has more than the {MAX_POOL_OUTPUT} values this "
                "library allocates; pool() works on the sparse entries instead"
            )
        out = np.full((self.num_classes, h * w), fill_value, dtype=np.float32)
        valid = self.valid().reshape(k, h * w)
        loc = np.broadcast_to(np.arange(h * w), (k, h * w))
        out[self.indices.reshape(k, h * w)[valid], loc[valid]] = self.scores.reshape(k, h * w)[valid]
        return out.reshape(self.num_classes, h, w)

    def top1(self) -> np.ndarray:
        """``(H, W)`` class index with the highest score at each location."""
        return self.indices[0].astype(np.int64)

    def pool(
        self,
        box: Sequence[float] = (0.0, 0.0, 1.0, 1.0),
        flip: bool = False,
        size: int = 1,
        fill: str | None = None,
        temperature: float = 1.0,
        sampling_ratio: int = -1,
        class_map: ClassMap | None = None,
    ) -> np.ndarray:
        """Soft label of a crop: ``(C,)`` probabilities for ``size == 1``, else ``(C, size, size)``.

        ``box`` is ``(x0, y0, x1, y1)`` normalised to the frame the teacher saw; ``flip`` means the
        crop was mirrored horizontally. See spec/POOLING.md for the exact semantics and fill modes.
        A ``class_map`` (:mod:`relabel_maps.classmap`) gives the label over the dataset's own classes.
        """
        return _pool(self, box, flip=flip, size=size, fill=fill, temperature=temperature,
                     sampling_ratio=sampling_ratio, class_map=class_map)

    def __repr__(self) -> str:
        k, h, w = self.shape
        key = f"key={self.key!r}, " if self.key is not None else ""
        extra = "".join([", lse" if self.lse is not None else "", ", variable-k" if self.counts is not None else ""])
        return f"LabelMap({key}k={k}, grid={h}x{w}, num_classes={self.num_classes}, {self.score_kind}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelMap):
            return NotImplemented

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))

        return (
            self.num_classes == other.num_classes
            and self.score_kind == other.score_kind
            and np.array_equal(self.indices, other.indices)
            and np.array_equal(self.scores, other.scores)
            and same(self.lse, other.lse)
            and same(self.counts, other.counts)
        )

    __hash__ = None  # type: ignore[assignment]
