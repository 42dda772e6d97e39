"""Version guards and geometry fixes of the MRML layer (issue 10 item 1, issue 11 item 6).

* Segment terminology: ``vtkSegment.SetTerminology``/``GetTerminology``/``HasTerminology`` exist
  from Slicer 5.10 only; the module must write and read the same tag through the tag API where
  they are absent (checked with a real ``vtkSegment`` seen through a proxy that hides them).
* A resection plane in world coordinates, with the CT under a scaling/shear parent transform:
  the plane used in the volume's frame must contain the same points (normal by the inverse
  transpose), checked against an independent plane through three transformed points.
"""

from __future__ import annotations

import numpy as np
import pytest
from slicer_helpers import MODULE_DIR  # noqa: F401

pytestmark = pytest.mark.mrml

HIDDEN = {"SetTerminology", "GetTerminology", "HasTerminology"}


class OldSegment:
    """A real ``vtkSegment`` as Slicer 5.8 shows it: no terminology convenience methods."""

    def __init__(self, segment):
        self._segment = segment

    def __getattr__(self, name):
        if name in HIDDEN:
            raise AttributeError(name)
        return getattr(self._segment, name)


def test_terminology_through_the_tag_api_when_the_methods_are_missing(headless_slicer):
    import slicer

    from LiverKidneySegLib.segmentations import (
        segmentStructureName,
        segmentTerminology,
        setSegmentTerminology,
        styleSegment,
    )
    from lkseg.labels import get_structure

    segment = slicer.vtkSegment()
    old = OldSegment(segment)
    styleSegment(old, "kidney_tumor")  # fails with AttributeError when unguarded
    expected = get_structure("kidney_tumor").terminology_string()
    assert segment.GetTerminology() == expected  # the real 5.10+ reader sees the tag written
    assert segmentTerminology(old) == expected
    fresh = slicer.vtkSegment()
    fresh.SetName("lesion 1")  # a name that says nothing: the structure comes from the codes
    setSegmentTerminology(OldSegment(fresh), expected)
    assert fresh.GetTerminology() == expected
    assert segmentStructureName(OldSegment(fresh)) == "kidney_tumor"
    assert segmentTerminology(OldSegment(slicer.vtkSegment())) == slicer.vtkSegment().GetTerminology()


@pytest.mark.parametrize(
    "linear",
    [np.diag([2.0, 0.5, 1.5]), np.array([[1.0, 0.8, 0.0], [0.0, 1.0, 0.3], [0.2, 0.0, 1.0]])],
    ids=["scaling", "shear"],
)
def test_resection_plane_under_a_non_rigid_parent_transform(headless_slicer, mrml_scene, linear):
    import vtk

    from LiverKidneySegLib.planning import PlanInputs, resectionFromNodes

    volumeNode = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    transformNode = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    localToWorld = np.eye(4)
    localToWorld[:3, :3] = linear
    localToWorld[:3, 3] = [5.0, -3.0, 7.0]
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, localToWorld[r, c])
    transformNode.SetMatrixTransformToParent(matrix)
    volumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
    plane = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode")
    originWorld, normalWorld = np.array([10.0, 20.0, -5.0]), np.array([1.0, 2.0, 2.0]) / 3.0
    plane.SetOriginWorld(*originWorld)
    plane.SetNormalWorld(*normalWorld)
    resection = resectionFromNodes(volumeNode, None, PlanInputs(resectionPlaneNode=plane), grid=None)
    local = resection.planes[0]
    point, normal = np.array(local.point_ras), np.array(local.normal_ras)
    # independent truth: three world points on the plane, mapped to the local frame
    u = np.cross(normalWorld, [0.0, 0.0, 1.0])
    v = np.cross(normalWorld, u)
    worldToLocal = np.linalg.inv(localToWorld)
    onPlane = [(worldToLocal @ np.r_[originWorld + a * u + b * v, 1.0])[:3] for a, b in ((0, 0), (30, 0), (0, 30))]
    truthNormal = np.cross(onPlane[1] - onPlane[0], onPlane[2] - onPlane[0])
    truthNormal /= np.linalg.norm(truthNormal)
    assert abs(abs(float(truthNormal @ normal)) - 1.0) < 1e-9, "the plane is tilted in the volume's frame"
    for p in onPlane:
        assert abs(float((p - point) @ normal)) < 1e-6
    # the resected side is kept: a world point on the normal's side stays on it
    sideWorld = originWorld + 12.0 * normalWorld
    sideLocal = (worldToLocal @ np.r_[sideWorld, 1.0])[:3]
    assert float((sideLocal - point) @ normal) > 0
