"""Draw ``docs/audit_report.png``, the README's picture of the audit report.

The photo set of the tests (``tests/audit_photos.py``: the shipped and scikit-image photos under their
ImageNet WordNet ids, copies under wrong ones, and a cat stacked above a coffee cup) is annotated with
the packaged EfficientNet-Lite0 teacher (offline), audited, and the report is opened in headless
Chromium, whose screenshot is written here. Needs the ``audit``, ``teachers`` and ``dev`` extras and
``chromium`` on the PATH.

    python docs/make_screenshot.py [--out docs/audit_report.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1280, 1880


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "audit_report.png")
    args = ap.parse_args(argv)
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        sys.exit("needs headless Chromium on the PATH (apt-get install chromium)")

    sys.path.insert(0, str(ROOT / "tests"))
    from audit_photos import photo_set

    from relabel_maps.audit import audit

    photos = photo_set()
    here = os.getcwd()
    os.chdir(photos.maps.parent)  # relative names in the report's header
    try:
        result = audit(photos.maps.name, photos.images.name, "audit")
    finally:
        os.chdir(here)
    report = photos.maps.parent / "audit" / "report.html"
    with tempfile.TemporaryDirectory() as profile:
        shot = Path(profile) / "shot.png"
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}",
             "--virtual-time-budget=3000", f"--screenshot={shot}", report.as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        with Image.open(shot) as img:
            img.convert("RGB").save(args.out, optimize=True)
    counts = result.summary["counts"]
    print(f"{args.out}: {counts['images']} images, {counts['mislabelled']} likely mislabelled, "
          f"{counts['multi_object']} multi-object")  # fmt: skip


if __name__ == "__main__":
    main()
