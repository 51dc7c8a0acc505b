"""Write scikit-image's bundled colour photos as JPEG files, for a demo that works offline.

    python examples/sample_images.py OUT_DIR      # chelsea.jpg, coffee.jpg, astronaut.jpg, rocket.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path

import skimage.data
from PIL import Image

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        path = args.out_dir / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path, quality=args.quality)
        print(path)


if __name__ == "__main__":
    main()
