"""Static Python-version check (issue 10): the Slicer module, its libraries and the core must load
in the oldest supported Python. Slicer 5.10 and 5.12 ship Python 3.12; the pip-installable core
declares ``requires-python >= 3.10``, so everything is checked against 3.10 with ``vermin``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("vermin", reason="vermin (test extra) is needed for the Python-compatibility check")

OLDEST = "3.10"
PATHS = [
    ROOT / "LiverKidneySeg" / "LiverKidneySeg.py",
    ROOT / "LiverKidneySeg" / "LiverKidneySegLib",
    ROOT / "LiverKidneySeg" / "LiverKidneySegGui",
    ROOT / "LiverKidneySeg" / "lkseg",
]


def _vermin(*paths) -> subprocess.CompletedProcess:
    # vermin has no __main__: its console entry point is vermin.main()
    command = [
        sys.executable,
        "-c",
        "import sys, vermin; sys.exit(vermin.main())",
        "--no-tips",
        f"-t={OLDEST}-",
        "--violations",
        "--eval-annotations",
    ]
    return subprocess.run([*command, *map(str, paths)], capture_output=True, text=True, timeout=300)


def test_module_and_core_load_in_the_oldest_supported_python():
    result = _vermin(*PATHS)
    assert result.returncode == 0, f"needs a newer Python than {OLDEST}:\n{result.stdout}\n{result.stderr}"


def test_the_check_catches_newer_syntax(tmp_path):
    """The check can fail: 3.11 syntax and modules are reported."""
    newer = tmp_path / "newer.py"
    newer.write_text("import tomllib\n\ntry:\n    pass\nexcept* ValueError:\n    pass\n")
    result = _vermin(newer)
    assert result.returncode != 0 and "tomllib" in result.stdout
