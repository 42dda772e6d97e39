"""The automatic segmentation as a job: export the volume, run ``lkseg segment`` out of process,
import the result into a segmentation node.

:class:`SegmentationJob` is driven by :meth:`~SegmentationJob.poll` from the thread that owns
the MRML scene (the GUI thread, from a timer; or a loop in :meth:`~SegmentationJob.wait`), so the
import into MRML never happens on another thread.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from LiverKidneySegLib.history import SegmentsEdit
from LiverKidneySegLib.process import CoreJob, CoreProcess
from LiverKidneySegLib.segmentations import SegmentExistsError, findSegmentId, labelMapToSegmentation
from LiverKidneySegLib.volumes import volumeFromNode
from lkseg.errors import LKSegError
from lkseg.labels import get_structure

__all__ = [
    "MODULE_MODELS_DIR",
    "SegmentOptions",
    "SegmentationJob",
    "importResult",
    "modelFolders",
    "resolveModel",
    "temporaryRoot",
]

#: Model packages shipped inside the module (``LiverKidneySeg/Resources/Models``), searched after
#: the core's own folders (``models/`` of the source tree, ``~/.lkseg/models``, ``$LKSEG_MODELS_DIR``).
MODULE_MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"


def modelFolders() -> list[Path]:
    """Extra model folders the module adds to the core's registry (those that exist)."""
    return [MODULE_MODELS_DIR] if MODULE_MODELS_DIR.is_dir() else []


def resolveModel(modelId: str | None):
    """The :class:`~lkseg.models.ModelManifest` of ``modelId`` (id, id@version or folder; None =
    the default model), searching the module's folders too.

    Raises:
        ModelError: no such model (the message lists the installed ones).
    """
    from lkseg.models import find_model

    return find_model(modelId, extra_dirs=modelFolders())


log = logging.getLogger(__name__)


@dataclass
class SegmentOptions:
    """Choices of an automatic run.

    Attributes:
        modelId: model package id (``id`` or ``id@version``) or folder; None = the default model.
        device: "auto", "cpu" or "cuda".
        structures: core structure names to keep (None = all the model segments).
        replaceExisting: replace segments of the same names in the target segmentation.
        extraArgs: more ``lkseg segment`` arguments (advanced).
    """

    modelId: str | None = None
    device: str = "auto"
    structures: list[str] | None = None
    replaceExisting: bool = False
    extraArgs: list[str] = field(default_factory=list)

    def cliArgs(self, inputPath: Path, outputPath: Path) -> list[str]:
        args = ["segment", str(inputPath), "-o", str(outputPath), "--progress-lines", "--device", self.device]
        if self.modelId:
            args += ["--model", str(self.modelId)]
        if self.structures:
            args += ["--structures", *self.structures]
        return args + list(self.extraArgs)


def temporaryRoot() -> Path:
    """Slicer's temporary folder inside Slicer, else the system one."""
    try:
        import slicer

        if getattr(slicer, "app", None) is not None:
            return Path(slicer.app.temporaryPath)
    except ImportError:
        pass
    return Path(tempfile.gettempdir())


def importResult(labels, table, segmentationNode, volumeNode, replaceExisting: bool, history=None) -> list[str]:
    """Write an automatic result (label map + ``{value: structure}``) into the segmentation; with a
    ``history``, the segments created or replaced become one undo step. Returns the segment IDs."""
    grid = labels.grid
    replaced = [i for i in (findSegmentId(segmentationNode, name) for name in table.values()) if i]
    before = SegmentsEdit.snapshot(segmentationNode, replaced, grid) if history is not None else {}
    segmentIds = labelMapToSegmentation(
        labels, table, segmentationNode, referenceVolumeNode=volumeNode, replaceExisting=replaceExisting
    )
    if history is not None:
        ids = list(dict.fromkeys(replaced + list(segmentIds)))
        after = SegmentsEdit.snapshot(segmentationNode, ids, grid)
        before = {i: before.get(i) for i in ids}
        history.recordSegments(SegmentsEdit(segmentationNode.GetID(), grid, before, after, "automatic segmentation"))
    return segmentIds


class SegmentationJob(CoreJob):
    """One automatic segmentation of ``volumeNode`` into ``segmentationNode``.

    Args:
        volumeNode: the CT (scalar volume node).
        segmentationNode: the target (segments of other names are kept).
        options: :class:`SegmentOptions`.
        progress: ``progress(fraction, message)`` (called from :meth:`poll`).
        logCallback: receives the child's log lines (called from :meth:`poll`).

    States: ``"new"`` -> ``"running"`` -> ``"done"`` | ``"failed"`` | ``"cancelled"``.
    """

    title = "lkseg segment"
    cancelMessage = "automatic segmentation cancelled by the user"

    def __init__(
        self,
        volumeNode,
        segmentationNode,
        options: SegmentOptions | None = None,
        progress: Callable[[float, str], None] | None = None,
        logCallback: Callable[[str], None] | None = None,
    ):
        super().__init__(progress, logCallback)
        self.volumeNode = volumeNode
        self.segmentationNode = segmentationNode
        self.options = options or SegmentOptions()
        self.segmentIds: list[str] = []
        self._workDir: Path | None = None
        self._grid = None
        #: an :class:`~LiverKidneySegLib.history.EditHistory`: the imported result becomes one
        #: undo step (segments created or replaced), set by the Logic
        self.history = None

    # -- checks before the long run ---------------------------------------------------------
    def _checkConflicts(self, manifest) -> None:
        if self.options.replaceExisting:
            return
        structures = self.options.structures or list(manifest.structures)
        conflicts = [get_structure(s).display for s in structures if findSegmentId(self.segmentationNode, s)]
        if conflicts:
            raise SegmentExistsError(conflicts, self.segmentationNode.GetName())

    def start(self) -> SegmentationJob:
        """Export the input and start ``lkseg segment``; returns self.

        Raises:
            ModelError: the model is not installed.
            SegmentExistsError: requested structures already exist and ``replaceExisting`` is off.
            InputError: the volume node cannot be used.
        """
        from lkseg.io import write_image

        if self.state != "new":
            raise RuntimeError("a SegmentationJob can be started once")
        manifest = resolveModel(self.options.modelId)  # a missing model fails here, at once
        self._checkConflicts(manifest)
        volume = volumeFromNode(self.volumeNode)
        self._grid = volume.grid
        self._workDir = Path(tempfile.mkdtemp(prefix="lkseg-", dir=temporaryRoot()))
        inputPath = self._workDir / "input.nrrd"
        write_image(volume, inputPath)
        self._report(0.02, "input exported")
        # the child gets the resolved package folder: the same model, wherever it was found
        options = replace(self.options, modelId=str(manifest.folder) if manifest.folder else self.options.modelId)
        self._process = CoreProcess(
            options.cliArgs(inputPath, self._workDir / "result.seg.nrrd"),
            progress=lambda f, m: self._report(0.05 + 0.9 * f, m),
            logCallback=self._log,
        ).start()
        self.state = "running"
        return self

    def _finish(self, code: int) -> None:
        if code != 0:
            raise LKSegError(f"lkseg segment failed (exit code {code}): {self._process.errorText()}")
        self._import()

    def _import(self) -> None:
        from lkseg.io.segnrrd import read_seg_nrrd

        result = self._workDir / "result.seg.nrrd"
        if not result.exists():
            raise LKSegError(f"lkseg segment reported success but wrote no result ({self._process.errorText()})")
        segmentation = read_seg_nrrd(result, reference=self._grid)
        labels, table = segmentation.to_label_volume(), segmentation.label_table()
        if self.options.structures:
            keep = set(self.options.structures)
            table = {v: n for v, n in table.items() if n in keep}
        self._report(0.96, "importing segments")
        self.segmentIds = importResult(
            labels, table, self.segmentationNode, self.volumeNode, self.options.replaceExisting, self.history
        )

    def _result(self) -> list[str]:
        """:meth:`wait` returns the written segment IDs."""
        return self.segmentIds

    def _cleanup(self) -> None:
        if self._workDir is not None:
            shutil.rmtree(self._workDir, ignore_errors=True)
            self._workDir = None
