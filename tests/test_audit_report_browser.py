"""The audit's HTML report in a real browser (headless Chromium): it loads without console errors, the
gallery renders one card per flagged image, the flag and class filters change what is shown, and a
screenshot is written. Skipped, with the reason, where no Chromium is installed.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("PIL")

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (apt-get install chromium)"),
]

_CARD = re.compile(r'<div class="card"([^>]*)>')


def browse(tmp_path: Path, url: str, *extra: str) -> tuple[str, str]:
    """``(DOM after the scripts ran, browser log)`` of ``url``."""
    assert BROWSER is not None
    profile = tmp_path / "profile"
    cmd = [
        BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", *extra, url,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def page_errors(log: str) -> list[str]:
    """Script errors and console messages of the page (the report logs nothing when all is well)."""
    return [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def shown_cards(dom: str) -> list[str]:
    """``data-key`` of every card not hidden by the filter."""
    return [re.search(r'data-key="([^"]*)"', attrs).group(1)  # type: ignore[union-attr]
            for attrs in _CARD.findall(dom) if " hidden" not in attrs]  # fmt: skip


def test_error_detection_is_real(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>document.body.x.y = 1;</script></body></html>")
    _, log = browse(tmp_path, bad.as_uri(), "--dump-dom")
    assert page_errors(log), log[-2000:]


def test_report_in_a_browser(tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    from audit_photos import TWO_OBJECTS, photo_set

    from relabel_maps.audit import audit

    photos = photo_set()
    result = audit(photos.maps, photos.images, tmp_path / "out")
    rows = {r["key"]: r for r in pq.read_table(result.paths["table"]).to_pylist()}
    flagged = {k for k, r in rows.items() if r["mislabelled"] or r["multi_object"] or r["not_visible"]}
    multi = {k for k, r in rows.items() if r["multi_object"]}
    mislabelled = {k for k, r in rows.items() if r["mislabelled"]}
    assert multi and mislabelled and multi != flagged
    report = result.paths["report"]

    dom, log = browse(tmp_path, report.as_uri(), "--dump-dom")
    assert not page_errors(log), page_errors(log)
    assert sorted(shown_cards(dom)) == sorted(flagged)  # one card per flagged image, all shown
    assert f'data-shown="{len(flagged)}"' in dom and f"{len(flagged)} of {len(flagged)} shown" in dom

    dom, log = browse(tmp_path, report.as_uri() + "#flag=multi_object", "--dump-dom")
    assert not page_errors(log)
    assert sorted(shown_cards(dom)) == sorted(multi) and TWO_OBJECTS in shown_cards(dom)
    dom, _ = browse(tmp_path, report.as_uri() + "#flag=mislabelled&class=967", "--dump-dom")
    assert sorted(shown_cards(dom)) == sorted(k for k in mislabelled if rows[k]["teacher_class"] == 967
                                              or 967 in rows[k]["top_classes"] or rows[k]["label"] == 967)  # fmt: skip
    dom, _ = browse(tmp_path, report.as_uri() + "#q=chelsea", "--dump-dom")
    assert shown_cards(dom) and all("chelsea" in key for key in shown_cards(dom))

    shot = tmp_path / "report.png"
    _, log = browse(tmp_path, report.as_uri(), f"--screenshot={shot}", "--window-size=1280,1800",
                    "--hide-scrollbars")  # fmt: skip
    assert not page_errors(log)
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1280, 1800)
