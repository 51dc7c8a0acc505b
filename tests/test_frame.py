"""What the teacher saw: crop-mode spellings, the source window, and TeacherFrame (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest

from relabel_maps.errors import InvalidArgumentError
from relabel_maps.frame import CROP_MODES, TeacherFrame, normalize_crop_mode, source_window

CENTER_SPELLINGS = ("center", "center-crop", "center_crop", "centre_crop", "shorter_center_crop",
                    "shorter_side_center_crop", "shorter", "shorter-side", "crop", "Center-Crop")


@pytest.mark.parametrize("spelling", CENTER_SPELLINGS)
def test_center_spellings(spelling):
    assert normalize_crop_mode(spelling) == "center"


@pytest.mark.parametrize("spelling", ["squash", "stretch", "resize", "SQUASH"])
def test_squash_spellings(spelling):
    assert normalize_crop_mode(spelling) == "squash"


def test_unknown_crop_mode_names_the_accepted_values():
    assert CROP_MODES == ("center", "squash")
    with pytest.raises(InvalidArgumentError, match="'center', 'squash'"):
        normalize_crop_mode("letterbox")


def test_source_window():
    assert source_window(75, 100, (64, 64), "squash") == (0, 0, 75, 100)
    assert source_window(75, 100, (64, 64), "center") == (0, 12, 75, 75)
    assert source_window(128, 128, (64, 64), "center", crop_pct=0.5) == (32, 32, 64, 64)
    assert source_window(60, 80, (8, 8), "center-crop") == (0, 10, 60, 60)  # a 1.0 spelling reads the same
    with pytest.raises(InvalidArgumentError):
        source_window(60, 80, (8, 8), "border")


def test_frame_normalize():
    # shorter-side resize + centre crop to 8x8 on an 80x60 image: the teacher saw columns 10..70
    frame = TeacherFrame("center", (8, 8))
    assert frame.window((80, 60)) == (10.0, 0.0, 70.0, 60.0)
    assert frame.normalize((10, 0, 40, 30), (80, 60)) == (0.0, 0.0, 0.5, 0.5)
    # outside the teacher's window: clipped; wholly outside: a sliver at the nearest edge
    assert frame.normalize((0, 0, 40, 60), (80, 60)) == (0.0, 0.0, 0.5, 1.0)
    x0, _, x1, _ = frame.normalize((0, 0, 5, 60), (80, 60))
    assert x0 == 0.0 and 0 < x1 <= 1e-3
    assert TeacherFrame().normalize((20, 15, 60, 45), (80, 60)) == (0.25, 0.25, 0.75, 0.75)


def test_frame_from_metadata():
    assert TeacherFrame.from_metadata({}) == TeacherFrame() == TeacherFrame("squash")
    assert TeacherFrame.from_metadata(None).crop_mode == "squash"
    f = TeacherFrame.from_metadata({"teacher": {"crop_mode": "center", "crop_pct": 0.875, "input_size": [3, 224, 256]}})
    assert f == TeacherFrame("center", (224, 256), 0.875)
    # format 1.0 files name the mode teacher.resize, in free spellings
    assert TeacherFrame.from_metadata({"teacher": {"resize": "center-crop", "input_size": [8, 8]}}) == TeacherFrame(
        "center", (8, 8)
    )
    assert TeacherFrame.from_metadata({"teacher": {"resize": "squash", "input_size": [475, 475]}}).crop_mode == "squash"
    assert TeacherFrame.from_metadata({"crop_mode": "center", "input_size": 32}) == TeacherFrame("center", (32, 32))
    assert TeacherFrame("center_crop", (8, 8)).crop_mode == "center"  # stored canonical
    with pytest.raises(InvalidArgumentError):
        TeacherFrame.from_metadata({"teacher": {"resize": "letterbox"}})
    with pytest.raises(InvalidArgumentError):
        TeacherFrame("center")  # needs input_size
    with pytest.raises(InvalidArgumentError):
        TeacherFrame("squash", crop_pct=1.5)


def test_center_window_matches_the_annotator():
    pytest.importorskip("PIL")
    from relabel_maps.annotate.decode import resize_array

    # the window TeacherFrame reports is exactly the part of the image the annotator's resize keeps:
    # squashing that window gives the same pixels as the annotator's centre-crop resize
    rng = np.random.default_rng(0)
    frame = TeacherFrame("center", (64, 64))
    for w, h in ((100, 75), (75, 100), (128, 85), (101, 99), (64, 64)):
        x0, y0, x1, y1 = (int(v) for v in frame.window((w, h)))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(
            resize_array(img, (64, 64), "center"), resize_array(img[y0:y1, x0:x1], (64, 64), "squash")
        )
        assert (x1 - x0) == w or (y1 - y0) == h  # it covers the shorter side
    assert frame.window((100, 75)) == (12.0, 0.0, 87.0, 75.0)
    assert TeacherFrame("squash").window((100, 75)) == (0.0, 0.0, 100.0, 75.0)
    assert TeacherFrame("center", (64, 64), crop_pct=0.5).window((128, 128)) == (32.0, 32.0, 96.0, 96.0)


def test_maps_converted_by_0_1_0_read_as_a_squash_frame() -> None:
    """0.1.0's converter wrote free text in ``teacher.resize``; such files must still train."""
    meta = {"teacher": {"resize": "full image resized to 475x475", "input_size": [475, 475]}}
    assert TeacherFrame.from_metadata(meta) == TeacherFrame("squash", (475, 475))
