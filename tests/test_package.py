"""Package-level guarantees: the core stays light, versions agree, the public API is complete."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


import relabel_maps

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "click", "rich", "pyarrow", "huggingface_hub", "PIL")


def test_core_import_and_use_do_not_import_heavy_dependencies(tmp_path: Path) -> None:
    """Writing, reading and pooling with the core library loads none of the optional dependencies."""
    script = f"""
import sys
import numpy as np
import relabel_maps, relabel_maps.pooling
rng = np.random.default_rng(0)
idx = np.stack([rng.permutation(50)[:3] for _ in range(16)], axis=1).reshape(3, 4, 4)
with relabel_maps.Writer({str(tmp_path / 'm.rlm')!r}, num_classes=50, k=3) as w:
    w.add("a", idx, rng.normal(size=(3, 4, 4)))
with relabel_maps.open({str(tmp_path / 'm.rlm')!r}) as maps:
    label = maps["a"].pool((0.1, 0.2, 0.9, 0.8), flip=True)
    assert abs(float(label.sum()) - 1.0) < 1e-5
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_versions_agree() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert relabel_maps.__version__ == version
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text()
    assert relabel_maps.FORMAT_VERSION == (1, 0)
    assert "**Version 1.0**" in (ROOT / "spec" / "FORMAT.md").read_text()


def test_public_api_is_exported() -> None:
    for name in relabel_maps.__all__:
        assert hasattr(relabel_maps, name), name
    for name in ("FormatError", "UnsupportedVersionError", "CorruptRecordError", "MissingKeyError", "InvalidBoxError"):
        assert issubclass(getattr(relabel_maps, name), relabel_maps.RelabelMapsError)


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and re.search(r"^make test$", ci, re.M)
