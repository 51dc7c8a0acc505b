"""Real photos in an ImageFolder under ImageNet WordNet ids, some deliberately under wrong ones, and
their label maps from the packaged ImageNet teacher (EfficientNet-Lite0, offline). Built once per
test process (annotating takes seconds) in a temporary folder removed at exit.

What the teacher says (top-1 of the whole-image pooled label): the cat photo is an Egyptian cat, the
coffee photo an espresso; on the rocket photo the launch towers win (drilling platform, crane) while
the rocket itself is a missile / space shuttle; on the astronaut photo the helmet wins (football
helmet) and the shuttle model behind her is a space shuttle. The two-object photo is the cat photo
stacked above the coffee photo (side by side, each would be squashed to half its width).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHIPPED = Path(__file__).resolve().parents[1] / "relabel_maps" / "data"

EGYPTIAN_CAT, ESPRESSO, MISSILE, SPACE_SHUTTLE, TENCH = "n02124075", "n07920052", "n03773504", "n04266014", "n01440764"

#: key -> photo; keys are ``wnid/file`` as in an ImageNet-style ImageFolder
CORRECT = {
    f"{EGYPTIAN_CAT}/chelsea.jpg": "chelsea",
    f"{ESPRESSO}/coffee.jpg": "coffee",
    f"{MISSILE}/rocket.jpg": "rocket",
    f"{SPACE_SHUTTLE}/astronaut.jpg": "astronaut",
    f"{EGYPTIAN_CAT}/cat_above_coffee.jpg": "pair",
}
WRONG = {
    f"{ESPRESSO}/chelsea.jpg": "chelsea",
    f"{EGYPTIAN_CAT}/coffee.jpg": "coffee",
    f"{ESPRESSO}/rocket.jpg": "rocket",
}
#: the teacher's best guess on the astronaut photo is close to its confidence threshold, so under a
#: wrong label it is flagged either as likely mislabelled or as label not visible
WRONG_UNSURE = {f"{TENCH}/astronaut.jpg": "astronaut"}
TWO_OBJECTS = f"{EGYPTIAN_CAT}/cat_above_coffee.jpg"


@dataclass(frozen=True)
class PhotoSet:
    images: Path
    maps: Path


def _photos() -> dict[str, object]:
    import skimage.data
    from PIL import Image

    chelsea = Image.open(SHIPPED / "chelsea.jpg").convert("RGB")
    coffee = Image.open(SHIPPED / "coffee.jpg").convert("RGB")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rocket = Image.fromarray(np.asarray(skimage.data.rocket())[..., :3])
        astronaut = Image.fromarray(np.asarray(skimage.data.astronaut())[..., :3])
    pair = Image.new("RGB", (chelsea.width, 2 * chelsea.height))
    pair.paste(chelsea, (0, 0))
    pair.paste(coffee.resize(chelsea.size), (0, chelsea.height))
    return {"chelsea": chelsea, "coffee": coffee, "rocket": rocket, "astronaut": astronaut, "pair": pair}


@functools.cache
def photo_set() -> PhotoSet:
    """Write the ImageFolder and annotate it with ``lite0-packaged`` (once per process)."""
    from relabel_maps.annotate import annotate, load_teacher

    root = Path(tempfile.mkdtemp(prefix="relabel-audit-photos-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    images = root / "images"
    photos = _photos()
    for key, name in {**CORRECT, **WRONG, **WRONG_UNSURE}.items():
        path = images / key
        path.parent.mkdir(parents=True, exist_ok=True)
        photos[name].save(path, quality=92)  # type: ignore[attr-defined]
    maps = root / "maps.rlm"
    annotate(images, maps, load_teacher("lite0-packaged", device="cpu"), workers=0, batch_size=4)
    return PhotoSet(images, maps)
