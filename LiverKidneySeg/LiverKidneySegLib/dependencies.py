"""Python dependencies inside 3D Slicer: checked before first use, installed once after asking.

Nothing here runs at import or module load. :func:`ensureDependencies` is called by the module
before Apply and before the first refinement click. The plan (:func:`planInstall`) is pure:

* ``torch`` / ``torchvision`` come from the PyTorch extension (``PyTorchUtils.installTorch``),
  never from our own pip call; without the extension the user is told to install it.
* A package that is already installed is **never upgraded or replaced** (Slicer's bundled numpy,
  VTK, pydicom, SimpleITK...): it is left out of the pip call, and every installed distribution is
  pinned in a constraints file (``name==version``), so that a new package's dependencies cannot
  move them either (e.g. highdicom pulling pydicom>=3 over Slicer's pydicom: pip then picks an
  older highdicom or fails, and the user gets the message instead of a broken Slicer). An
  installed package older than our lower bound is reported, not upgraded.
* One confirmation for everything that is missing; pip runs on the main thread (never from a
  worker) with its output lines passed to a progress callback. Slicer 5.12+
  (``slicer.packaging.pip_ensure``: own dialog and progress) or Slicer 5.10
  (``slicer.util.launchConsoleProcess``, lines streamed while the GUI processes events).
* No network: a :class:`DependencyError` that names the packages and how to install them.
"""

from __future__ import annotations

import logging
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

__all__ = [
    "REQUIREMENTS_FILE",
    "TORCH_PACKAGES",
    "DependencyError",
    "InstallPlan",
    "constraintsText",
    "ensureDependencies",
    "installedDistributions",
    "loadRequirements",
    "manualInstallHelp",
    "missingRequirements",
    "planInstall",
    "requirementSatisfied",
]

log = logging.getLogger(__name__)

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
#: Installed by the PyTorch extension (PyTorchUtils), never by our pip call.
TORCH_PACKAGES = frozenset({"torch", "torchvision"})
_SPEC = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(>=\s*([0-9][0-9A-Za-z.+-]*))?\s*$")


class DependencyError(RuntimeError):
    """A package cannot be installed (declined, offline, conflict); the message says what to do."""


def normalizeName(name: str) -> str:
    """PEP 503 normalised distribution name (``SimpleITK`` -> ``simpleitk``, ``a_b`` -> ``a-b``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def loadRequirements(path: str | Path = REQUIREMENTS_FILE) -> list[str]:
    """Requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def _parse(requirement: str) -> tuple[str, str | None]:
    match = _SPEC.match(requirement)
    if not match:
        raise ValueError(f"unsupported requirement {requirement!r} (use 'name' or 'name>=version')")
    return match.group(1), match.group(3)


def _versionTuple(version: str) -> tuple:
    parts = []
    for piece in re.split(r"[.+-]", version):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def installedDistributions() -> dict[str, str]:
    """``{normalised name: version}`` of every distribution installed in this Python (read afresh)."""
    import importlib

    importlib.invalidate_caches()  # packages installed a moment ago (e.g. torch by the PyTorch extension)
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalizeName(name), dist.version)
    return found


def requirementSatisfied(requirement: str, installed: Mapping[str, str] | None = None) -> bool:
    """Whether an installed distribution satisfies ``name>=version`` (or just ``name``).

    Only lower bounds are used in this project; other specifiers raise ValueError.
    """
    name, minimum = _parse(requirement)
    if installed is None:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            return False
    else:
        version = installed.get(normalizeName(name))
        if version is None:
            return False
    return minimum is None or _versionTuple(version) >= _versionTuple(minimum)


def missingRequirements(requirements: list[str] | None = None) -> list[str]:
    """The requirements (default: ``Resources/requirements.txt``) not satisfied now."""
    reqs = loadRequirements() if requirements is None else requirements
    return [r for r in reqs if not requirementSatisfied(r)]


@dataclass
class InstallPlan:
    """What :func:`ensureDependencies` will do.

    Attributes:
        pip: requirements to install with pip (not installed at all now).
        torch: torch/torchvision requirements (from the PyTorch extension).
        tooOld: ``(requirement, installed version)`` of installed packages older than needed:
            never upgraded here (they may be Slicer's own); the user is told.
    """

    pip: list[str] = field(default_factory=list)
    torch: list[str] = field(default_factory=list)
    tooOld: list[tuple[str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.pip or self.torch or self.tooOld)


def planInstall(requirements: list[str], installed: Mapping[str, str]) -> InstallPlan:
    """Split requirements into what pip installs, what the PyTorch extension installs, and
    installed packages that are too old (pure: ``installed`` is ``{normalised name: version}``)."""
    plan = InstallPlan()
    for requirement in requirements:
        name, _minimum = _parse(requirement)
        key = normalizeName(name)
        if requirementSatisfied(requirement, installed):
            continue
        if key in TORCH_PACKAGES:
            plan.torch.append(requirement)
        elif key in installed:
            plan.tooOld.append((requirement, installed[key]))
        else:
            plan.pip.append(requirement)
    return plan


_PIN = re.compile(r"^[a-z0-9][a-z0-9._-]*==[0-9][0-9A-Za-z.+!_-]*$")


def constraintsText(installed: Mapping[str, str]) -> str:
    """A pip constraints file pinning every installed distribution to its installed version
    (lines pip could not parse, e.g. odd development versions, are left out rather than making
    the whole install fail)."""
    pins = (f"{name}=={version}" for name, version in sorted(installed.items()) if name not in ("pip", "setuptools"))
    lines = [pin for pin in pins if _PIN.match(pin)]
    return "# LiverKidneySeg: keep every installed package (Slicer's own included) as it is\n" + "\n".join(lines) + "\n"


def manualInstallHelp(packages: list[str]) -> str:
    """How to install ``packages`` by hand (Slicer's Python console, or offline wheels)."""
    quoted = " ".join(f"'{p}'" for p in packages)
    return (
        "Install them from Slicer's Python console (View > Python Console):\n"
        f"    slicer.util.pip_install({' '.join(packages)!r})\n"
        "or, without internet, download the wheels on another computer "
        f"(pip download {quoted} --python-version 3.12 --only-binary=:all: -d wheels), copy the folder "
        "and run:\n"
        f"    PythonSlicer -m pip install --no-index --find-links wheels {quoted}"
    )


def indexReachable(host: str = "pypi.org", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether the package index answers (a TCP connection within ``timeout`` seconds)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _installTorchFromExtension(requirements: list[str]) -> None:
    """torch/torchvision through the PyTorch extension (asks the user itself)."""
    try:
        import PyTorchUtils  # the "PyTorch" Slicer extension
    except ImportError:
        raise DependencyError(
            "LiverKidneySeg needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager "
            "(it is installed with LiverKidneySeg from the Extensions Index), restart Slicer and try again."
        ) from None
    bounds = {normalizeName(_parse(r)[0]): (_parse(r)[1] and f">={_parse(r)[1]}") or None for r in requirements}
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    log.info("installing PyTorch through the PyTorch extension: %s", requirements)
    torch = torchLogic.installTorch(
        askConfirmation=True,
        torchVersionRequirement=bounds.get("torch"),
        torchvisionVersionRequirement=bounds.get("torchvision"),
    )
    if torch is None:
        raise DependencyError("PyTorch is required; its installation was declined or failed")


def _pythonSlicer() -> str:
    import shutil
    import sys

    return shutil.which("PythonSlicer") or sys.executable


def runPip(args: list[str], onLine: Callable[[str], None] | None = None) -> None:
    """``python -m pip <args>`` on the main thread, each output line passed to ``onLine`` while the
    GUI keeps processing events (Slicer 5.10 path; 5.12 uses ``slicer.packaging``)."""
    import subprocess

    try:
        import slicer

        launch = slicer.util.launchConsoleProcess
        app = getattr(slicer, "app", None)
    except (ImportError, AttributeError):
        launch, app = None, None
    command = [_pythonSlicer(), "-m", "pip", *args]
    if launch is not None:
        proc = launch(command, useStartupEnvironment=False)
    else:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in iter(proc.stdout.readline, ""):
        line = line.rstrip()
        tail = [*tail[-20:], line]
        log.info("pip: %s", line)
        if onLine is not None:
            onLine(line)
        if app is not None:
            app.processEvents()
    if proc.wait() != 0:
        raise DependencyError("pip failed:\n" + "\n".join(tail))


def ensureDependencies(
    requester: str = "LiverKidneySeg",
    requirements: list[str] | None = None,
    confirm: Callable[[str], bool] | None = None,
    progress: Callable[[str], None] | None = None,
    online: Callable[[], bool] = indexReachable,
) -> list[str]:
    """Make sure the requirements are installed, asking once before anything is installed.

    Args:
        requester: name shown in dialogs.
        requirements: default ``Resources/requirements.txt``.
        confirm: ``confirm(message) -> bool`` asking the user (the widget passes a dialog; this
            module never shows one). Not used on Slicer 5.12+, whose ``pip_ensure`` asks itself.
        progress: ``progress(line)`` with pip's output lines (Slicer 5.10 path).
        online: whether the package index can be reached (tests pass a stand-in).

    Returns:
        The requirements that were missing before the call (empty when nothing was needed).

    Raises:
        DependencyError: declined, no network, an installed package too old, pip failed; the
            message says what to install and how. RuntimeError: called from a worker thread.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("ensureDependencies() must run on the main thread (pip is never run from a worker)")
    reqs = loadRequirements() if requirements is None else requirements
    installed = installedDistributions()
    plan = planInstall(reqs, installed)
    if plan.empty:
        return []
    missing = plan.pip + plan.torch + [r for r, _v in plan.tooOld]
    if plan.tooOld:
        old = ", ".join(f"{r} (installed: {v})" for r, v in plan.tooOld)
        raise DependencyError(
            f"{requester} needs {old}. These packages are already installed (possibly Slicer's own) and are "
            "not upgraded automatically, so that Slicer keeps working: use a newer Slicer (5.10 or later)."
        )
    if plan.pip and not online():
        raise DependencyError(
            f"{requester} needs these Python packages, but the package index (pypi.org) cannot be reached:\n"
            + "\n".join(plan.pip)
            + "\n\n"
            + manualInstallHelp(plan.pip)
        )
    if plan.torch:
        _installTorchFromExtension(plan.torch)
    if not plan.pip:
        return missing
    with tempfile.NamedTemporaryFile("w", suffix="-constraints.txt", delete=False) as handle:
        handle.write(constraintsText(installedDistributions()))
        constraints = handle.name
    try:
        _pipInstall(requester, plan.pip, constraints, confirm, progress)
    finally:
        Path(constraints).unlink(missing_ok=True)
    still = [r for r in plan.pip if not requirementSatisfied(r)]
    if still:
        raise DependencyError(f"{requester}: still missing after the install: {', '.join(still)}")
    return missing


def _pipInstall(requester, packages, constraints, confirm, progress) -> None:
    try:
        import slicer.packaging as packaging  # Slicer 5.12+
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        try:
            packaging.pip_ensure(packages, constraints=constraints, requester=requester)  # asks, shows progress
        except RuntimeError as exc:
            raise DependencyError(f"{requester} cannot run without: {', '.join(packages)} ({exc})") from exc
        except Exception as exc:  # subprocess.CalledProcessError: conflict, no wheel...
            raise DependencyError(
                f"Installing {', '.join(packages)} failed ({exc}).\n\n" + manualInstallHelp(packages)
            ) from exc
        return
    if confirm is None:
        raise DependencyError(f"{requester} needs {', '.join(packages)}; pass confirm= to ask the user first")
    question = (
        f"{requester} needs these Python packages:\n\n"
        + "\n".join(packages)
        + "\n\nInstall them now? (a few minutes; packages Slicer already has are not changed)"
    )
    if not confirm(question):
        raise DependencyError(f"{requester} cannot run without: {', '.join(packages)}")
    try:
        runPip(["install", "-c", constraints, *packages], progress)
    except DependencyError as exc:
        raise DependencyError(f"{exc}\n\n" + manualInstallHelp(packages)) from exc
