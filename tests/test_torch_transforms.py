"""Crop boxes from torchvision v2 transforms, teacher frames, and the box math against brute force."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from PIL import Image  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

import relabel_maps.frame  # noqa: E402
import relabel_maps.torch  # noqa: E402
from relabel_maps import LabelMap  # noqa: E402
from relabel_maps.errors import InvalidArgumentError  # noqa: E402
from relabel_maps.torch import (  # noqa: E402
    BoxState,
    CropBox,
    RandomHorizontalFlipWithBox,
    RandomResizedCropWithBox,
    TeacherFrame,
    stack_label_maps,
    transform_with_box,
)


def test_identity_box_and_frames():
    box = CropBox.from_size(80, 60)
    assert box.pixels() == (0.0, 0.0, 80.0, 60.0) and not box.flip and box.image_size == (80, 60)
    assert box.to_frame() == ((0.0, 0.0, 1.0, 1.0), False)
    assert box.state() == BoxState(0.0, 0.0, 80.0, 60.0, 80.0, 60.0, False, 80.0, 60.0)
    # columns 10..40, mirrored; a teacher that centre-cropped the 80x60 image to 8x8 saw columns 10..70
    box = CropBox.from_state(BoxState.identity(80, 60).crop(0, 10, 60, 30).mirror())
    assert box.state().region == (10.0, 0.0, 40.0, 60.0) and box.flip
    assert box.to_frame(TeacherFrame("center", (8, 8))) == ((0.0, 0.0, 0.5, 1.0), True)
    assert relabel_maps.torch.TeacherFrame is relabel_maps.frame.TeacherFrame  # re-exported


def test_geometric_v2_transforms_update_the_box():
    img = Image.new("RGB", (80, 60))
    out, box = v2.Compose([v2.Resize(40), v2.CenterCrop(30), v2.Pad(2), v2.RandomHorizontalFlip(1.0)])(
        img, CropBox.like(img)
    )
    assert out.size == (34, 34) and box.flip
    s = 80 / 53  # Resize(40): 80x60 -> 53x40
    np.testing.assert_allclose(box.pixels(), (10 * s, 3 * 1.5, 44 * s, 37 * 1.5))
    # a crop of a mirrored image maps back to the mirrored columns
    _, box = v2.Compose([v2.RandomHorizontalFlip(1.0), v2.CenterCrop((60, 20))])(img, CropBox.like(img))
    # CenterCrop((60, 20)) of the mirrored image keeps canvas columns 30..50 = original columns 30..50
    np.testing.assert_allclose(box.pixels(), (30, 0, 50, 60))
    _, box = v2.Compose([v2.RandomHorizontalFlip(1.0), v2.Resize((60, 80)), v2.RandomCrop((60, 20))])(
        img, CropBox.like(img)
    )
    assert box.flip
    for bad in (v2.RandomRotation(30), v2.RandomVerticalFlip(1.0), v2.RandomAffine(10)):
        with pytest.raises(InvalidArgumentError):
            bad(img, CropBox.like(img))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_random_resized_crop_with_box_pil_and_tensor(as_tensor):
    torch.manual_seed(0)
    img = Image.new("RGB", (80, 60)) if as_tensor is False else torch.zeros(3, 60, 80, dtype=torch.uint8)
    t = v2.Compose([
        RandomResizedCropWithBox(32), RandomHorizontalFlipWithBox(), v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3),
    ])
    flips = set()
    for _ in range(20):
        out, box = t(img)
        assert tuple(out.shape) == (3, 32, 32) and isinstance(box, CropBox)
        (x0, y0, x1, y1), flip = box.to_frame()
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        flips.add(flip)
    assert flips == {True, False}
    # an explicit (image, box) pair keeps working, and default_collate stacks boxes
    out, box = RandomResizedCropWithBox(16)(img, CropBox.like(img))
    assert isinstance(box, CropBox)
    assert torch.utils.data.default_collate([box, box]).shape == (2, 9)


def _hires(lm: LabelMap, size_hw) -> torch.Tensor:
    """The map's logits bilinearly upsampled to image pixels (pixel-centre convention)."""
    dense = torch.from_numpy(lm.dense())[None]
    return torch.nn.functional.interpolate(dense, size=size_hw, mode="bilinear", align_corners=False)[0]


def _smooth_map(rng, c=4, h=8, w=12) -> LabelMap:
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    fields = np.stack([4 * xx, 4 * yy, 3 * np.sin(3 * xx + 2 * yy), -2 * xx * yy])[:c]
    fields = fields + rng.normal(0, 0.05, fields.shape)
    idx = np.broadcast_to(np.arange(c)[:, None, None], (c, h, w))
    return LabelMap.from_arrays(idx, fields.astype(np.float32), num_classes=c)


@pytest.mark.parametrize("size", [1, 2])
@pytest.mark.parametrize("frame_kind", ["squash", "center"])
def test_pooled_box_equals_brute_force_crop_average(size, frame_kind):
    """Run the same random crop + flip over a high-resolution copy of the map (one value per image
    pixel) and average what the network sees; pooling the low-resolution map over the transform's
    box must give the same logits (up to the resampling of the two paths)."""
    rng = np.random.default_rng(size)
    torch.manual_seed(size)
    lm = _smooth_map(rng)
    crop = [RandomResizedCropWithBox(24, scale=(0.1, 1.0), antialias=True), RandomHorizontalFlipWithBox()]
    if frame_kind == "squash":
        frame, image_hw = TeacherFrame(), (64, 96)
        hires = _hires(lm, image_hw)
        transform = v2.Compose(crop)
    else:  # a wide image; the teacher saw its central 64x64 square squeezed into the map's grid
        frame, image_hw = TeacherFrame("center", (64, 64)), (64, 160)
        hires = torch.full((lm.num_classes,) + image_hw, 50.0)  # junk outside the teacher's window
        hires[:, :, 48:112] = _hires(lm, (64, 64))
        transform = v2.Compose([v2.CenterCrop(64)] + crop)
    worst, flips = 0.0, set()
    for _ in range(12):
        seen, box = transform(hires.clone(), CropBox.from_size(image_hw[1], image_hw[0]))
        b, flip = box.to_frame(frame)
        flips.add(flip)
        expect = seen.reshape(lm.num_classes, size, 24 // size, size, 24 // size).mean((2, 4))
        got = stack_label_maps([lm], [b], [flip]).pool(size=size, activate=False)[0].reshape(lm.num_classes, size, size)
        worst = max(worst, float((got - expect).abs().max()))
    assert flips == {True, False}
    assert worst < 0.08, worst  # logits span ~[-2, 4]; a wrong box or a missing mirror is off by > 0.5


def test_brute_force_detects_a_wrong_flip():
    rng = np.random.default_rng(9)
    lm = _smooth_map(rng)
    hires = _hires(lm, (64, 96))
    seen, box = v2.Compose([v2.RandomHorizontalFlip(1.0), v2.CenterCrop((64, 48))])(hires, CropBox.from_size(96, 64))
    b, flip = box.to_frame()
    assert flip
    expect = seen.reshape(4, 1, 64, 2, 24).mean((2, 4))  # left and right halves as seen
    good = stack_label_maps([lm], [b], [True]).pool(size=2, activate=False)[0].mean(1)  # (C, x bins)
    bad = stack_label_maps([lm], [b], [False]).pool(size=2, activate=False)[0].mean(1)
    assert float((good - expect[:, 0]).abs().max()) < 0.05
    assert float((bad - expect[:, 0]).abs().max()) > 0.3


@pytest.mark.parametrize("as_tensor", [False, True])
def test_box_transforms_match_the_stock_v2_transforms(as_tensor):
    """Same seed, same pixels and same box as the stock transforms carrying a CropBox."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    if as_tensor:
        img = v2.functional.pil_to_tensor(img)
    ours = v2.Compose([RandomResizedCropWithBox(24), RandomHorizontalFlipWithBox()])
    stock = v2.Compose([v2.RandomResizedCrop(24), v2.RandomHorizontalFlip()])
    for seed in range(8):
        torch.manual_seed(seed)
        a, box_a = ours(img)
        torch.manual_seed(seed)
        b, box_b = stock(img, CropBox.like(img))
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert box_a.state() == box_b.state()


@pytest.mark.parametrize("as_tensor", [False, True])
def test_fast_lane_matches_the_v2_dispatch(as_tensor):
    """transform_with_box (the dataset's path) gives the pixels, box and random draws of the same
    pipeline run with a CropBox through the v2 dispatch, also with steps it must hand to v2."""
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    if as_tensor:
        img = v2.functional.pil_to_tensor(img)
    pipelines = [
        v2.Compose([RandomResizedCropWithBox(24), RandomHorizontalFlipWithBox(), v2.ToImage(),
                    v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.2] * 3)]),
        v2.Compose([v2.Resize(40), RandomHorizontalFlipWithBox(), v2.RandomCrop(30), v2.ColorJitter(0.4, 0.4),
                    v2.Compose([RandomResizedCropWithBox(16, scale=(0.3, 1.0)), v2.RandomGrayscale(0.5)]),
                    v2.RandomApply([v2.RandomHorizontalFlip(1.0)], p=0.5), v2.ToImage()]),
    ]
    for pipeline in pipelines:
        for seed in range(6):
            torch.manual_seed(seed)
            a, box_a = transform_with_box(pipeline, img)
            next_a = torch.rand(1)  # the same number of random draws
            torch.manual_seed(seed)
            b, box_b = pipeline(img, CropBox.like(img))
            assert torch.equal(torch.rand(1), next_a)
            assert torch.equal(torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b)))
            np.testing.assert_allclose(box_a.state(), box_b.state(), rtol=1e-12)
    with pytest.raises(InvalidArgumentError):
        transform_with_box(v2.Compose([v2.RandomVerticalFlip(1.0)]), img)
    with pytest.raises(InvalidArgumentError):
        transform_with_box(lambda image, box: image, img)


def test_missing_torchvision_names_the_extra():
    script = (
        "import sys; sys.modules['torchvision'] = None\n"
        "from relabel_maps.errors import DependencyError\n"
        "try:\n    import relabel_maps.torch\nexcept DependencyError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert 'pip install "relabel-maps[torch]"' in out
