"""DICOM SEG: write with highdicom against a source series, read back voxel-exact; real dcmqi SEG."""

from __future__ import annotations

import numpy as np
import pytest

import lkseg
from lkseg.errors import GeometryMismatchError, InputError
from lkseg.io import read_label_map, read_segmentation
from lkseg.io.dicom import read_dicom_series, write_dicom_series
from lkseg.io.dicomseg import read_dicom_seg, write_dicom_seg
from lkseg.labels import PRODUCT_LABELS, STRUCTURES
from lkseg.segmentation import Segmentation
from lkseg.volume import Volume

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")


def _series(tmp_path, direction, shape=(4, 6, 7)):
    rng = np.random.default_rng(5)
    vol = Volume.from_array(
        rng.integers(-200, 300, size=shape).astype(np.int16), (0.7, 1.3, 2.5), (4.5, -7.25, 12.0), direction
    )
    folder = tmp_path / "ct"
    write_dicom_series(vol, folder)
    return folder, read_dicom_series(folder)


def _segmentation(ct: Volume) -> Segmentation:
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 4, size=ct.shape).astype(np.uint8) * 2  # values 0, 2, 4, 6 differ slice by slice
    arr[0] = 0  # an empty frame that the SEG omits
    return Segmentation.from_label_volume(ct.with_array(arr), {2: "liver_tumor", 4: "kidney_left", 6: "kidney_cyst"})


def test_round_trip_voxel_exact(tmp_path, direction):
    folder, ct = _series(tmp_path, direction)
    seg = _segmentation(ct)
    path = write_dicom_seg(seg, folder, tmp_path / "seg.dcm")
    back = read_dicom_seg(path, reference=ct)
    assert back.grid.same_as(ct.grid)
    assert back.names == seg.names
    for name in seg.names:
        np.testing.assert_array_equal(back.mask(name), seg.mask(name))
        assert back.segment(name).structure == seg.segment(name).structure
        np.testing.assert_allclose(back.segment(name).color, seg.segment(name).color, atol=2 / 255)
    # without a reference: the SEG's own frames (slice 0 omitted) on the same lattice
    own = read_dicom_seg(path)
    assert own.grid.shape[0] == ct.shape[0] - 1
    placed = own.to_grid(ct.grid)
    for name in seg.names:
        np.testing.assert_array_equal(placed.mask(name), seg.mask(name))
    # through the generic reader: a flattened label map (values = segment numbers 1..3)
    flat = read_label_map(path, reference=ct)
    assert flat.grid.same_as(ct.grid)
    np.testing.assert_array_equal(flat.array > 0, seg.labels.array > 0)


def test_dataset_content_and_frame_references(tmp_path):
    folder, ct = _series(tmp_path, np.eye(3))
    seg = _segmentation(ct)
    path = write_dicom_seg(seg, folder, tmp_path / "seg.dcm", algorithm_name="UNet-test", algorithm_version="9.9")
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.meta["series_uid"]
    assert ds.StudyInstanceUID == ct.meta["study_uid"] and ds.FrameOfReferenceUID == ct.meta["frame_of_reference_uid"]
    for item, segment in zip(ds.SegmentSequence, seg.segments):
        structure = STRUCTURES[segment.structure]
        assert item.SegmentLabel == structure.display
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == structure.category.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == structure.type.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        if structure.region is not None:
            assert item.AnatomicRegionSequence[0].CodeValue == structure.region.value
        else:
            assert "AnatomicRegionSequence" not in item
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("UNet-test", "9.9")
    # each frame references the source slice at its own position
    uid_to_k = {uid: k for k, uid in enumerate(ct.meta["sop_instance_uids"])}
    for frame in ds.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        np.testing.assert_allclose(position, ct.grid.index_to_lps([0, 0, uid_to_k[source]]), atol=1e-4)


def test_overlapping_segments_round_trip(tmp_path):
    folder, ct = _series(tmp_path, np.eye(3))
    seg = Segmentation.from_label_volume(ct.with_array((ct.array > 0).astype(np.uint8)), {1: "liver"})
    box = np.zeros(ct.shape, bool)
    box[1:3, 2:5, 1:6] = True
    seg = seg.with_segment("liver_tumor", box, overlap="layer")
    assert seg.num_layers == 2
    back = read_dicom_seg(write_dicom_seg(seg, folder, tmp_path / "o.dcm"), reference=ct)
    assert back.num_layers == 2
    np.testing.assert_array_equal(back.mask("liver"), seg.mask("liver"))
    np.testing.assert_array_equal(back.mask("liver_tumor"), box)


def test_refuses_other_grid_and_leaves_no_file(tmp_path, monkeypatch):
    folder, ct = _series(tmp_path, np.eye(3))
    other = Volume.from_array(np.ones(ct.shape, np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(GeometryMismatchError, match="spacing"):
        write_dicom_seg(Segmentation.from_label_volume(other, {1: "liver"}), folder, tmp_path / "bad.dcm")
    import highdicom as hd

    def broken(self, filename, *args, **kwargs):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", broken)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_seg(_segmentation(ct), folder, tmp_path / "x.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]
    with pytest.raises(InputError, match="not a segmentation"):
        read_dicom_seg(next(folder.iterdir()))


def test_default_algorithm_version_is_package_version(tmp_path):
    folder, ct = _series(tmp_path, np.eye(3))
    seg = Segmentation.from_label_volume(
        ct.with_array((ct.array > 100).astype(np.uint8)), PRODUCT_LABELS, drop_empty=True
    )
    ds = pydicom.dcmread(write_dicom_seg(seg, folder, tmp_path / "d.dcm"))
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "LiverKidneySeg" and algorithm.AlgorithmVersion == lkseg.__version__


def test_real_dcmqi_seg_matches_liver_label_map(real_ct_dir):
    data = real_ct_dir / "dcmqi-liver"
    ct = read_dicom_series(data / "ct-3slice")
    reference = read_label_map(data / "liver_seg.nrrd", reference=ct)
    seg = read_segmentation(data / "liver.dcm", reference=ct)
    assert seg.names == ["Liver"] and seg.segment("Liver").structure == "liver"
    liver = seg.mask("liver")
    expected = reference.array == 1
    assert expected.sum() > 100_000
    mismatches = int(np.count_nonzero(liver != expected))
    assert mismatches == 0, f"{mismatches} voxels differ between liver.dcm and liver_seg.nrrd"
    # the SEG's own frame grid is the CT grid here (all 3 frames present)
    own = read_dicom_seg(data / "liver.dcm")
    assert own.grid.same_as(ct.grid, tol=1e-4)
    np.testing.assert_array_equal(own.mask("Liver"), expected)


def test_real_seg_rewritten_by_us_reloads_identically(tmp_path, real_ct_dir):
    data = real_ct_dir / "dcmqi-liver"
    ct = read_dicom_series(data / "ct-3slice")
    seg = read_dicom_seg(data / "liver.dcm", reference=ct)
    path = write_dicom_seg(seg, data / "ct-3slice", tmp_path / "liver_again.dcm")
    again = read_dicom_seg(path, reference=ct)
    np.testing.assert_array_equal(again.mask("liver"), seg.mask("liver"))
    ds = pydicom.dcmread(path)
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SCT, not the old SRT
