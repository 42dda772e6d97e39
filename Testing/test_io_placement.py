"""A label map meets its image: exact reorientation on a shared lattice, refusal otherwise.

Truths: nibabel's own reorientation of a real TotalSegmentator mask (``as_reoriented``), and a
brute-force lookup of every image voxel centre in the label map's grid.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from conftest import DIRECTIONS
from lkseg.errors import GeometryMismatchError
from lkseg.io import read_image, read_label_map, read_segmentation, write_label_map
from lkseg.io.placement import lattice_map, place_label_map
from lkseg.volume import Grid, Volume


def _relabelled(labels: Volume, perm: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> Volume:
    """The same voxels stored with index axes permuted (new axis n = old axis perm[n]) and flipped.

    Built from voxel centres, not from the code under test: new grid's direction columns and
    origin follow from the old grid's index_to_lps.
    """
    g = labels.grid
    size = g.size_ijk
    direction = np.column_stack([g.direction[:, perm[n]] * (-1 if flips[n] else 1) for n in range(3)])
    spacing = [g.spacing[perm[n]] for n in range(3)]
    start = [0, 0, 0]
    for n in range(3):
        if flips[n]:
            start[perm[n]] = size[perm[n]] - 1
    origin = g.index_to_lps(start)
    new_size = [size[perm[n]] for n in range(3)]
    out = np.zeros((new_size[2], new_size[1], new_size[0]), labels.dtype)
    for i, j, k in itertools.product(*(range(s) for s in new_size)):
        old = list(start)
        for n, idx in enumerate((i, j, k)):
            old[perm[n]] += -idx if flips[n] else idx
        out[k, j, i] = labels.array[old[2], old[1], old[0]]
    return Volume.from_array(out, spacing, origin, direction)


def _brute_force(labels: Volume, grid: Grid) -> np.ndarray:
    """Look up every voxel centre of ``grid`` in ``labels`` (nearest index; 0 outside)."""
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(float)
    src = np.rint(labels.grid.lps_to_index(grid.index_to_lps(ijk))).astype(int)
    size = np.array(labels.grid.size_ijk)
    inside = np.all((src >= 0) & (src < size), axis=1)
    out = np.zeros(ijk.shape[0], labels.dtype)
    out[inside] = labels.array[src[inside, 2], src[inside, 1], src[inside, 0]]
    return out.reshape(grid.shape)


def _labels(direction, shape=(5, 6, 7), seed=0) -> Volume:
    arr = np.random.default_rng(seed).integers(0, 4, size=shape).astype(np.uint8)
    return Volume.from_array(arr, (0.7, 1.3, 2.5), (10.5, -20.25, 30.0), direction)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
@pytest.mark.parametrize(("perm", "flips"), [((0, 1, 2), (False, True, False)), ((2, 0, 1), (True, False, True))])
def test_same_lattice_other_axes_is_reoriented_exactly(name, perm, flips):
    truth = _labels(DIRECTIONS[name])
    other = _relabelled(truth, perm, flips)
    assert not other.grid.same_as(truth.grid)
    placed = place_label_map(other, truth)
    assert placed.grid.same_as(truth.grid, tol=1e-9)
    np.testing.assert_array_equal(placed.array, truth.array)
    np.testing.assert_array_equal(placed.array, _brute_force(other, truth.grid))
    assert placed.meta["grid_placement"].startswith("reoriented exactly")


def test_cropped_label_map_is_padded_only_when_partial_and_outside_voxels_refused():
    image = _labels(DIRECTIONS["oblique"], shape=(6, 8, 9))
    crop = Volume.from_array(
        image.array[1:4, 2:6, 3:9].copy(), image.spacing, image.grid.index_to_lps([3, 2, 1]), image.direction
    )
    moved = _relabelled(crop, (1, 0, 2), (True, False, False))
    with pytest.raises(GeometryMismatchError, match="covers other voxels"):
        place_label_map(moved, image)  # a plain label map must cover the image's voxels exactly
    placed = place_label_map(moved, image, partial=True)  # as Slicer's cropped .seg.nrrd
    want = np.zeros_like(image.array)
    want[1:4, 2:6, 3:9] = image.array[1:4, 2:6, 3:9]
    np.testing.assert_array_equal(placed.array, want)
    # a label map reaching beyond the image: refused (nothing dropped silently)
    small = Volume(image.array[:, :, :5], Grid((6, 8, 5), image.spacing, image.origin, image.direction))
    with pytest.raises(GeometryMismatchError, match="outside the image"):
        place_label_map(image, small, partial=True)


def test_other_lattice_refused_unless_resampling_is_asked_for(caplog):
    image = _labels(np.eye(3))
    shifted = Volume.from_array(image.array, image.spacing, np.add(image.origin, (0.3, 0.0, 0.0)))
    with pytest.raises(GeometryMismatchError, match=r"voxel grid does not match.*--resample-labels"):
        place_label_map(shifted, image)
    assert lattice_map(shifted.grid, image.grid) is None
    coarse = Volume.from_array(image.array, (1.4, 1.3, 2.5), image.origin)  # other spacing
    assert lattice_map(coarse.grid, image.grid) is None
    with caplog.at_level("WARNING", logger="lkseg.io.placement"):
        placed = place_label_map(shifted, image, resample=True)
    assert "nearest neighbour" in placed.meta["grid_placement"] and "nearest neighbour" in caplog.text
    np.testing.assert_array_equal(placed.array, _brute_force(shifted, image.grid))


def test_real_totalsegmentator_mask_flipped_by_nibabel(real_ct_dir, tmp_path):
    """A mask re-stored by nibabel with y flipped and x/y swapped meets the CT: read exactly."""
    nib = pytest.importorskip("nibabel")
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    folder = real_ct_dir / "totalsegmentator"
    ct = read_image(folder / "example_ct_sm.nii.gz")
    original = read_label_map(folder / "example_seg.nii.gz", reference=ct)
    img = nib.load(folder / "example_seg.nii.gz")
    for codes in (("R", "P", "S"), ("P", "L", "I")):
        moved = img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(codes)))
        path = tmp_path / f"seg_{''.join(codes)}.nii.gz"
        nib.save(moved, path)
        raw = read_label_map(path)
        assert not raw.grid.same_as(ct.grid)  # the case that used to be refused
        placed = read_label_map(path, reference=ct)
        np.testing.assert_array_equal(placed.array, original.array)
        assert "reoriented exactly" in placed.meta["grid_placement"]
        seg = read_segmentation(path, reference=ct, table={5: "liver"})
        np.testing.assert_array_equal(seg.mask("liver"), original.array == 5)


def test_metrics_cli_accepts_a_flipped_mask_and_states_resampling(tmp_path, capsys):
    from lkseg.cli.main import main

    ref = _labels(np.eye(3), shape=(6, 9, 10), seed=3)
    write_label_map(ref, tmp_path / "ref.nii.gz")
    write_label_map(_relabelled(ref, (0, 1, 2), (False, True, False)), tmp_path / "flipped.nii.gz")
    rc = main(
        ["metrics", str(tmp_path / "flipped.nii.gz"), str(tmp_path / "ref.nii.gz"), "--json", str(tmp_path / "m.json")]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "reoriented exactly" in out
    data = json.loads((tmp_path / "m.json").read_text())
    assert all(m["dice"] == 1.0 for m in data["structures"].values()) and len(data["structures"]) == 3
    shifted = Volume.from_array(ref.array, ref.spacing, np.add(ref.origin, (0.0, 0.5, 0.0)))
    write_label_map(shifted, tmp_path / "shifted.nii.gz")
    assert main(["metrics", str(tmp_path / "shifted.nii.gz"), str(tmp_path / "ref.nii.gz")]) != 0
    assert "--resample-labels" in capsys.readouterr().err
    args = ["metrics", str(tmp_path / "shifted.nii.gz"), str(tmp_path / "ref.nii.gz"), "--resample-labels"]
    args += ["--json", str(tmp_path / "r.json")]
    assert main(args) == 0
    assert "resampled with nearest neighbour" in capsys.readouterr().out
    assert "nearest neighbour" in json.loads((tmp_path / "r.json").read_text())["prediction_grid_placement"]


def test_training_case_with_a_flipped_label_file_is_aligned(tmp_path):
    """Before: same shape, other direction -> 'header differs slightly', the flipped labels were
    laid on the image as stored (misaligned training data). Now they are placed exactly."""
    from lkseg.io import write_image
    from lkseg.train.dataset import Case, LabelMapping
    from lkseg.train.preprocess import prepare_case

    labels = np.zeros((8, 10, 12), np.uint8)
    labels[2:5, 1:4, 3:9] = 1  # asymmetric along j: a flip is visible
    truth = Volume.from_array(labels, (2.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    image = truth.with_array(np.where(labels > 0, 100, -100).astype(np.int16))
    write_image(image, tmp_path / "img.nii.gz")
    write_label_map(truth, tmp_path / "lab.nii.gz")
    write_label_map(_relabelled(truth, (0, 1, 2), (False, True, False)), tmp_path / "flipped.nii.gz")
    mapping, table = LabelMapping.parse("1=liver"), {"liver": 1}
    same = prepare_case(Case("a", tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"), mapping, table, (2.0, 2.0, 3.0))
    flipped = prepare_case(
        Case("b", tmp_path / "img.nii.gz", tmp_path / "flipped.nii.gz"), mapping, table, (2.0, 2.0, 3.0)
    )
    assert same.labels.any()
    np.testing.assert_array_equal(flipped.labels, same.labels)


def test_real_dicom_series_with_a_row_flipped_nifti_mask(real_ct_dir, tmp_path):
    """The issue's case on real data: a GE DICOM series and its liver mask saved by nibabel as a
    NIfTI with the j (row) axis flipped, as dcm2niix-based tools store it (float32 sform)."""
    nib = pytest.importorskip("nibabel")
    folder = real_ct_dir / "dcmqi-liver"
    ct = read_image(folder / "ct-3slice")
    liver = read_label_map(folder / "liver_seg.nrrd", reference=ct)
    assert liver.array.any()
    data = np.transpose(liver.array, (2, 1, 0))[:, ::-1, :]  # nibabel (i, j, k), j flipped
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ct.grid.ijk_to_lps
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, ct.grid.size_ijk[1] - 1
    image = nib.Nifti1Image(np.ascontiguousarray(data), (ras @ flip).astype(np.float32))
    image.set_qform(image.affine, code=1)
    nib.save(image, tmp_path / "liver_flipped.nii.gz")
    raw = read_label_map(tmp_path / "liver_flipped.nii.gz")
    with pytest.raises(GeometryMismatchError):
        ct.grid.require_same(raw.grid)  # what used to refuse it
    placed = read_label_map(tmp_path / "liver_flipped.nii.gz", reference=ct)
    np.testing.assert_array_equal(placed.array, liver.array)


def test_plan_and_its_report_with_a_flipped_label_map(planning_abdomen, tmp_path, capsys):
    """``lkseg plan`` with a label map stored flipped along i beside its CT: same volumes as with
    the label map on the CT's own grid, and the reorientation is printed."""
    from lkseg.cli.main import main
    from lkseg.io import write_image

    labels, table = planning_abdomen
    ct = write_image(labels.with_array(labels.array.astype(np.int16) * 30 - 50, meta={}), tmp_path / "ct.nii.gz")
    spec = ",".join(f"{k}={v}" for k, v in dict(table).items())
    flipped = labels.with_array(labels.array[:, :, ::-1].copy())  # i reversed ...
    flipped = Volume.from_array(
        flipped.array,
        labels.spacing,
        labels.grid.index_to_lps([labels.shape[2] - 1, 0, 0]),
        labels.direction @ np.diag([-1.0, 1.0, 1.0]),
    )  # ... and its geometry with it: the same voxels in space
    volumes = {}
    for name, vol in (("same", labels), ("flipped", flipped)):
        path = write_label_map(vol, tmp_path / f"{name}.nii.gz")
        out = tmp_path / f"out_{name}"
        args = ["plan", str(path), "-o", str(out), "--image", str(ct), "--label-table", spec, "--no-surfaces"]
        assert main(args) == 0
        printed = capsys.readouterr().out
        assert ("reoriented exactly" in printed) == (name == "flipped")
        result = json.loads((out / "report.json").read_text())["result"]
        volumes[name] = (result["volumes"], result["lesions"], result["renal"])
    assert volumes["flipped"] == volumes["same"]
