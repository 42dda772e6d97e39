"""Slicer .seg.nrrd: geometry-exact round trips, layers, slicerio / Slicer compatibility, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import DIRECTIONS
from lkseg.errors import GeometryMismatchError, InputError
from lkseg.io import read_label_map, read_segmentation
from lkseg.io.segnrrd import read_seg_nrrd, write_seg_nrrd
from lkseg.labels import PRODUCT_LABELS, STRUCTURES
from lkseg.segmentation import Segmentation
from lkseg.volume import Volume

slicerio = pytest.importorskip("slicerio")
SLICERIO_DATA = Path(slicerio.__file__).parent / "data"


def _product_seg(direction) -> Segmentation:
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 8, size=(5, 6, 7)).astype(np.uint8)
    vol = Volume.from_array(arr, (0.7, 1.3, 2.5), (10.123456789, -20.5, 30.25), direction)
    return Segmentation.from_label_volume(vol, PRODUCT_LABELS)


def _layered_seg(direction) -> Segmentation:
    seg = _product_seg(direction)
    sphere = np.zeros(seg.grid.shape, bool)
    sphere[1:4, 2:5, 2:6] = True
    return seg.with_segment("Resection", sphere, overlap="layer")


def test_round_trip_is_exact(tmp_path, direction):
    seg = _product_seg(direction)
    path = write_seg_nrrd(seg, tmp_path / "a.seg.nrrd")
    back = read_seg_nrrd(path)
    assert back.grid.same_as(seg.grid, tol=1e-9)
    np.testing.assert_array_equal(back.labels.array, seg.labels.array)
    assert back.names == seg.names
    for a, b in zip(back.segments, seg.segments):
        assert (a.value, a.structure, a.layer, a.terminology) == (b.value, b.structure, b.layer, b.terminology)
        np.testing.assert_allclose(a.color, b.color, atol=1e-9)
    # read_label_map flattens to the same label map; read_segmentation keeps segments
    np.testing.assert_array_equal(read_label_map(path).array, seg.labels.array)
    assert read_segmentation(path).names == seg.names


def test_layered_round_trip_and_header(tmp_path, direction):
    seg = _layered_seg(direction)
    assert seg.num_layers == 2
    path = write_seg_nrrd(seg, tmp_path / "layers.seg.nrrd")
    import nrrd

    header = nrrd.read_header(str(path))
    assert header["dimension"] == 4 and header["kinds"][0] == "list"
    assert header["space"] == "left-posterior-superior"
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    n = seg.names.index("Resection")
    assert header[f"Segment{n}_Layer"] == "1" and header[f"Segment{n}_Name"] == "Resection"
    assert "TerminologyEntry:" in header[f"Segment{n}_Tags"]
    # space directions = direction @ diag(spacing) columns, one row per axis
    np.testing.assert_allclose(header["space directions"][1:], (seg.grid.direction @ np.diag(seg.grid.spacing)).T)
    back = read_seg_nrrd(path)
    assert back.num_layers == 2 and back.grid.same_as(seg.grid, tol=1e-9)
    for name in seg.names:
        np.testing.assert_array_equal(back.mask(name), seg.mask(name))


@pytest.mark.parametrize("layered", [False, True])
def test_written_file_loads_in_slicerio(tmp_path, layered):
    seg = (_layered_seg if layered else _product_seg)(DIRECTIONS["oblique"])
    path = write_seg_nrrd(seg, tmp_path / "s.seg.nrrd")
    loaded = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in loaded["segments"]] == seg.names
    for item, segment in zip(loaded["segments"], seg.segments):
        assert item["labelValue"] == segment.value and item["layer"] == segment.layer
        np.testing.assert_allclose(item["color"], segment.color, atol=1e-6)
        if segment.structure:
            assert item["terminology"]["type"][1] == STRUCTURES[segment.structure].type.value
        mask_ijk = slicerio.segment_mask(loaded, item["id"])
        np.testing.assert_array_equal(mask_ijk.transpose(2, 1, 0), seg.mask(segment.name))
    np.testing.assert_allclose(np.asarray(loaded["ijkToLPS"]), seg.grid.ijk_to_lps, atol=1e-9)


def test_reads_files_written_by_slicer():
    flat = read_seg_nrrd(SLICERIO_DATA / "Segmentation.seg.nrrd")
    overlapping = read_seg_nrrd(SLICERIO_DATA / "SegmentationOverlapping.seg.nrrd")
    ref_flat = slicerio.read_segmentation(str(SLICERIO_DATA / "Segmentation.seg.nrrd"))
    ref_over = slicerio.read_segmentation(str(SLICERIO_DATA / "SegmentationOverlapping.seg.nrrd"))
    for ours, ref in ((flat, ref_flat), (overlapping, ref_over)):
        assert ours.names == [s["name"] for s in ref["segments"]]
        np.testing.assert_allclose(ours.grid.ijk_to_lps, np.asarray(ref["ijkToLPS"]), atol=1e-9)
        for item in ref["segments"]:
            np.testing.assert_array_equal(
                ours.mask(item["name"]), slicerio.segment_mask(ref, item["id"]).transpose(2, 1, 0)
            )
    assert overlapping.num_layers == 2 and overlapping.segment("overlapping sphere").layer == 1
    assert flat.segment("ribs").terminology.endswith("~^^~^^")
    assert flat.segment("ribs").codes()["type"].value == "113197003"


def test_cropped_file_is_placed_on_reference_grid(tmp_path):
    seg = _product_seg(DIRECTIONS["flipped_ras"])
    image = seg.labels.with_array(np.zeros(seg.grid.shape, np.int16))
    # a Slicer-style cropped file: only the sub-box [1:4, 2:5, 3:7] (ZYX) is stored
    sub = seg.labels.array[1:4, 2:5, 3:7]
    origin = seg.grid.index_to_lps([3, 2, 1])
    cropped = Segmentation.from_label_volume(
        Volume.from_array(sub, seg.grid.spacing, origin, seg.grid.direction), PRODUCT_LABELS
    )
    path = write_seg_nrrd(cropped, tmp_path / "crop.seg.nrrd")
    placed = read_label_map(path, reference=image)
    assert placed.grid.same_as(image.grid)
    expected = np.zeros(seg.grid.shape, np.uint8)
    expected[1:4, 2:5, 3:7] = sub
    np.testing.assert_array_equal(placed.array, expected)
    other = Volume.from_array(np.zeros((5, 6, 7), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(GeometryMismatchError, match=r"crop\.seg\.nrrd"):
        read_label_map(path, reference=other)


def test_slicer_storage_node_reads_our_file(tmp_path):
    slicer = pytest.importorskip("slicer")
    seg = _layered_seg(DIRECTIONS["oblique"])
    path = write_seg_nrrd(seg, tmp_path / "x.seg.nrrd")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == seg.names
    liver = segmentation.GetSegment(seg.segment("liver").segment_id)
    assert liver.GetLabelValue() == 1
    np.testing.assert_allclose(liver.GetColor(), STRUCTURES["liver"].color, atol=1e-6)


def test_bad_files(tmp_path):
    seg = _product_seg(np.eye(3))
    good = write_seg_nrrd(seg, tmp_path / "good.seg.nrrd")
    data = good.read_bytes()
    truncated = tmp_path / "trunc.seg.nrrd"
    truncated.write_bytes(data[: len(data) - 40])
    with pytest.raises(InputError, match=r"trunc\.seg\.nrrd.*(corrupt|truncated)"):
        read_seg_nrrd(truncated)
    garbage = tmp_path / "garbage.seg.nrrd"
    garbage.write_bytes(b"not a nrrd at all" * 10)
    with pytest.raises(InputError, match="garbage"):
        read_label_map(garbage)
    with pytest.raises(InputError, match="no such file"):
        read_seg_nrrd(tmp_path / "missing.seg.nrrd")


def test_failed_write_leaves_no_file_and_keeps_old(tmp_path, monkeypatch):
    import nrrd

    seg = _product_seg(np.eye(3))
    target = tmp_path / "out.seg.nrrd"
    write_seg_nrrd(seg, target)
    before = target.read_bytes()

    def broken(filename, data, header, **kwargs):
        Path(filename).write_bytes(b"NRRD0004\npartial")
        raise OSError("disk full")

    monkeypatch.setattr(nrrd, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        write_seg_nrrd(seg.with_segment("spleen", np.ones(seg.grid.shape, bool)), target)
    with pytest.raises(OSError):
        write_seg_nrrd(seg, tmp_path / "new.seg.nrrd")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.seg.nrrd"]


def test_colliding_values_across_layers_and_plain_nrrd_suffix(tmp_path):
    import shutil

    from lkseg.segmentation import Segment

    seg = Segmentation.from_masks(
        _product_seg(np.eye(3)).grid,
        [(Segment("A", 1), np.ones((5, 6, 7), bool)), (Segment("B", 1), np.eye(7, dtype=bool)[:6][None].repeat(5, 0))],
    )
    assert seg.num_layers == 2 and [s.segment_id for s in seg.segments] == ["Segment_1", "Segment_1"]
    loaded = slicerio.read_segmentation(str(write_seg_nrrd(seg, tmp_path / "c.seg.nrrd")))
    assert [s["id"] for s in loaded["segments"]] == ["Segment_1", "Segment_1_2"]
    # a Slicer segmentation saved as plain .nrrd is still recognised as a segmentation
    shutil.copy(SLICERIO_DATA / "SegmentationOverlapping.seg.nrrd", tmp_path / "plain.nrrd")
    flat = read_label_map(tmp_path / "plain.nrrd")
    assert flat.array.max() == 8  # 8 segments, values collide across layers -> renumbered 1..8
    assert read_segmentation(tmp_path / "plain.nrrd").num_layers == 2
