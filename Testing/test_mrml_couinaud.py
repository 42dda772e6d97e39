"""Couinaud landmarks as Slicer point lists and segments in a segmentation node (slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.errors import InputError
from lkseg.labels import PRODUCT_LABELS
from lkseg.phantom import PhantomConfig, generate_phantom
from lkseg.phantom.couinaud import exact_landmarks
from lkseg.planning import LabelIndex, couinaud_segments

pytestmark = pytest.mark.mrml


@pytest.fixture(scope="module")
def case():
    ph = generate_phantom(PhantomConfig(seed=6, size_ijk=(128, 128, 60), spacing=(3.2, 3.2, 4.2), noise_sd=0.0))
    return ph, exact_landmarks(ph)


def test_landmarks_round_trip_through_a_point_list(headless_slicer, mrml_scene, case):
    from LiverKidneySegLib.couinaud import landmarksFromMarkups, landmarksToMarkups

    _, lm = case
    node = landmarksToMarkups(lm, scene=mrml_scene)
    labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
    assert "PB" in labels and "RHV-1" in labels and "LHV-1" in labels
    back = landmarksFromMarkups(node)
    for key in ("ivc", "right_hepatic_vein", "middle_hepatic_vein", "left_hepatic_vein"):
        assert np.allclose(getattr(back, key), getattr(lm, key), atol=1e-4)
    assert np.allclose(back.portal_bifurcation, lm.portal_bifurcation, atol=1e-4)
    # a parent transform moves the points in world RAS: the landmarks follow
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    import vtk

    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = landmarksFromMarkups(node)
    assert np.allclose(np.subtract(moved.portal_bifurcation, lm.portal_bifurcation), (10.0, 0.0, 0.0), atol=1e-4)
    node.AddControlPointWorld(0.0, 0.0, 0.0, "tumour?")
    with pytest.raises(InputError, match="no landmark label"):
        landmarksFromMarkups(node)


def test_segments_into_a_segmentation_node(headless_slicer, mrml_scene, case):
    from LiverKidneySegLib.couinaud import couinaudToSegmentation
    from LiverKidneySegLib.segmentations import segmentMask

    ph, lm = case
    result = couinaud_segments(LabelIndex.build(ph.product_labels(), PRODUCT_LABELS), lm)
    node = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Couinaud")
    ids = couinaudToSegmentation(result, node)
    present = [s for s in range(1, 9) if (result.labels.array == s).any()]
    assert len(ids) == len(present) == node.GetSegmentation().GetNumberOfSegments()
    for segment_id, seg in zip(ids, present):
        mask = segmentMask(node, segment_id, ph.grid)
        assert np.array_equal(mask, result.labels.array == seg)  # voxel for voxel, same geometry
    # writing again replaces, never duplicates
    couinaudToSegmentation(result, node)
    assert node.GetSegmentation().GetNumberOfSegments() == len(present)
