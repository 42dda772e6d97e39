"""Checks shared by the module's Test class (inside 3D Slicer) and the pytest suite (slicer-core).

Each check builds a phantom CT node, runs the Logic, and raises ``AssertionError`` with a clear
message when an outcome is wrong. No Qt: the Test class adds its ``delayDisplay`` messages.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from LiverKidneySegLib.markups import pointsToMarkups
from LiverKidneySegLib.segmentations import findSegmentId, segmentMask
from LiverKidneySegLib.volumes import volumeToNode

__all__ = [
    "StandInPredictor",
    "checkRadiologistFlow",
    "checkRefineUndo",
    "checkSegmentPhantom",
    "phantomVolumeNode",
]

log = logging.getLogger(__name__)

#: A small phantom (fast on CPU): 96 x 96 x 48 voxels of 3 x 3 x 4 mm.
PHANTOM_SIZE, PHANTOM_SPACING = (96, 96, 48), (3.0, 3.0, 4.0)


def phantomVolumeNode(scene, seed: int = 7, size=PHANTOM_SIZE, spacing=PHANTOM_SPACING, direction=None):
    """``(phantom, volumeNode)``: a seeded synthetic CT (``lkseg.phantom``) as a scalar volume node."""
    from lkseg.phantom import PhantomConfig, generate_phantom

    flat = None if direction is None else tuple(float(v) for v in np.asarray(direction).reshape(-1))
    phantom = generate_phantom(PhantomConfig(seed=seed, size_ijk=tuple(size), spacing=tuple(spacing), direction=flat))
    return phantom, volumeToNode(phantom.image, scene=scene, name=f"Phantom CT {seed}")


def checkSegmentPhantom(
    logic,
    volumeNode,
    phantom,
    structures=("liver", "kidney_right", "kidney_left"),
    minDice: float | None = 0.5,
    **segmentArgs,
) -> dict:
    """Segment a phantom automatically; check segment names (and Dice when ``minDice`` is set).

    Returns:
        ``{"segmentationNode": node, "dice": {structure: Dice}}``.
    """
    from lkseg.labels import PRODUCT_LABELS, get_structure
    from lkseg.metrics import dice

    segmentationNode = logic.segment(volumeNode, structures=list(structures), **segmentArgs)
    product = phantom.product_labels()
    scores = {}
    segmentation = segmentationNode.GetSegmentation()
    for name in structures:
        segmentId = findSegmentId(segmentationNode, name)
        assert segmentId is not None, f"no segment for {name} in {segmentationNode.GetName()}"
        assert segmentation.GetSegment(segmentId).GetName() == get_structure(name).display
        mask = segmentMask(segmentationNode, segmentId, product.grid)
        scores[name] = float(dice(mask, np.asarray(product.array) == PRODUCT_LABELS.value_of(name)))
        if minDice is not None:
            assert scores[name] >= minDice, f"{name}: Dice {scores[name]:.3f} < {minDice}"
    log.info("phantom Dice: %s", scores)
    return {"segmentationNode": segmentationNode, "dice": scores}


def checkRefineUndo(logic, volumeNode, phantom, structure: str = "liver", minDice2d: float | None = 0.7) -> dict:
    """Box a structure on its largest axial slice, add a negative click inside it, undo and redo.

    Checks: each prompt changes only that slice; the box result overlaps the truth (2D Dice >=
    ``minDice2d`` when set); undo restores each previous state exactly; redo restores the edits.

    Returns:
        ``{"segmentationNode", "slice", "dice2d"}``.
    """
    from LiverKidneySegLib.markups import boxToRoi
    from lkseg.labels import PRODUCT_LABELS
    from lkseg.metrics import dice

    grid = phantom.image.grid
    truth = np.asarray(phantom.product_labels().array) == PRODUCT_LABELS.value_of(structure)
    k = int(np.argmax(truth.sum(axis=(1, 2))))
    rows, cols = np.nonzero(truth[k])  # j, i
    segmentationNode = logic.newSegmentationNode(volumeNode)
    roi = boxToRoi(volumeNode, [cols.min(), rows.min(), k - 0.5], [cols.max(), rows.max(), k + 0.5], name="box")
    result = logic.refine(volumeNode, segmentationNode, structure, box=roi, axis=2, mode="add")
    assert result.changedVoxels > 0, "the box changed nothing"
    segmentId = findSegmentId(segmentationNode, structure)
    boxed = segmentMask(segmentationNode, segmentId, grid)
    assert int(boxed.sum()) == int(boxed[k].sum()), "a 2D refinement changed other slices"
    score = float(dice(boxed[k], truth[k]))
    if minDice2d is not None:
        assert score >= minDice2d, f"{structure} from a box: 2D Dice {score:.3f} < {minDice2d}"
    inside = np.argwhere(truth[k])
    j, i = (int(v) for v in inside[np.argmin(np.abs(inside - inside.mean(axis=0)).sum(axis=1))])
    negative = pointsToMarkups(volumeNode, [[i, j, k]], name="negative")
    second = logic.refine(volumeNode, segmentationNode, structure, negative=negative, box=roi, axis=2, mode="replace")
    clicked = segmentMask(segmentationNode, segmentId, grid)
    assert int(clicked.sum()) == int(clicked[k].sum()), "a 2D refinement changed other slices"
    steps = 2 if second.changedVoxels else 1  # a click that changes nothing is not an undo step
    if steps == 2:
        logic.undo()
        assert np.array_equal(segmentMask(segmentationNode, segmentId, grid), boxed), (
            "undo did not restore the box result"
        )
    logic.undo()
    assert not segmentMask(segmentationNode, segmentId, grid).any(), "undo did not restore the empty segment"
    for _ in range(steps):
        logic.redo()
    assert np.array_equal(segmentMask(segmentationNode, segmentId, grid), clicked), "redo did not restore the edits"
    return {"segmentationNode": segmentationNode, "slice": k, "dice2d": score}


def standInAutomatic(structures=("liver", "kidney_right", "kidney_left")):
    """An automatic step for machines without the packages (Slicer's build machines): imports the
    phantom's own labels as the "automatic result" through the same path as a real run (one undo step).

    Returns:
        ``automatic(logic, volumeNode, phantom) -> segmentationNode`` for :func:`checkRadiologistFlow`.
    """

    def automatic(logic, volumeNode, phantom):
        from LiverKidneySegLib.autoseg import importResult
        from lkseg.labels import PRODUCT_LABELS

        segmentationNode = logic.newSegmentationNode(volumeNode)
        table = {PRODUCT_LABELS.value_of(name): name for name in structures}
        importResult(phantom.product_labels(), table, segmentationNode, volumeNode, False, logic.history)
        return segmentationNode

    return automatic


def _disk(shape2d, rowCol, radius: float) -> np.ndarray:
    rr, cc = np.ogrid[: shape2d[0], : shape2d[1]]
    return (rr - rowCol[0]) ** 2 + (cc - rowCol[1]) ** 2 <= radius**2


def checkRadiologistFlow(logic, volumeNode, phantom, folder, automatic=None, **segmentArgs) -> dict:
    """A radiologist's session through the Logic, checked voxel for voxel.

    Automatic segmentation (liver, kidneys); a box around the missed liver tumour on its largest
    axial slice; two positive and one negative click on the (not segmented) spleen; undo twice,
    redo once; planning (on the worker thread); STL models and the report exported to ``folder``.

    The logic's refinement engine must use :class:`StandInPredictor` (``radius`` 3): a box fills
    its voxels on the slice, a click a disk, so every expected segment is known exactly.

    Args:
        automatic: None for the real automatic segmentation (``logic.segment(**segmentArgs)``), or
            ``automatic(logic, volumeNode, phantom) -> segmentationNode`` (see :func:`standInAutomatic`).

    Returns:
        ``{"segmentationNode", "expected": {structure: bool ZYX}, "plan", "files", "report"}``.
    """
    from pathlib import Path

    from LiverKidneySegLib.planning import planRows
    from LiverKidneySegLib.volumes import ijkToWorld
    from lkseg.labels import PRODUCT_LABELS

    grid = phantom.image.grid
    truth = np.asarray(phantom.product_labels().array)
    structures = ("liver", "kidney_right", "kidney_left")
    # 1. automatic: one undo step
    if automatic is None:
        segmentationNode = logic.segment(volumeNode, structures=list(structures), **segmentArgs)
    else:
        segmentationNode = automatic(logic, volumeNode, phantom)
    expected = {name: segmentMask(segmentationNode, findSegmentId(segmentationNode, name), grid) for name in structures}
    assert logic.canUndo, "the automatic result is not undoable"

    def masks():
        return {name: segmentMask(segmentationNode, findSegmentId(segmentationNode, name), grid) for name in expected}

    # 2. box the missed lesion on its largest axial slice (two corners, world RAS)
    tumour = truth == PRODUCT_LABELS.value_of("liver_tumor")
    k = int(np.argmax(tumour.sum(axis=(1, 2))))
    rows, cols = np.nonzero(tumour[k])
    lo, hi = [cols.min() - 1, rows.min() - 1, k], [cols.max() + 1, rows.max() + 1, k]
    corners = ijkToWorld(volumeNode, np.array([lo, hi], dtype=float))
    logic.refine(volumeNode, segmentationNode, "liver_tumor", box=corners, axis=2, mode="add")
    box = np.zeros(grid.shape, dtype=bool)
    box[k, lo[1] : hi[1] + 1, lo[0] : hi[0] + 1] = True
    expected["liver_tumor"] = box
    # 3. two positive and one negative click on the spleen, one slice (one interaction)
    spleen = truth == PRODUCT_LABELS.value_of("spleen")
    k2 = int(np.argmax(spleen.sum(axis=(1, 2))))
    j, i = (int(np.rint(v)) for v in np.argwhere(spleen[k2]).mean(axis=0))
    p1, p2, n1 = [i, j, k2], [i + 5, j, k2], [i + 2, j + 3, k2]
    world = lambda *points: ijkToWorld(volumeNode, np.array(points, dtype=float))  # noqa: E731
    shape2d = grid.shape[1:]
    d1, d2, dn = _disk(shape2d, (j, i), 3), _disk(shape2d, (j, i + 5), 3), _disk(shape2d, (j + 3, i + 2), 3)
    states = []
    for positive, negative in (([p1], None), ([p1, p2], None), ([p1, p2], [n1])):
        negativeWorld = None if negative is None else world(*negative)
        result = logic.refine(
            volumeNode,
            segmentationNode,
            "spleen",
            positive=world(*positive),
            negative=negativeWorld,
            axis=2,
            mode="add",
        )
        assert result.changedVoxels > 0, f"click step {len(states) + 1} changed nothing"
        states.append(segmentMask(segmentationNode, findSegmentId(segmentationNode, "spleen"), grid))
    for state, plane in zip(states, (d1, d1 | d2, (d1 | d2) & ~dn)):
        want = np.zeros(grid.shape, dtype=bool)
        want[k2] = plane
        assert np.array_equal(state, want), "a click did not give the expected spleen"
    # 4. undo twice (the negative click, the second positive), redo once (the second positive)
    assert logic.undo().description.startswith("add") and logic.undo() is not None
    assert np.array_equal(segmentMask(segmentationNode, findSegmentId(segmentationNode, "spleen"), grid), states[0])
    assert logic.redo() is not None
    expected["spleen"] = states[1]
    final = masks()
    for name, mask in expected.items():
        assert np.array_equal(final[name], mask), f"{name} is not the expected segment"
    segmentation = segmentationNode.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(expected), "unexpected segments"
    # 5. planning on the worker thread; the volumes table counts each segment's voxels
    threads = set()
    pending = logic.plan(
        volumeNode,
        segmentationNode,
        waitForCompletion=False,
        progressCallback=lambda f, m: threads.add(threading.get_ident()),
    )
    plan, tableNode = pending.finish(timeout=600)
    assert tableNode.GetNumberOfRows() == len(planRows(plan))
    assert threads and threading.get_ident() not in threads, "planning ran on the calling thread"
    spleenRow = next(r for r in planRows(plan) if r["kind"] == "structure" and r["name"] == "spleen")
    assert 0 < spleenRow["voxels"] <= int(expected["spleen"].sum())
    volumes = logic.volumesTable(segmentationNode, volumeNode)
    for row in range(volumes.GetNumberOfRows()):
        name = volumes.GetTable().GetValueByName(row, "Structure").ToString()
        count = int(volumes.GetTable().GetValueByName(row, "Voxels").ToDouble())
        assert count == int(expected[name].sum()), f"{name}: {count} voxels in the table"
    # 6. export
    folder = Path(folder)
    files = logic.exportModels(segmentationNode, folder / "models", "STL")
    assert len(files) == len(expected) and all(Path(f).stat().st_size > 0 for f in files)
    report = logic.saveReport(volumeNode, segmentationNode, folder / "report")
    assert Path(report).exists()
    return {"segmentationNode": segmentationNode, "expected": expected, "plan": plan, "files": files, "report": report}


class _StandInSlicer:
    """The part of ``lkseg.refine.slices.VolumeSlicer`` the engine uses."""

    def __init__(self, volume):
        self.volume = volume

    def user_slice_axis(self, view: str) -> int:
        # numpy (ZYX) axis of the user array that the anatomical view slices
        lps_axis = {"sagittal": 0, "coronal": 1, "axial": 2}[view]
        column = np.argmax(np.abs(self.volume.grid.direction[lps_axis, :]))  # index axis along that LPS axis
        return 2 - int(column)


class StandInPredictor:
    """A deterministic stand-in for ``lkseg.refine.PromptPredictor`` (no model weights needed), for
    the self-test on machines without the refinement packages and for the pytest suite.

    ``predict`` returns, on the requested slice, the box filled (if any), plus a disk of radius
    ``radius`` voxels around each positive point, minus disks around negative points; a prior
    mask is the starting point when given. ``propagate`` copies the slice mask to every slice
    where the image is above ``threshold`` under it. Records every call in ``calls``.
    """

    def __init__(self, model="stand-in", device="cpu", radius: int = 3, threshold: float = 0.0):
        self.model, self.device, self.radius, self.threshold = model, device, radius, threshold
        self.calls: list[tuple] = []
        self.volumes_set = 0
        self._volume = None

    def set_volume(self, volume) -> None:
        self.calls.append({"kind": "set_volume", "thread": threading.get_ident()})
        self._volume = volume
        self.slicer = _StandInSlicer(volume)
        self.volumes_set += 1

    def predict(
        self, view, slice_index, points=None, labels=None, box=None, mask_prior=None, coords="voxel", structure=None
    ):
        self.calls.append(
            {
                "kind": "predict",
                "view": view,
                "slice": slice_index,
                "points": None if points is None else np.array(points),
                "labels": None if labels is None else np.array(labels),
                "box": None if box is None else np.array(box),
                "prior": None if mask_prior is None else np.array(mask_prior),
                "structure": structure,
                "thread": threading.get_ident(),
            }
        )
        axis = 2 - self.slicer.user_slice_axis(view)  # index axis (0=i,1=j,2=k)
        shape2d = tuple(n for a, n in enumerate(self._volume.shape) if a != 2 - axis)
        inplane = [a for a in range(3) if a != axis]  # index axes in the 2D mask, as (row=slower, col=faster)
        rows_axis, cols_axis = inplane[1], inplane[0]  # ZYX order: higher index axis first
        mask = np.zeros(shape2d, bool) if mask_prior is None else np.array(mask_prior, bool)
        rr, cc = np.ogrid[: shape2d[0], : shape2d[1]]
        if box is not None:
            lo, hi = np.asarray(box)[0], np.asarray(box)[1]
            mask[
                int(np.ceil(lo[rows_axis])) : int(np.floor(hi[rows_axis])) + 1,
                int(np.ceil(lo[cols_axis])) : int(np.floor(hi[cols_axis])) + 1,
            ] = True
        if points is not None:
            labs = np.ones(len(points)) if labels is None else np.asarray(labels)
            for p, lab in zip(np.asarray(points), labs):
                disk = (rr - p[rows_axis]) ** 2 + (cc - p[cols_axis]) ** 2 <= self.radius**2
                mask = mask | disk if lab == 1 else mask & ~disk
        return mask

    def propagate(self, view, slice_index, mask2d, structure=None, max_slices=None, progress=None, cancel=None):
        self.calls.append(
            {
                "kind": "propagate",
                "view": view,
                "slice": slice_index,
                "structure": structure,
                "thread": threading.get_ident(),
            }
        )
        axis_np = self.slicer.user_slice_axis(view)
        image = np.asarray(self._volume.array)
        out = np.zeros(image.shape, bool)
        n = image.shape[axis_np]
        for index in range(n):
            if cancel is not None:
                cancel.raise_if_cancelled()
            plane = np.take(image, index, axis=axis_np) > self.threshold
            region = [slice(None)] * 3
            region[axis_np] = index
            out[tuple(region)] = np.asarray(mask2d, bool) & plane
            if progress is not None:
                progress((index + 1) / n, "propagating")
        return out
