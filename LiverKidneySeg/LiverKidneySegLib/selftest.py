"""Checks shared by the module's Test class (inside 3D Slicer) and the pytest suite (slicer-core).

Each check builds a phantom CT node, runs the Logic, and raises ``AssertionError`` with a clear
message when an outcome is wrong. No Qt: the Test class adds its ``delayDisplay`` messages.
"""

from __future__ import annotations

import logging

import numpy as np

from LiverKidneySegLib.markups import pointsToMarkups
from LiverKidneySegLib.segmentations import findSegmentId, segmentMask
from LiverKidneySegLib.volumes import volumeToNode

__all__ = ["checkRefineUndo", "checkSegmentPhantom", "phantomVolumeNode"]

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
