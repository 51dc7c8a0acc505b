"""Build the conformance vectors of spec/FORMAT.md and spec/POOLING.md.

    python spec/vectors/make_vectors.py [OUT_DIR]       # default: this folder

Writes a few small label-map files (and one sharded dataset) plus ``vectors.json`` holding, for
every record, the decoded arrays as nested lists, and the expected pooled labels for a set of
boxes, flips, sizes and fill modes (computed with the dense reference pooler). Everything is
derived from fixed seeds, so running it twice gives identical bytes.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
VECTORS_VERSION = 1
TOLERANCE = 1e-6


def synthetic_logits(rng: np.random.Generator, c: int, h: int, w: int) -> np.ndarray:
    """Smooth, realistic-looking logits: a few spatial blobs of dominant classes over noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    logits = rng.normal(scale=1.0, size=(c, h, w))
    for cls in rng.choice(c, size=min(4, c), replace=False):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.0, max(h, w))
        logits[cls] += rng.uniform(4, 12) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return logits.astype(np.float32)


def topk_record(logits: np.ndarray, k: int, *, counts: bool = False, rng: np.random.Generator | None = None,
                probabilities: bool = False) -> dict[str, np.ndarray | None]:
    """Top-k entries of a dense logit map, with exact lse; optional variable k (padding 0/0)."""
    idx = np.argsort(-logits, axis=0, kind="stable")[:k]
    sc = np.take_along_axis(logits, idx, axis=0)
    lse = np.log(np.exp(logits.astype(np.float64)).sum(axis=0)).astype(np.float32)
    if probabilities:
        sc = np.exp(sc.astype(np.float64) - lse).astype(np.float32)
    cnt = None
    if counts:
        assert rng is not None
        cnt = rng.integers(1, k + 1, size=logits.shape[1:]).astype(np.uint8)
        pad = np.arange(k)[:, None, None] >= cnt[None]
        idx = np.where(pad, 0, idx)
        sc = np.where(pad, np.float32(0), sc)
    return {"indices": idx.astype(np.uint16), "scores": sc.astype(np.float32), "lse": None if probabilities else lse,
            "counts": cnt}


# name, writer arguments, records: (key, classes, k, h, w, options)
FILES: list[dict[str, Any]] = [
    {"path": "f32.rlm", "writer": {"num_classes": 20, "k": 3, "encoding": "f32"}, "seed": 1,
     "records": [("a", 3, 4, 5, {}), ("b/ü.JPEG", 3, 3, 3, {}), ("c", 3, 6, 2, {})]},
    {"path": "f16.rlm", "writer": {"num_classes": 20, "k": 3, "encoding": "f16"}, "seed": 1,
     "records": [("a", 3, 4, 5, {}), ("b/ü.JPEG", 3, 3, 3, {}), ("c", 3, 6, 2, {})]},
    {"path": "lse_counts.rlm", "writer": {"num_classes": 30, "k": 4, "encoding": "f32"}, "seed": 2,
     "records": [("x", 4, 5, 5, {"counts": True}), ("y", 4, 4, 6, {"counts": True})]},
    {"path": "probabilities.rlm", "writer": {"num_classes": 12, "k": 3, "encoding": "f32",
                                             "score_kind": "probabilities"}, "seed": 3,
     "records": [("p0", 3, 4, 4, {"counts": True, "probabilities": True})]},
    {"path": "sharded", "writer": {"num_classes": 20, "k": 2, "encoding": "f16", "max_records": 2}, "seed": 4,
     "records": [("s0", 2, 3, 4, {}), ("s1", 2, 2, 2, {}), ("s2", 2, 4, 3, {})]},
    {"path": "compact.rlm", "seed": 5,
     "writer": {"num_classes": 1000, "k": 5, "encoding": {"name": "compact", "step": 2.0**-7, "fine_ranks": 2}},
     "records": [("img0", 5, 15, 15, {}), ("img1", 5, 8, 8, {})], "optional_codec": "compact"},
]

# box, flip, size, fill, temperature, sampling_ratio
POOL_CASES: list[tuple[tuple[float, ...], bool, int, str | None, float, int]] = [
    ((0.0, 0.0, 1.0, 1.0), False, 1, None, 1.0, -1),
    ((0.1, 0.2, 0.7, 0.9), False, 1, "zero", 1.0, -1),
    ((0.1, 0.2, 0.7, 0.9), True, 2, "zero", 1.0, -1),
    ((0.25, 0.0, 1.0, 0.6), True, 3, "topk", 0.5, -1),
    ((-0.2, 0.5, 0.6, 1.3), False, 1, "topk", 1.0, 2),
    ((0.3, 0.3, 0.34, 0.31), False, 1, "zero", 2.0, -1),
    ((0.0, 0.1, 0.9, 1.0), False, 2, "uniform", 1.0, -1),
    ((1.5, 0.2, 1.9, 0.6), False, 1, "zero", 1.0, -1),
]
LARGE_CASES = (0, 1, 4)  # size-1 cases only for maps with many classes (keeps the JSON small)


def _codec_available(name: str) -> bool:
    from relabel_maps.codecs import CODECS

    return name in CODECS


def _floats(a: np.ndarray) -> Any:
    """float32 values as JSON numbers, each written as the shortest decimal that reads back as the
    same float32 (parse as float64, round to float32)."""
    a = np.asarray(a, dtype=np.float32)
    short = np.array([float(str(v)) for v in a.ravel()], dtype=np.float64)
    return short.reshape(a.shape).tolist()


def _record_json(lm: Any) -> dict[str, Any]:
    return {
        "shape": list(lm.shape),
        "indices": lm.indices.tolist(),
        "scores": _floats(lm.scores),
        "lse": None if lm.lse is None else _floats(lm.lse),
        "counts": None if lm.counts is None else lm.counts.tolist(),
    }


def build(out: str | Path) -> dict[str, Any]:
    """Write the files and ``vectors.json`` into ``out``; return the JSON document."""
    import relabel_maps
    from relabel_maps.pooling import pool_dense

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "description": "relabel-maps conformance vectors: decoded arrays and pooled labels (spec/POOLING.md)",
        "vectors_version": VECTORS_VERSION,
        "format_version": list(relabel_maps.FORMAT_VERSION),
        "tool_version": relabel_maps.__version__,
        "pool_tolerance": TOLERANCE,
        "files": [],
        "pool": [],
    }
    for spec in FILES:
        if "optional_codec" in spec and not _codec_available(spec["optional_codec"]):
            continue
        rng = np.random.default_rng(spec["seed"])
        target = out / spec["path"]
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        wargs = {"level": 19, **spec["writer"]}  # the level the vectors were written with
        with relabel_maps.Writer(target, metadata={"vectors.seed": spec["seed"]}, **wargs) as writer:
            for key, k, h, w, opts in spec["records"]:
                logits = synthetic_logits(rng, wargs["num_classes"], h, w)
                rec = topk_record(logits, k, rng=rng, **opts)
                writer.add(key, rec["indices"], rec["scores"], lse=rec["lse"], counts=rec["counts"])
        enc = wargs["encoding"]
        entry: dict[str, Any] = {"path": spec["path"], "encoding": enc if isinstance(enc, str) else enc["name"],
                                 "num_classes": wargs["num_classes"],
                                 "score_kind": wargs.get("score_kind", "logits"), "records": {}}
        with relabel_maps.open(target) as maps:
            for key in maps:
                lm = maps[key]
                entry["records"][key] = _record_json(lm)
                cases = LARGE_CASES if lm.num_classes > 100 else range(len(POOL_CASES))
                for ci in cases:
                    box, flip, size, fill, temperature, sr = POOL_CASES[ci]
                    if fill == "uniform" and lm.score_kind == "logits" and lm.lse is None:
                        continue
                    label = pool_dense(lm, box, flip=flip, size=size, fill=fill, temperature=temperature,
                                       sampling_ratio=sr)
                    doc["pool"].append({"path": spec["path"], "key": key, "box": list(box), "flip": flip,
                                        "size": size, "fill": fill, "temperature": temperature,
                                        "sampling_ratio": sr, "expected": _floats(label)})
        doc["files"].append(entry)
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
    (out / "vectors.json").write_text(text + "\n", encoding="utf-8")
    return doc


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else HERE
    doc = build(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.suffix in (".rlm", ".json"))
    print(f"wrote {len(doc['files'])} files/datasets, {len(doc['pool'])} pooled labels, {size / 1024:.1f} KiB to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
