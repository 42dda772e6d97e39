"""Set up ``slicer-core`` (MRML without the Slicer application) the way 3D Slicer itself would.

Inside the real 3D Slicer application nothing here is needed or used: the application creates the
scene, the application logic and every module logic. Outside it (tests, scripts, the CLI) the
``slicer-core`` wheel gives the MRML classes and module logics but no application; this module
creates a ``vtkSlicerApplicationLogic``, a scene, and registers the module logics the adapters need
**before** any segmentation node exists (that is what registers the label map <-> closed surface
converters). It also sets ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()`` so that the
pure-VTK helpers of ``slicer.util`` work.

:func:`setupHeadlessSlicer` refuses to run inside the Slicer application.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

__all__ = ["HeadlessSlicer", "isSlicerApplication", "setupHeadlessSlicer"]

log = logging.getLogger(__name__)

#: Module logics registered headless: (module name used by ``SetModuleLogic``,
#: attribute under ``slicer.modules``, class name in ``slicer``). The colour and terminology
#: logics are left out: without Slicer's share folder they only log errors.
_MODULE_LOGICS = (
    ("SubjectHierarchy", "subjecthierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("Segmentations", "segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("Volumes", "volumes", "vtkSlicerVolumesLogic"),
    ("Markups", "markups", "vtkSlicerMarkupsLogic"),
    ("Models", "models", "vtkSlicerModelsLogic"),
    ("Tables", "tables", "vtkSlicerTablesLogic"),
)

_INSTANCE: HeadlessSlicer | None = None


def isSlicerApplication() -> bool:
    """True inside the 3D Slicer application (``slicer.app`` exists), False with bare slicer-core."""
    try:
        import slicer
    except ImportError:
        return False
    return getattr(slicer, "app", None) is not None


class _ModuleEntry:
    """Mimics ``slicer.modules.<name>``: only ``logic()`` is provided."""

    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


@dataclass
class HeadlessSlicer:
    """The objects created by :func:`setupHeadlessSlicer`.

    Attributes:
        applicationLogic: the ``vtkSlicerApplicationLogic``.
        scene: the ``vtkMRMLScene`` (also ``slicer.mrmlScene``).
        logics: module name (``"Segmentations"``...) -> module logic.
    """

    applicationLogic: object
    scene: object
    logics: dict = field(default_factory=dict)

    def clear(self) -> None:
        """Remove every node except singletons (subject hierarchy...), keeping the logics."""
        self.scene.Clear(0)


def setupHeadlessSlicer() -> HeadlessSlicer:
    """Create (once per process) the application logic, the scene and the module logics.

    Returns:
        The :class:`HeadlessSlicer` (the same object on later calls).

    Raises:
        RuntimeError: inside the 3D Slicer application, which provides all of this itself.
        ImportError: when ``slicer-core`` is not installed.
    """
    global _INSTANCE
    if isSlicerApplication():
        raise RuntimeError(
            "setupHeadlessSlicer() is for slicer-core only; the 3D Slicer application provides its own scene"
        )
    if _INSTANCE is not None:
        return _INSTANCE
    import slicer

    appLogic = slicer.vtkSlicerApplicationLogic()
    scene = slicer.vtkMRMLScene()
    appLogic.SetMRMLScene(scene)
    logics = {}
    modules = getattr(slicer, "modules", None) or SimpleNamespace()
    for name, attribute, className in _MODULE_LOGICS:
        logic = getattr(slicer, className)()
        logic.SetMRMLApplicationLogic(appLogic)
        logic.SetMRMLScene(scene)  # before any node exists: registers the segmentation converters
        appLogic.SetModuleLogic(name, logic)
        logics[name] = logic
        setattr(modules, attribute, _ModuleEntry(logic))
    slicer.mrmlScene = scene
    slicer.modules = modules
    _INSTANCE = HeadlessSlicer(appLogic, scene, logics)
    log.debug("headless slicer-core scene ready with logics %s", sorted(logics))
    return _INSTANCE
