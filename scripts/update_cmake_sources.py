"""Regenerate the list of Python files in LiverKidneySeg/CMakeLists.txt.

Slicer's ``slicerMacroBuildScriptedModule`` installs only the files it is given, so every .py
under ``LiverKidneySeg/`` must be listed. Run ``python scripts/update_cmake_sources.py`` after
adding a module; ``Testing/test_layout.py`` fails when the list is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "LiverKidneySeg"
CMAKE = MODULE / "CMakeLists.txt"
BEGIN, END = "set(MODULE_PYTHON_SCRIPTS", ")"


def python_sources() -> list[str]:
    files = []
    for path in sorted(MODULE.rglob("*.py")):
        rel = path.relative_to(MODULE).as_posix()
        if "__pycache__" in rel or rel.startswith("Testing/"):
            continue
        files.append(rel)
    return files


def listed_sources(text: str) -> list[str]:
    match = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", text, re.S)
    if not match:
        return []
    return [ln.strip() for ln in match.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]


def render(files: list[str]) -> str:
    body = "\n".join(f"  {f}" for f in files)
    return f"{BEGIN}\n{body}\n  )"


def main() -> int:
    text = CMAKE.read_text()
    new = re.sub(r"set\(MODULE_PYTHON_SCRIPTS.*?\)", lambda _m: render(python_sources()), text, count=1, flags=re.S)
    if new != text:
        CMAKE.write_text(new)
        print(f"updated {CMAKE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
