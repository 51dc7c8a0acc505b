"""Real photos (the package's samples and scikit-image's) laid out three ways for the source tests:
a folder tree, WebDataset tar shards and Parquet files, plus the bad members a real source has.

Keys: the folder holds ``CLASS/NAME.jpg`` (or ``.png``); the tar shards hold the same files under the
same member names, so a sample's ``__key__`` is the folder key without its extension
(:func:`relabel_maps.samplekeys.strip_extension`); the Parquet files hold the bytes in a Hugging Face
``Image`` struct whose ``path`` is the folder key.
"""

from __future__ import annotations

import functools
import io
import tarfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

SHIPPED = Path(__file__).resolve().parents[1] / "relabel_maps" / "data"


@functools.lru_cache(maxsize=1)
def photos() -> dict[str, bytes]:
    """Folder key -> encoded file: the shipped JPEGs as they are, scikit-image photos as JPEG/PNG."""
    import skimage.data
    from PIL import Image

    out = {f"n02124075/{p.name}": p.read_bytes() for p in sorted(SHIPPED.glob("*.jpg"))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arrays = {
            "n04266014/astronaut.jpg": skimage.data.astronaut(),
            "n03773504/rocket.jpg": skimage.data.rocket(),
            "n09999999/hubble.png": skimage.data.hubble_deep_field(),
            "n09999999/camera.jpg": skimage.data.camera(),  # grayscale
            "n07920052/coffee_crop.jpg": skimage.data.coffee()[40:360, 60:540],
        }
    for key, arr in arrays.items():
        buf = io.BytesIO()
        kind = "PNG" if key.endswith(".png") else "JPEG"
        Image.fromarray(arr).save(buf, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
        out[key] = buf.getvalue()
    return dict(sorted(out.items()))


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return root


def add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            add_member(tf, name, data)
    return path


def good_members(files: dict[str, bytes], label: int = 0) -> list[tuple[str, bytes]]:
    """Each image as a WebDataset sample: the image member plus a ``.cls`` member."""
    out = []
    for key, data in files.items():
        stem = key.rsplit(".", 1)[0]
        out += [(key, data), (f"{stem}.cls", str(label).encode())]
    return out


@functools.lru_cache(maxsize=1)
def bad_jpeg() -> tuple[bytes, bytes]:
    """``(truncated JPEG, text file named .jpg)``."""
    jpeg = photos()["n04266014/astronaut.jpg"]
    return jpeg[: len(jpeg) // 2], b"this is a text file, not a JPEG\n" * 8


def write_bad_shards(root: Path, files: dict[str, bytes]) -> tuple[list[Path], dict[str, str]]:
    """Shards ``train-0000.tar`` .. ``train-0003.tar`` holding every image of ``files`` (split over the
    first three) and the bad members: a truncated JPEG, a text file named ``.jpg``, a sample without
    an image, the same key in two shards (the second copy, another photo, is the duplicate) and an
    empty shard. Returns the shards and ``{key or shard: expected failure reason}``."""
    keys = list(files)
    thirds = [keys[i::3] for i in range(3)]
    truncated, text = bad_jpeg()
    first_dup = thirds[0][0]
    other = files[thirds[1][0]]
    shards = [
        write_tar(root / "train-0000.tar", good_members({k: files[k] for k in thirds[0]})
                  + [("bad/truncated.jpg", truncated), ("bad/nopicture.cls", b"3")]),
        write_tar(root / "train-0001.tar", good_members({k: files[k] for k in thirds[1]})
                  + [("bad/text.jpg", text)]),
        write_tar(root / "train-0002.tar", good_members({k: files[k] for k in thirds[2]})
                  + [(first_dup, other)]),  # key of train-0000's first sample, another photo's bytes
        write_tar(root / "train-0003.tar", []),  # a valid tar with no member
    ]
    expected = {
        "bad/truncated": "truncated", "bad/nopicture": "missing-image", "bad/text": "not-an-image",
        first_dup.rsplit(".", 1)[0]: "duplicate-key", "train-0003.tar": "empty-shard",
    }
    return shards, expected


def write_parquet(path: Path, rows: list[dict[str, object] | None], row_group_size: int = 3,
                  **extra: list[object]) -> Path:
    """A Parquet file with an ``image`` column of Hugging Face ``Image`` structs (``rows``; ``None``
    for a null image) and ``extra`` columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(rows, type=kind), **extra})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def image_rows(files: dict[str, bytes]) -> list[dict[str, object] | None]:
    return [{"bytes": data, "path": key} for key, data in files.items()]


def random_jpeg(seed: int, size: tuple[int, int] = (48, 64)) -> bytes:
    """A small smooth JPEG (for tests that need many images quickly)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size[::-1]).save(buf, "JPEG", quality=90)
    return buf.getvalue()
