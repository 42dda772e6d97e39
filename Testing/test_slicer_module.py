"""The scripted module file outside Slicer, planning through the Logic, dependencies, DICOM tags.

``LiverKidneySeg.py`` imports Slicer's application-only packages (``qt``,
``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``slicer.i18n``); these are
replaced by minimal stand-ins here so that the module's own classes (parameter node, Logic) can
be checked with slicer-core. The GUI itself is checked statically (test_layout.py) and in real
Slicer (LiverKidneySeg/Testing/Python/LiverKidneySegSelfTest.py).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import types
import typing

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.mrml


def _stub_modules() -> dict[str, types.ModuleType]:
    qt = types.ModuleType("qt")
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    pnw = types.ModuleType("slicer.parameterNodeWrapper")

    class _Annotation:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    for name in ("Choice", "WithinRange", "Default"):
        setattr(pnw, name, type(name, (_Annotation,), {}))
    pnw.parameterNodeWrapper = lambda cls: cls
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__.removesuffix("Logic")

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    import unittest

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, *args, **kwargs):
            print(message)

    for cls in (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleTest,
    ):
        setattr(slm, cls.__name__, cls)
    return {"qt": qt, "slicer.i18n": i18n, "slicer.parameterNodeWrapper": pnw, "slicer.ScriptedLoadableModule": slm}


@pytest.fixture(scope="module")
def module(headless_slicer):
    import slicer_helpers  # noqa: F401

    saved = {name: sys.modules.get(name) for name in (*_stub_modules(), "LiverKidneySeg")}
    sys.modules.update(_stub_modules())
    try:
        spec = importlib.util.spec_from_file_location("LiverKidneySeg", ROOT / "LiverKidneySeg" / "LiverKidneySeg.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["LiverKidneySeg"] = mod  # as Slicer imports it (type hints resolve in its globals)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value


def test_module_description(module):
    class Parent:
        pass

    parent = Parent()
    module.LiverKidneySeg(parent)
    assert parent.title and parent.categories == ["Segmentation"]
    assert parent.contributors and "demo models" in parent.helpText and "Propagate in 3D" in parent.helpText
    assert "LiteMedSAM" in parent.acknowledgementText


def test_parameter_node_annotations_resolve(module):
    """Slicer's wrapper reads the fields with typing.get_type_hints(include_extras=True)."""
    hints = typing.get_type_hints(module.LiverKidneySegParameterNode, include_extras=True)
    import slicer

    assert hints["inputVolume"] is slicer.vtkMRMLScalarVolumeNode
    assert hints["outputSegmentation"] is slicer.vtkMRMLSegmentationNode
    assert typing.get_origin(hints["structures"]) is typing.Annotated
    default = next(a for a in hints["structures"].__metadata__ if type(a).__name__ == "Default")
    assert default.kwargs["generator"]() == module.PRODUCT_STRUCTURES
    choice = next(a for a in hints["combineMode"].__metadata__ if type(a).__name__ == "Choice")
    assert choice.args[0] == ["add", "subtract", "replace"]
    for name in (
        "modelId",
        "device",
        "refineModel",
        "patientHeight",
        "patientWeight",
        "resectionPlane",
        "resultsTable",
        "exportFolder",
    ):
        assert name in hints


def test_logic_api_and_defaults(module, mrml_scene):
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase

    logic = module.LiverKidneySegLogic()
    assert isinstance(logic, LiverKidneySegLogicBase) and logic.moduleName == "LiverKidneySeg"
    assert logic.scene is mrml_scene  # slicer.mrmlScene by default
    for name in ("segment", "refine", "propagate"):
        assert inspect.signature(getattr(logic, name)).parameters["waitForCompletion"].default is True
    params = inspect.signature(logic.segment).parameters
    assert list(params)[:2] == ["volumeNode", "segmentationNode"] and params["segmentationNode"].default is None
    assert not logic.canUndo and logic.undo() is None


# -- planning through the Logic ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planned_case(headless_slicer):
    from LiverKidneySegLib.segmentations import labelMapToSegmentation
    from LiverKidneySegLib.volumes import volumeToNode
    from lkseg.labels import PRODUCT_LABELS
    from lkseg.phantom import PhantomConfig, generate_phantom

    scene = headless_slicer.scene
    phantom = generate_phantom(PhantomConfig(seed=5, size_ijk=(80, 80, 40), spacing=(3.5, 3.5, 5.0)))
    node = volumeToNode(phantom.image, scene=scene, name="Plan CT")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Plan")
    labelMapToSegmentation(phantom.product_labels(), PRODUCT_LABELS, seg, referenceVolumeNode=node, includeEmpty=False)
    yield phantom, node, seg
    headless_slicer.clear()


def test_plan_table_matches_the_core(headless_slicer, planned_case):
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from LiverKidneySegLib.tables import rowsFromTable
    from lkseg.labels import PRODUCT_LABELS
    from lkseg.planning import Patient, PlanOptions, Resection, ResectionPlane, run_plan

    phantom, node, seg = planned_case
    scene = headless_slicer.scene
    liver = np.asarray(phantom.product_labels().array) == 1
    center_ijk = np.argwhere(liver).mean(axis=0)[::-1]
    point = phantom.image.grid.index_to_ras(center_ijk)
    plane = scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "Cut")
    plane.SetOrigin(*point)
    plane.SetNormal(1.0, 0.0, 0.0)  # the patient's left half of the liver (toward +R... RAS x) is resected
    plane.SetAxes([0, 1, 0], [0, 0, 1], [1, 0, 0])
    logic = LiverKidneySegLogicBase(scene)
    result, table = logic.plan(node, seg, heightCm=175.0, weightKg=80.0, resectionPlaneNode=plane)
    expected = run_plan(
        phantom.product_labels(),
        PRODUCT_LABELS,
        PlanOptions(
            resection=Resection(planes=(ResectionPlane(tuple(point), (1.0, 0.0, 0.0)),)),
            patient=Patient(175.0, 80.0),
            surfaces=False,
        ),
    )
    rows = rowsFromTable(table)
    liver_row = next(r for r in rows if r["kind"] == "structure" and r["name"] == "liver")
    assert liver_row["volume_ml"] == pytest.approx(expected.volumes["liver"].volume_ml, rel=1e-6)
    assert liver_row["volume_ml"] == pytest.approx(
        phantom.product_labels().grid.voxel_volume_ml * liver.sum(), rel=1e-6
    )
    assert result.flr is not None and result.flr.to_dict()["flr_ml"] == pytest.approx(
        expected.flr.to_dict()["flr_ml"], rel=1e-6
    )
    assert 0 < result.flr.to_dict()["flr_ml"] < expected.volumes["liver"].volume_ml
    assert table.GetColumnUnitLabel("volume_ml") == "mL"
    # a resection segment instead of a plane: the same voxels, the same FLR
    from LiverKidneySegLib.segmentations import labelMapToSegmentation

    region = np.zeros(liver.shape, np.uint8)
    ras = phantom.image.grid.index_to_ras(np.argwhere(np.ones(liver.shape, bool))[:, ::-1].astype(float)).reshape(
        *liver.shape, 3
    )
    region[(ras[..., 0] - point[0]) > 0] = 1
    labelMapToSegmentation(phantom.image.with_array(region), {1: "resection"}, seg)
    by_segment, _ = logic.plan(node, seg, heightCm=175.0, weightKg=80.0, resectionSegmentName="Resection")
    assert by_segment.flr.to_dict()["flr_ml"] == pytest.approx(result.flr.to_dict()["flr_ml"], rel=1e-6)
    assert "resection" not in by_segment.volumes  # the resection segment is not an organ
    seg.GetSegmentation().RemoveSegment(seg.GetSegmentation().GetSegmentIdBySegmentName("Resection"))


def test_save_report_and_volumes_table(headless_slicer, planned_case, tmp_path):
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from LiverKidneySegLib.tables import rowsFromTable

    phantom, node, seg = planned_case
    logic = LiverKidneySegLogicBase(headless_slicer.scene)
    html = logic.saveReport(node, seg, tmp_path)
    assert html.suffix == ".html" and html.is_file() and "Liver" in html.read_text(encoding="utf-8")
    assert (tmp_path / "Plan_report.json").is_file() and (tmp_path / "Plan_report.csv").is_file()
    rows = rowsFromTable(logic.volumesTable(seg, node))
    liver = next(r for r in rows if r["Structure"] == "liver")
    truth = np.asarray(phantom.product_labels().array) == 1
    assert liver["Voxels"] == int(truth.sum())
    assert liver["Mean"] == pytest.approx(float(np.asarray(phantom.image.array)[truth].mean()))


def test_export_models_through_the_logic(headless_slicer, planned_case, tmp_path):
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase

    _, _, seg = planned_case
    logic = LiverKidneySegLogicBase(headless_slicer.scene)
    assert logic.createSurfaces(seg, 0.3)
    models = logic.exportModels(seg, segmentNames=["liver", "Right kidney"])
    assert [m.GetName() for m in models] == ["Liver", "Right kidney"]
    files = logic.exportModels(seg, tmp_path, "OBJ", ["liver"])
    assert [f.name for f in files] == ["Plan_Liver.obj"]


# -- dependencies and DICOM tags --------------------------------------------------------------------------
def test_requirements_checks(headless_slicer):
    from LiverKidneySegLib import dependencies as D

    reqs = D.loadRequirements()
    assert "torch>=2.2" in reqs and all(">=" in r for r in reqs)
    assert D.requirementSatisfied("numpy>=1.0")
    assert not D.requirementSatisfied("numpy>=999")
    assert not D.requirementSatisfied("lkseg-surely-not-installed>=1.0")
    with pytest.raises(ValueError, match="unsupported requirement"):
        D.requirementSatisfied("numpy==1.0")
    assert D.missingRequirements(["numpy>=1.0", "numpy>=999"]) == ["numpy>=999"]


def test_patient_height_weight_from_dicom(headless_slicer, mrml_scene, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset

    from LiverKidneySegLib import patient as P

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "ct.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientSize = "1.76"
    ds.PatientWeight = "82.5"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    assert P.heightWeightFromFile(tmp_path / "ct.dcm") == (pytest.approx(176.0), pytest.approx(82.5))
    node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    assert P.heightWeightFromNode(node) == (None, None)  # not from DICOM
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3.4 1.2.3.5")

    class Database:
        def fileForInstance(self, uid):
            return str(tmp_path / "ct.dcm") if uid == "1.2.3.4" else ""

    assert P.heightWeightFromNode(node, Database()) == (pytest.approx(176.0), pytest.approx(82.5))
    ds.PatientSize = "17.6"  # implausible (176 m)
    ds.PatientWeight = ""
    assert P.heightWeightFromDataset(ds) == (None, None)
