"""Package-level guarantees: the core stays light, versions agree, the public API is complete."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
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
    """One package version (relabel_maps/_version.py, read by packaging); the format version in the spec."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.M)
    assert 'version = { attr = "relabel_maps._version.__version__" }' in pyproject
    assert not re.search(r'^version = "', pyproject, re.M)
    version = relabel_maps.__version__
    assert importlib.metadata.version("relabel-maps") == version
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{version}]" in changelog or "## [Unreleased]" in changelog
    major, minor = relabel_maps.FORMAT_VERSION
    assert f"**Version {major}.{minor}**" in (ROOT / "spec" / "FORMAT.md").read_text()


def test_every_subpackage_is_in_the_wheel(tmp_path: Path) -> None:
    """Packages are discovered, so a new subpackage cannot silently miss the wheel."""
    src = tmp_path / "src"
    for name in ("relabel_maps", "cli"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("relabel_maps-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        packaged = {n.rpartition("/")[0] for n in zf.namelist() if n.endswith("/__init__.py")}
    on_disk = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "relabel_maps").rglob("__init__.py")}
    assert on_disk | {"relabel_maps_cli"} == packaged
    with zipfile.ZipFile(wheel) as zf:
        assert "relabel_maps/py.typed" in zf.namelist() and "relabel_maps/data/chelsea.jpg" in zf.namelist()


def test_public_api_is_exported() -> None:
    for name in relabel_maps.__all__:
        assert hasattr(relabel_maps, name), name
    for name in ("FormatError", "UnsupportedVersionError", "CorruptRecordError", "MissingKeyError", "InvalidBoxError"):
        assert issubclass(getattr(relabel_maps, name), relabel_maps.RelabelMapsError)


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and re.search(r"^make test$", ci, re.M)
