"""The Logic's automatic path headless: volume node -> ``python -m lkseg segment`` out of process
(progress lines, cancel of the whole process tree) -> segmentation node.

The end-to-end tests use the installed demo model when there is one (then Dice is asserted);
otherwise a tiny random-weight model package is written for the test (names and geometry only).
"""

from __future__ import annotations

import os
import sys
import textwrap
import time

import numpy as np
import pytest

pytestmark = pytest.mark.mrml


@pytest.fixture(scope="module")
def lib(headless_slicer):
    import slicer_helpers  # noqa: F401

    from LiverKidneySegLib import autoseg, logic, process, segmentations

    return type("Lib", (), {"autoseg": autoseg, "logic": logic, "process": process, "seg": segmentations})


# -- progress lines and the child process --------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("LKSEG_PROGRESS 0.42 sliding window 3/7", (0.42, "sliding window 3/7")),
        ("LKSEG_PROGRESS 1 done", (1.0, "done")),
        ("LKSEG_PROGRESS 1.7 too far", (1.0, "too far")),
        ("LKSEG_PROGRESS -0.2", (0.0, "")),
        ("  LKSEG_PROGRESS 0.5 padded\r\n", (0.5, "padded")),
        ("LKSEG_PROGRESS nan x", None),
        ("LKSEG_PROGRESS abc x", None),
        ("LKSEG_PROGRESS", None),
        ("INFO lkseg: LKSEG_PROGRESS 0.3 not at the start", None),
        ("liver 1520.3 mL", None),
    ],
)
def test_parse_progress_line(lib, line, expected):
    assert lib.process.parseProgressLine(line) == expected


def test_real_cli_runs_with_the_module_folder_on_the_path(lib):
    lines = []
    proc = lib.process.CoreProcess(["--version"], logCallback=lines.append).start()
    assert proc.wait(timeout=60) == 0
    assert any(line.startswith("lkseg ") for line in lines)
    assert proc.command[:4] == [sys.executable, "-u", "-m", "lkseg"]


FAKE_CLI = textwrap.dedent(
    """
    import os, subprocess, sys, time
    pidfile = sys.argv[1]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    print("LKSEG_PROGRESS 0.25 model loaded", flush=True)
    print("INFO a log line", file=sys.stderr, flush=True)
    if len(sys.argv) > 2:
        print("lkseg segment: error: something specific went wrong", file=sys.stderr, flush=True)
        sys.exit(2)
    print("LKSEG_PROGRESS 0.5 half way", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def fake_cli(tmp_path):
    package = tmp_path / "fakecli"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_CLI)
    return {"PYTHONPATH": str(tmp_path)}, tmp_path / "pids.txt"


def _alive(pid: int) -> bool:
    psutil = pytest.importorskip("psutil")
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_cancel_kills_the_whole_process_tree_within_2_s(lib, fake_cli):
    env, pidfile = fake_cli
    progress, logs = [], []
    proc = lib.process.CoreProcess(
        [str(pidfile)],
        progress=lambda f, m: progress.append((f, m)),
        logCallback=logs.append,
        env=env,
        module="fakecli",
    )
    proc.start()
    deadline = time.monotonic() + 60
    while (0.5, "half way") not in progress:
        assert proc.poll() is None, proc.errorText()
        assert time.monotonic() < deadline, "no progress line from the child"
        time.sleep(0.05)
    assert progress[0] == (0.25, "model loaded") and "INFO a log line" in logs
    parent, grandchild = (int(v) for v in pidfile.read_text().split())
    assert _alive(parent) and _alive(grandchild)
    t0 = time.monotonic()
    proc.cancel()
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
    time.sleep(0.2)
    assert not _alive(parent) and not _alive(grandchild)
    assert proc.poll() is not None and proc.cancelled


def test_failure_reports_the_cli_error_line(lib, fake_cli):
    env, pidfile = fake_cli
    proc = lib.process.CoreProcess([str(pidfile), "fail"], env=env, module="fakecli").start()
    assert proc.wait(timeout=60) == 2
    assert proc.errorText() == "lkseg segment: error: something specific went wrong"
    _, grandchild = (int(v) for v in pidfile.read_text().split())
    proc.cancel()  # a leftover grandchild of a finished child is cleaned up too
    time.sleep(0.2)
    assert not _alive(grandchild)


# -- the Logic's automatic segmentation ---------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_case(headless_slicer):
    from LiverKidneySegLib.selftest import PHANTOM_SIZE, PHANTOM_SPACING
    from lkseg.phantom import PhantomConfig, generate_phantom

    return generate_phantom(PhantomConfig(seed=11, size_ijk=PHANTOM_SIZE, spacing=PHANTOM_SPACING))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """``(model id or folder, demo)``: the installed demo model, else a tiny random-weight package."""
    from lkseg.models import list_models

    demo = [m for m in list_models().models if "liver" in m.structures]
    if demo:
        return demo[0].id, True
    from lkseg.models import make_manifest, make_stage, write_package
    from lkseg.models.networks import build_network, unet_spec

    labels = {1: "liver", 3: "kidney_right", 4: "kidney_left"}
    network = unet_spec(max(labels) + 1, channels=(4, 8, 16), num_res_units=0)
    stage = make_stage("fine", (6.0, 6.0, 6.0), (32, 32, 32), network, labels)
    manifest = make_manifest(
        "lkseg-test-random", "0.0.1", "test only: random weights", labels, [stage], description="random weights"
    )
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "lkseg-test-random"
    write_package(folder, manifest, {"fine": build_network(network)})
    return str(folder), False


@pytest.mark.slow
def test_segment_phantom_end_to_end(lib, mrml_scene, phantom_case, model):
    """One out-of-process run into a segmentation that already has a user segment and a "Liver":
    refused without replaceExisting (before any process starts); with it, the user segment is
    kept, "Liver" replaced, the expected segments written on the CT's grid (Dice with a demo model)."""
    from LiverKidneySegLib.selftest import checkSegmentPhantom
    from LiverKidneySegLib.volumes import volumeToNode

    modelId, demo = model
    node = volumeToNode(phantom_case.image, scene=mrml_scene, name="Phantom")
    logic = lib.logic.LiverKidneySegLogicBase(mrml_scene)
    seg = logic.newSegmentationNode(node)
    user = np.zeros(phantom_case.image.shape, np.uint8)
    user[10:12, 10:12, 10:12] = 1
    lib.seg.labelMapToSegmentation(phantom_case.image.with_array(user), {1: "My landmark"}, seg)
    lib.seg.labelMapToSegmentation(phantom_case.image.with_array(user), {1: "liver"}, seg)
    with pytest.raises(lib.seg.SegmentExistsError, match="Liver"):
        logic.segment(node, seg, modelId=modelId, device="cpu", structures=["liver"])
    assert logic.job is None  # refused before any process was started

    progress = []
    t0 = time.monotonic()
    outcome = checkSegmentPhantom(
        logic,
        node,
        phantom_case,
        minDice=0.7 if demo else None,
        segmentationNode=seg,
        replaceExisting=True,
        modelId=modelId,
        device="cpu",
        progressCallback=lambda f, m: progress.append(f),
    )
    seconds = time.monotonic() - t0
    print(
        f"automatic segmentation through the Logic: {seconds:.1f} s, Dice {outcome['dice']} ({'demo model' if demo else 'random weights'})"
    )
    assert outcome["segmentationNode"] is seg
    names = sorted(
        seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(seg.GetSegmentation().GetNumberOfSegments())
    )
    assert names == ["Left kidney", "Liver", "My landmark", "Right kidney"]
    np.testing.assert_array_equal(
        lib.seg.segmentMask(seg, lib.seg.findSegmentId(seg, "My landmark"), phantom_case.image.grid), user == 1
    )
    assert lib.seg.referenceGrid(seg).same_as(phantom_case.image.grid)
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is node
    assert progress and progress == sorted(progress) and progress[-1] == 1.0
    assert any(0.05 < f < 0.95 for f in progress)  # the child's own progress lines arrived
    assert logic.job.state == "done" and logic.job._workDir is None


def test_cancel_a_running_segmentation(lib, mrml_scene, phantom_case, model):
    psutil = pytest.importorskip("psutil")
    from LiverKidneySegLib.volumes import volumeToNode

    node = volumeToNode(phantom_case.image, scene=mrml_scene, name="Phantom")
    logic = lib.logic.LiverKidneySegLogicBase(mrml_scene)
    job = logic.segment(node, modelId=model[0], device="cpu", waitForCompletion=False)
    pid = job._process.pid
    workDir = job._workDir
    assert (workDir / "input.nrrd").is_file() and job.state == "running"
    with pytest.raises(RuntimeError, match="already running"):
        logic.segment(node)
    t0 = time.monotonic()
    logic.cancel()
    assert time.monotonic() - t0 < 2.0
    assert job.poll() and job.state == "cancelled"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert job.segmentationNode.GetSegmentation().GetNumberOfSegments() == 0
    assert not workDir.exists()


def test_missing_model_fails_before_anything_starts(lib, mrml_scene, phantom_case):
    from LiverKidneySegLib.volumes import volumeToNode
    from lkseg.errors import ModelError

    node = volumeToNode(phantom_case.image, scene=mrml_scene, name="Phantom")
    logic = lib.logic.LiverKidneySegLogicBase(mrml_scene)
    t0 = time.monotonic()
    with pytest.raises(ModelError, match="no-such-model"):
        logic.segment(node, modelId="no-such-model", device="cpu")
    assert logic.job is None and time.monotonic() - t0 < 5


def test_cli_failure_reaches_the_caller(lib, mrml_scene, phantom_case, model):
    from LiverKidneySegLib.volumes import volumeToNode
    from lkseg.errors import LKSegError

    node = volumeToNode(phantom_case.image, scene=mrml_scene, name="Phantom")
    logic = lib.logic.LiverKidneySegLogicBase(mrml_scene)
    job = lib.autoseg.SegmentationJob(
        node, logic.newSegmentationNode(node), lib.autoseg.SegmentOptions(model[0], extraArgs=["--no-such-option"])
    )
    with pytest.raises(LKSegError, match=r"exit code 2.*unrecognized arguments: --no-such-option"):
        job.start().wait()
    assert job.state == "failed"


def test_bad_input_fails_before_anything_starts(lib, mrml_scene):
    from lkseg.errors import InputError

    logic = lib.logic.LiverKidneySegLogicBase(mrml_scene)
    with pytest.raises(InputError, match="no input volume"):
        logic.segment(None)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty")
    with pytest.raises(InputError, match="no image data"):
        logic.segment(empty)
    assert logic.job is None and mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_cli_arguments(lib, tmp_path):
    options = lib.autoseg.SegmentOptions("lkseg-demo-abdomen@1.0", "cuda", ["liver", "liver_tumor"])
    args = options.cliArgs(tmp_path / "in.nrrd", tmp_path / "out.seg.nrrd")
    assert args[:4] == ["segment", str(tmp_path / "in.nrrd"), "-o", str(tmp_path / "out.seg.nrrd")]
    assert "--progress-lines" in args
    assert args[args.index("--device") + 1] == "cuda"
    assert args[args.index("--model") + 1] == "lkseg-demo-abdomen@1.0"
    assert args[args.index("--structures") + 1 :][:2] == ["liver", "liver_tumor"]
    from lkseg.cli.main import build_parser

    parsed = build_parser().parse_args(args)  # the core CLI accepts exactly these arguments
    assert parsed.structures == ["liver", "liver_tumor"] and parsed.progress_lines and parsed.device == "cuda"


def test_conflicts_with_the_whole_model_are_found_before_the_run(lib, mrml_scene, phantom_case, model):
    from LiverKidneySegLib.volumes import volumeToNode
    from lkseg.errors import InputError

    modelId, _ = model
    node = volumeToNode(phantom_case.image, scene=mrml_scene, name="Phantom")
    logic = lib.logic.LiverKidneySegLogicBase(mrml_scene)
    seg = logic.newSegmentationNode(node)
    lib.seg.labelMapToSegmentation(
        phantom_case.image.with_array(np.zeros(phantom_case.image.shape, np.uint8)), {1: "kidney_left"}, seg
    )
    with pytest.raises(lib.seg.SegmentExistsError, match="Left kidney"):
        logic.segment(node, seg, modelId=modelId)  # all the model's structures: checked from its manifest
    with pytest.raises(InputError, match="no structure selected"):
        logic.segment(node, seg, modelId=modelId, structures=[])
    assert logic.job is None


def test_models_shipped_in_the_module_folder_are_found(lib, model, monkeypatch, tmp_path):
    import shutil
    from pathlib import Path

    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from lkseg.errors import ModelError
    from lkseg.models import load_package

    modelId, demo = model
    source = Path(modelId) if not demo else lib.autoseg.resolveModel(modelId).folder
    shipped = tmp_path / "Models" / "lkseg-shipped-copy"
    shutil.copytree(source, shipped)
    manifest = (shipped / "manifest.json").read_text(encoding="utf-8")
    original_id = load_package(source).id
    (shipped / "manifest.json").write_text(
        manifest.replace(f'"{original_id}"', '"lkseg-shipped-copy"', 1), encoding="utf-8"
    )
    with pytest.raises(ModelError):
        lib.autoseg.resolveModel("lkseg-shipped-copy")  # not in the core's folders
    monkeypatch.setattr(lib.autoseg, "MODULE_MODELS_DIR", tmp_path / "Models")
    assert lib.autoseg.resolveModel("lkseg-shipped-copy").folder == shipped
    assert "lkseg-shipped-copy" in [m.id for m in LiverKidneySegLogicBase.availableModels()]
