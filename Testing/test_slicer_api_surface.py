"""The Slicer API the module calls exists in the supported Slicer releases (issue 10).

Supported: 3D Slicer 5.10 and 5.12 (both Python 3.12). The tests run against slicer-core 5.12.4
(the MRML/VTK libraries of Slicer 5.12). What is checked, by parsing the module's source:

* every CamelCase method the module calls on an object (``node.GetNumberOfControlPoints()``)
  exists on a slicer-core MRML/segmentation/VTK class, or is a known non-Slicer name listed in
  :data:`NOT_SLICER` with what it is (a new unknown name fails the test, so it gets reviewed);
* every ``slicer.util.<function>`` used exists in slicer-core's ``slicer.util``;
* APIs that older Slicer lacks are only used behind a guard in the same function: the names in
  :data:`NEWER_ONLY` behind ``hasattr(obj, "<name>")``, ``slicer.packaging`` (Slicer 5.12+)
  behind ``try: ... except ImportError``.

:data:`NEWER_ONLY` was found by reading Slicer's source at the release tags (``git grep -w`` of each
called name, and ``Macro(<stem>`` for macro-generated accessors, at v5.8.1, v5.10.0 and v5.12.3).
"""

from __future__ import annotations

import ast
import re

import pytest

from conftest import ROOT

pytestmark = pytest.mark.mrml

MODULE = ROOT / "LiverKidneySeg"
FILES = [
    MODULE / "LiverKidneySeg.py",
    *sorted((MODULE / "LiverKidneySegLib").glob("*.py")),
    *sorted((MODULE / "LiverKidneySegGui").glob("*.py")),
]

#: CamelCase attributes that are not Slicer/VTK methods (standard library, other packages).
NOT_SLICER = {
    "DEVNULL": "subprocess.DEVNULL",
    "Empty": "queue.Empty",
    "Error": "psutil.Error",
    "NamedTemporaryFile": "tempfile.NamedTemporaryFile",
    "PIPE": "subprocess.PIPE",
    "Path": "pathlib.Path",
    "Popen": "subprocess.Popen",
    "Process": "psutil.Process",
    "SIGKILL": "signal.SIGKILL",
    "STDOUT": "subprocess.STDOUT",
    "DictReader": "csv.DictReader",
    "PackageNotFoundError": "importlib.metadata.PackageNotFoundError",
    "PyTorchUtilsLogic": "the PyTorch extension's logic (optional, imported in a try block)",
    "SIGTERM": "signal.SIGTERM",
    "TemporaryDirectory": "tempfile.TemporaryDirectory",
    "Thread": "threading.Thread",
    "TimeoutExpired": "subprocess.TimeoutExpired",
}

#: Methods missing in an older Slicer release -> the first release that has them.
NEWER_ONLY = {"SetTerminology": "5.10", "GetTerminology": "5.10", "HasTerminology": "5.10"}


def _trees():
    return {path: ast.parse(path.read_text(encoding="utf-8")) for path in FILES}


def _calledNames(tree) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        # Qt classes (qt.QTimer...) are left out: no Qt outside Slicer
        if isinstance(node, ast.Attribute) and re.fullmatch(r"[A-PR-Z][A-Za-z0-9]+", node.attr):
            names.add(node.attr)
    return names


def _referencedClasses(tree) -> set[str]:
    """``vtk.vtkX`` / ``slicer.vtkX`` names used in the source."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("vtk", "slicer")
        and node.attr.startswith("vtk")
    }


@pytest.fixture(scope="module")
def classes(headless_slicer):
    import slicer
    import vtk

    found = [
        getattr(slicer, n) for n in dir(slicer) if n.startswith(("vtkMRML", "vtkSlicer", "vtkSegment", "vtkOriented"))
    ]
    # VTK classes reached through return values (image.GetPointData().GetScalars() ...)
    found += [
        vtk.vtkPointData,
        vtk.vtkDataArray,
        vtk.vtkImageData,
        vtk.vtkPolyData,
        vtk.vtkMatrix4x4,
        vtk.vtkVariant,
        vtk.vtkTable,
    ]
    for tree in _trees().values():
        for name in _referencedClasses(tree):
            for namespace in (slicer, vtk):
                if hasattr(namespace, name):
                    found.append(getattr(namespace, name))
    return [c for c in found if isinstance(c, type)]


def test_every_called_method_exists_in_slicer_core(classes):
    unknown = {}
    for path, tree in _trees().items():
        for name in _calledNames(tree):
            if name in NOT_SLICER or any(hasattr(c, name) for c in classes):
                continue
            unknown.setdefault(name, path.name)
    assert not unknown, f"not in slicer-core 5.12 (nor listed in NOT_SLICER): {unknown}"
    assert len(classes) > 50  # the MRML classes were really found


def test_slicer_util_functions_exist(headless_slicer):
    import slicer.util

    used = set()
    for tree in _trees().values():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "util"
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "slicer"
            ):
                used.add(node.attr)
    assert {"tryWithErrorDisplay", "launchConsoleProcess"} <= used
    missing = sorted(name for name in used if not hasattr(slicer.util, name))
    assert not missing, f"slicer.util has no {missing}"


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _guardedNames(function) -> set[str]:
    """Names checked with ``hasattr(x, "Name")`` in a function."""
    return {
        node.args[1].value
        for node in ast.walk(function)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "hasattr"
        and len(node.args) == 2
        and isinstance(node.args[1], ast.Constant)
    }


def test_newer_apis_are_guarded():
    offenders, uses = [], 0
    for path, tree in _trees().items():
        for function in _functions(tree):
            calls = {
                node.func.attr
                for node in ast.walk(function)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in NEWER_ONLY
            }
            uses += len(calls)
            missing = calls - _guardedNames(function)
            if missing:
                offenders.append(f"{path.name}:{function.lineno} {function.name}: {sorted(missing)}")
    assert not offenders, "unguarded APIs of newer Slicer: " + "; ".join(offenders)
    assert uses, "the terminology helpers were not found"


def test_slicer_packaging_is_imported_only_in_a_try_block():
    found = 0
    for path, tree in _trees().items():
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers
            ):
                guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(m.startswith("slicer.packaging") for m in modules):
                    found += 1
                    assert id(node) in guarded, f"{path.name}:{node.lineno} imports slicer.packaging unguarded"
    assert found, "slicer.packaging (Slicer 5.12) is used for installs"
