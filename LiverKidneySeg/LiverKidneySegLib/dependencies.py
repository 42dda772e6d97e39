"""Python dependencies inside 3D Slicer: checked on use, installed only after asking.

Nothing here runs at import or module load. :func:`ensureDependencies` is called by the module
when the user presses Apply: torch comes from the PyTorch extension (``PyTorchUtils``) when it is
installed, the rest through ``slicer.packaging.pip_ensure`` (Slicer >= 5.10) or, on older Slicer,
``slicer.util.pip_install`` after a confirmation dialog. pip never runs from a worker thread.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

__all__ = [
    "REQUIREMENTS_FILE",
    "ensureDependencies",
    "loadRequirements",
    "missingRequirements",
    "requirementSatisfied",
]

log = logging.getLogger(__name__)

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
_SPEC = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(>=\s*([0-9][0-9A-Za-z.+-]*))?\s*$")


def loadRequirements(path: str | Path = REQUIREMENTS_FILE) -> list[str]:
    """Requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def _versionTuple(version: str) -> tuple:
    parts = []
    for piece in re.split(r"[.+-]", version):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def requirementSatisfied(requirement: str) -> bool:
    """Whether an installed distribution satisfies ``name>=version`` (or just ``name``).

    Only lower bounds are used in this project; other specifiers raise ValueError.
    """
    match = _SPEC.match(requirement)
    if not match:
        raise ValueError(f"unsupported requirement {requirement!r} (use 'name' or 'name>=version')")
    name, minimum = match.group(1), match.group(3)
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return minimum is None or _versionTuple(installed) >= _versionTuple(minimum)


def missingRequirements(requirements: list[str] | None = None) -> list[str]:
    """The requirements (default: ``Resources/requirements.txt``) not satisfied now."""
    reqs = loadRequirements() if requirements is None else requirements
    return [r for r in reqs if not requirementSatisfied(r)]


def _installTorchFromExtension() -> bool:
    """Install torch through the PyTorch extension if it is there; True when torch is available."""
    try:
        import PyTorchUtils  # the "PyTorch" Slicer extension
    except ImportError:
        return False
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        log.info("installing torch through the PyTorch extension")
        if torchLogic.installTorch(askConfirmation=True) is None:
            raise RuntimeError("PyTorch is required; its installation was declined or failed")
    return True


def ensureDependencies(
    requester: str = "LiverKidneySeg",
    requirements: list[str] | None = None,
    confirm: Callable[[str], bool] | None = None,
) -> list[str]:
    """Make sure the requirements are installed, asking the user before anything is installed.

    Args:
        requester: name shown in Slicer's dialogs.
        requirements: default ``Resources/requirements.txt``.
        confirm: ``confirm(message) -> bool`` asking the user; needed on Slicer versions without
            ``slicer.packaging`` (the widget passes a dialog; this module never shows one).

    Returns:
        The requirements that were missing before the call (empty when nothing was needed).

    Raises:
        RuntimeError: called from a worker thread, the user declined, or nobody can be asked.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("ensureDependencies() must run on the main thread (pip is never run from a worker)")
    reqs = loadRequirements() if requirements is None else requirements
    missing = [r for r in reqs if not requirementSatisfied(r)]
    if not missing:
        return []
    import slicer

    if any(r.startswith("torch") and not r.startswith("torchvision") for r in missing) and _installTorchFromExtension():
        missing = [r for r in missing if not requirementSatisfied(r)]
    if not missing:
        return []
    try:
        import slicer.packaging as packaging
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(missing, requester=requester)  # asks the user itself
    else:
        if confirm is None:
            raise RuntimeError(
                f"{requester} needs {', '.join(missing)}; pass confirm= to ask the user before installing"
            )
        if not confirm(f"{requester} needs these Python packages:\n\n" + "\n".join(missing) + "\n\nInstall them now?"):
            raise RuntimeError(f"{requester} cannot run without: {', '.join(missing)}")
        slicer.util.pip_install(missing)
    return missing
