"""The console entry point: without the ``cli`` extra it prints one line naming the fix."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest


@pytest.mark.parametrize("blocked", ["click", "rich"])
def test_missing_cli_extra_prints_one_line_and_exits_nonzero(blocked: str) -> None:
    script = f"import sys; sys.modules[{blocked!r}] = None; import relabel_maps_cli; relabel_maps_cli.run()"
    out = subprocess.run([sys.executable, "-c", script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert blocked in lines[0] and 'pip install "relabel-maps[cli]"' in lines[0]
    assert "Traceback" not in out.stderr


def test_entry_point_runs_the_group_when_the_extra_is_present() -> None:
    out = subprocess.run([sys.executable, "-m", "relabel_maps_cli", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "relabel-maps" in out.stdout and "annotate" in out.stdout


def test_console_script_targets_the_checking_entry_point() -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "relabel-maps"]
    assert script.value == "relabel_maps_cli:run"
