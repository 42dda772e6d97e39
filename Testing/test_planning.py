"""Volumetry, lesions, tumour burden and future liver remnant on analytic label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import DIRECTIONS
from lkseg.errors import GeometryMismatchError, InputError
from lkseg.labels import PRODUCT_LABELS, LabelTable
from lkseg.planning import (
    LabelIndex,
    Patient,
    PlanOptions,
    Resection,
    ResectionPlane,
    bsa_mosteller,
    compute_flr,
    find_lesions,
    run_plan,
    standardized_tlv,
    structure_volumes,
)
from lkseg.volume import Grid, Volume

LIVER = LabelTable({1: "liver", 2: "liver_tumor"})


def grid_centred(size_ijk, spacing, direction, centre_ras=(0.0, 0.0, 0.0)) -> Grid:
    """A grid whose centre voxel sits at ``centre_ras``."""
    direction = np.asarray(direction, dtype=float)
    centre_idx = (np.asarray(size_ijk, dtype=float) - 1) / 2
    centre_lps = np.asarray(centre_ras, dtype=float) * np.array([-1.0, -1.0, 1.0])
    origin = centre_lps - direction @ np.diag(spacing) @ centre_idx
    return Grid(tuple(size_ijk[::-1]), tuple(spacing), tuple(origin), direction)


def ras_of_voxels(grid: Grid) -> np.ndarray:
    """RAS mm of every voxel centre, shape ZYX + (3,)."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    return grid.index_to_ras(ijk).reshape(*grid.shape, 3)


def sphere_labels(radius, spacing, direction, centre=(5.0, -7.0, 12.0), margin=4.0) -> Volume:
    size = [math.ceil(2 * (radius + margin) / s) for s in spacing]
    grid = grid_centred(size, spacing, direction, centre)
    d = np.linalg.norm(ras_of_voxels(grid) - np.asarray(centre), axis=-1)
    return Volume((d <= radius).astype(np.uint8), grid)


# -- volumetry ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["axial_lps", "oblique"])
def test_sphere_voxel_volume_and_lesion_measures(name):
    r = 15.0
    labels = sphere_labels(r, (0.8, 0.9, 1.5), DIRECTIONS[name])
    table = LabelTable({1: "liver_tumor"})
    vols = structure_volumes(labels, table)
    true_ml = 4 / 3 * math.pi * r**3 / 1000
    assert vols["liver_tumor"].volume_ml == pytest.approx(true_ml, rel=0.01)
    (lesion,) = find_lesions(LabelIndex.build(labels, table), "liver_tumor")
    assert np.allclose(lesion.centroid_ras, (5.0, -7.0, 12.0), atol=0.2)
    assert lesion.axial_long_mm == pytest.approx(2 * r, abs=1.5)
    assert lesion.axial_short_mm == pytest.approx(2 * r, abs=1.5)
    assert lesion.max_diameter_mm == pytest.approx(2 * r, abs=1.5)
    assert lesion.organ is None and "outside its organ" in lesion.notes["organ"]  # no liver segment


@pytest.mark.parametrize("radius_px", [3.0, 5.5, 10.0, 20.3])
def test_axial_diameter_of_a_disc_within_one_voxel(radius_px):
    """The documented accuracy of the outline diameters: a digitised disc of analytic diameter
    2r (pixel centres within r of the centre) measures between 2r and 2r + 1 pixel."""
    spacing = 0.7
    n = int(2 * radius_px + 6)
    arr = np.zeros((3, n, n), np.uint8)
    c = (n - 1) / 2
    y, x = np.mgrid[:n, :n]
    arr[1] = (x - c) ** 2 + (y - c) ** 2 <= radius_px**2
    labels = Volume.from_array(arr, spacing=(spacing, spacing, 5.0))
    (lesion,) = find_lesions(LabelIndex.build(labels, LabelTable({1: "liver_tumor"})), "liver_tumor")
    truth = 2 * radius_px * spacing
    assert truth <= lesion.axial_long_mm <= truth + spacing
    assert truth <= lesion.axial_short_mm <= truth + spacing


def test_volumes_absent_structures_and_border():
    arr = np.zeros((10, 12, 14), np.uint8)
    arr[0:3, 2:5, 2:5] = 1  # touches the first slice
    vols = structure_volumes(Volume.from_array(arr, spacing=(2.0, 2.0, 3.0)), PRODUCT_LABELS)
    assert vols["liver"].voxels == 27 and vols["liver"].volume_ml == pytest.approx(27 * 12 / 1000)
    assert vols["liver"].touches_border and "truncated" in vols["liver"].notes["touches_border"]
    assert vols["spleen"].volume_ml == 0 and "absent" in vols["spleen"].notes["volume_ml"]


def test_empty_label_map_is_an_error():
    with pytest.raises(InputError, match="empty"):
        run_plan(Volume.from_array(np.zeros((8, 8, 8), np.uint8)), PRODUCT_LABELS)
    # values that are not in the table do not count either
    with pytest.raises(InputError, match="empty"):
        run_plan(Volume.from_array(np.full((8, 8, 8), 9, np.uint8)), PRODUCT_LABELS)


def test_grid_mismatch_is_an_error():
    labels = Volume.from_array(np.ones((8, 8, 8), np.uint8))
    ct = Volume.from_array(np.zeros((8, 8, 8), np.int16), spacing=(1.0, 1.0, 2.0))
    with pytest.raises(GeometryMismatchError, match="spacing"):
        run_plan(labels, PRODUCT_LABELS, PlanOptions(surfaces=False), image=ct)


# -- lesions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["axial_lps", "oblique"])
def test_an_elongated_lesion_is_flagged_and_round_ones_are_not(name):
    """Analytic shapes in a liver on an anisotropic grid: a sphere (it fills the sphere of its largest
    diameter) and a 3:1 ellipsoid (1/9 of it) are masses; a tube 60 mm long and 8 mm wide (2.6 %) is
    flagged as elongated, in the lesion's notes and in the plan's warnings."""
    spacing = (0.8, 0.9, 1.5)
    grid = grid_centred([round(180 / s) for s in spacing], spacing, DIRECTIONS[name])
    ras = ras_of_voxels(grid)
    x, y, z = ras[..., 0], ras[..., 1], ras[..., 2]
    arr = (np.abs(x) <= 85) & (np.abs(y) <= 85) & (np.abs(z) <= 85)
    arr = arr.astype(np.uint8)  # the liver: a 170 mm box
    arr[(x + 40) ** 2 + (y + 40) ** 2 + (z + 40) ** 2 <= 10**2] = 2  # sphere, 4.2 mL
    arr[((x - 40) / 15) ** 2 + ((y + 40) / 5) ** 2 + ((z + 40) / 5) ** 2 <= 1] = 2  # 3:1 ellipsoid, 1.6 mL
    arr[(np.abs(x) <= 30) & ((y - 40) ** 2 + (z - 40) ** 2 <= 4**2)] = 2  # tube 60 x 8 mm, 3.0 mL
    labels = Volume(arr, grid)
    lesions = find_lesions(LabelIndex.build(labels, LIVER), "liver_tumor")
    assert len(lesions) == 3
    flagged = [les for les in lesions if "shape" in les.notes]
    assert len(flagged) == 1 and flagged[0].centroid_ras[1] == pytest.approx(40.0, abs=1.0)
    assert flagged[0].max_diameter_mm == pytest.approx(60.5, abs=2.0) and "elongated" in flagged[0].notes["shape"]
    plan = run_plan(labels, LIVER, PlanOptions(surfaces=False))
    assert [w for w in plan.warnings if "elongated" in w] == [f"{flagged[0].label}: {flagged[0].notes['shape']}"]


@pytest.fixture(scope="module")
def liver_with_lesions():
    """1 mm grid; liver = box 10..89 (i, j, k); tumours at known depths; one outside the liver."""
    arr = np.zeros((100, 100, 130), np.uint8)
    arr[10:90, 10:90, 10:90] = 1
    arr[45:55, 45:55, 45:55] = 2  # deep cube: 35 voxels of liver around it on every side
    arr[20:26, 20:26, 14:20] = 2  # 4 voxels from the i = 10 face
    arr[60:64, 60:64, 10:14] = 2  # reaches the capsule (i = 10 is the face)
    arr[40:44, 40:44, 110:114] = 2  # outside the liver (i >= 90)
    return Volume.from_array(arr), LabelTable({1: "liver", 2: "liver_tumor"})


def test_lesions_count_size_depth_and_outside(liver_with_lesions):
    labels, table = liver_with_lesions
    lesions = find_lesions(LabelIndex.build(labels, table), "liver_tumor")
    assert [les.voxels for les in lesions] == [1000, 216, 64, 64]
    assert [les.index for les in lesions] == [1, 2, 3, 4]
    deep, near = lesions[0], lesions[1]
    assert deep.organ == "liver" and deep.distance_to_surface_mm == pytest.approx(35.0, abs=1.0)
    assert near.distance_to_surface_mm == pytest.approx(4.0, abs=1.0)
    at_capsule = next(les for les in lesions[2:] if les.organ == "liver")
    assert at_capsule.distance_to_surface_mm == 0.0
    outside = next(les for les in lesions[2:] if les.organ is None)
    assert outside.distance_to_surface_mm is None and "outside its organ" in outside.notes["organ"]
    # diameters are measured on the outline through the pixel-edge midpoints (as a marching-squares
    # contour), which cuts a voxel-sharp corner by half a voxel on each side: a 10 x 10 square
    # gives sqrt(10^2 + 9^2) = 13.45 mm, not its 14.14 mm corner-to-corner diagonal (documented
    # in boundary_face_points); 3D sqrt(10^2 + 9^2 + 9^2)
    assert deep.axial_long_mm == pytest.approx(math.sqrt(181), abs=0.01)
    assert deep.axial_short_mm == pytest.approx(math.sqrt(181), abs=0.01)
    assert deep.max_diameter_mm == pytest.approx(math.sqrt(262), abs=0.01)


def test_burden_and_outside_tumour_in_plan(liver_with_lesions):
    labels, table = liver_with_lesions
    result = run_plan(labels, table, PlanOptions(surfaces=False))
    (burden,) = result.burden
    assert burden.count == 3 and burden.tumour_volume_ml == pytest.approx((1000 + 216 + 64) / 1000)
    liver_ml = (80**3 - 1000 - 216 - 64) / 1000
    assert burden.organ_volume_ml == pytest.approx(liver_ml + 1.280)
    assert burden.percent_of_organ == pytest.approx(100 * 1.280 / (liver_ml + 1.280))
    assert any("outside its organ" in w for w in result.warnings)


# -- body size ---------------------------------------------------------------------------------
def test_bsa_stlv_by_hand():
    # 180 cm, 80 kg: BSA = sqrt(180 x 80 / 3600) = sqrt(4) = 2.0 m^2; sTLV = -794.41 + 1267.28 x 2 = 1740.15 mL
    assert bsa_mosteller(180, 80) == pytest.approx(2.0)
    assert standardized_tlv(2.0) == pytest.approx(1740.15)
    # 165 cm, 72 kg: BSA = sqrt(3.3) = 1.816590 m^2; sTLV = -794.41 + 1267.28 x 1.816590 = 1507.71 mL
    assert bsa_mosteller(165, 72) == pytest.approx(1.816590, abs=1e-6)
    assert standardized_tlv(bsa_mosteller(165, 72)) == pytest.approx(1507.71, abs=0.01)


@pytest.mark.parametrize(
    ("height", "weight", "what"),
    [(30, 70, "height"), (175, 900, "weight"), (float("nan"), 70, "height"), ("tall", 70, "height")],
)
def test_implausible_body_size(height, weight, what):
    with pytest.raises(InputError, match=what):
        bsa_mosteller(height, weight)


def test_bad_plane_and_quality_inputs():
    with pytest.raises(InputError, match="zero length"):
        ResectionPlane((0, 0, 0), (0, 0, 0))
    with pytest.raises(InputError, match="side"):
        ResectionPlane((0, 0, 0), (1, 0, 0), "left")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="liver quality"):
        Patient(170, 70, "fatty")
    with pytest.raises(InputError, match="exactly one"):
        Resection(planes=(ResectionPlane((0, 0, 0), (1, 0, 0)),), label="resection")


# -- FLR ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cube():
    """Liver = 40^3 voxels (i, j, k = 10..49) at 2.5 mm (1000 mL), a tumour of 8^3 voxels in the
    low-i corner."""
    arr = np.zeros((60, 60, 60), np.uint8)
    arr[10:50, 10:50, 10:50] = 1
    arr[12:20, 12:20, 12:20] = 2
    labels = Volume.from_array(arr, spacing=(2.5, 2.5, 2.5), origin=(3.0, -4.0, 5.0))
    return LabelIndex.build(labels, LIVER)


def _axis_plane(index: LabelIndex, i_cut: float, side: str) -> ResectionPlane:
    g = index.labels.grid
    p = g.index_to_ras([i_cut, 0, 0])
    n = g.index_to_ras([1, 0, 0]) - g.index_to_ras([0, 0, 0])
    return ResectionPlane(tuple(p), tuple(n), side)


def test_flr_cube_cut_through_known_fraction(cube):
    # resect i < 22 (12 of 40 columns, holding the tumour): FLR = 28/40 of the cube
    flr = compute_flr(cube, Resection(planes=(_axis_plane(cube, 21.5, "negative"),)), Patient(180, 80))
    vox = 2.5**3 / 1000
    assert flr.tlv_ml == pytest.approx(64000 * vox) == pytest.approx(1000.0)
    assert flr.tumour_ml == pytest.approx(512 * vox)
    assert flr.flr_ml == pytest.approx(28 * 1600 * vox)  # 700 mL
    assert flr.resected_ml == pytest.approx(12 * 1600 * vox)
    assert flr.tumour_in_remnant_ml == 0
    # measured FLR% = FLR / (TLV - tumour) = 700 / (1000 - 8) = 70.56%
    assert flr.flr_percent == pytest.approx(100 * 700 / 992)
    # sFLR = 700 / 1740.15 = 40.23% (BSA 2.0) -> sufficient even for cirrhosis (40%)
    assert flr.sflr_percent == pytest.approx(100 * 700 / 1740.15)
    assert flr.verdict == "sufficient"
    assert flr.margin_percent_points == pytest.approx(flr.sflr_percent - 20.0)
    other = compute_flr(cube, Resection(planes=(_axis_plane(cube, 21.5, "positive"),)), Patient(180, 80, "cirrhosis"))
    assert other.flr_ml == pytest.approx(12 * 1600 * vox - 512 * vox)  # the tumour stays in this remnant
    assert other.tumour_in_remnant_ml == pytest.approx(512 * vox) and other.warnings
    # 292 mL / 1740.15 = 16.8% < 40% (cirrhosis)
    assert other.threshold_percent == 40.0 and other.verdict == "insufficient"


def test_flr_denominator_subtracts_tumours_and_cysts():
    """FLR% = FLR / (TLV - tumours - cysts); numbers by hand on a 1 mm cube (1 voxel = 1 uL)."""
    arr = np.zeros((40, 40, 40), np.uint8)
    arr[5:35, 5:35, 5:35] = 1  # 27000 voxels of liver region
    arr[8:14, 8:14, 8:14] = 2  # tumour: 216 voxels, in the resected half (i < 20)
    arr[8:18, 8:18, 25:35] = 3  # cyst: 1000 voxels, in the remnant (i >= 20)
    index = LabelIndex.build(Volume.from_array(arr), LabelTable({1: "liver", 2: "liver_tumor", 3: "liver_cyst"}))
    flr = compute_flr(index, Resection(planes=(_axis_plane(index, 19.5, "negative"),)))
    assert flr.tlv_ml == pytest.approx(27.0)
    assert flr.tumour_ml == pytest.approx(0.216) and flr.cyst_ml == pytest.approx(1.0)
    assert flr.functional_liver_ml == pytest.approx(27.0 - 0.216 - 1.0)
    remnant_parenchyma = 15 * 30 * 30 - 1000  # i = 20..34, cyst excluded
    assert flr.flr_ml == pytest.approx(remnant_parenchyma / 1000)
    assert flr.flr_percent == pytest.approx(100 * remnant_parenchyma / (27000 - 216 - 1000))
    # without a resection the whole functional liver is the remnant: 100% (a plane beyond the liver
    # resects nothing and is refused, so check with a plane resecting only the tumour's slab)
    half = compute_flr(index, Resection(planes=(_axis_plane(index, 6.5, "negative"),)))
    assert half.flr_percent == pytest.approx(100 * (27000 - 216 - 1000 - 2 * 900) / (27000 - 216 - 1000))


@pytest.mark.parametrize(("combine", "fraction"), [("intersection", 0.25), ("union", 0.75)])
def test_flr_two_planes_wedge(cube, combine, fraction):
    g = cube.labels.grid
    centre = g.index_to_ras([29.5, 29.5, 29.5])
    ni = g.index_to_ras([1, 0, 0]) - g.index_to_ras([0, 0, 0])
    nj = g.index_to_ras([0, 1, 0]) - g.index_to_ras([0, 0, 0])
    planes = (ResectionPlane(tuple(centre), tuple(ni)), ResectionPlane(tuple(centre), tuple(nj)))
    flr = compute_flr(cube, Resection(planes=planes, combine=combine))
    assert flr.resected_ml / flr.tlv_ml == pytest.approx(fraction, abs=1e-9)


def test_flr_oblique_plane_on_any_grid(direction):
    """A physical liver cube cut by a fixed RAS plane gives the same fraction on every grid."""
    grid = grid_centred((44, 44, 44), (2.0, 2.0, 2.0), direction, (10.0, 20.0, -5.0))
    ras = ras_of_voxels(grid) - np.array([10.0, 20.0, -5.0])
    liver = np.all(np.abs(ras) <= 40.0, axis=-1)  # 80 mm cube, axis-aligned in RAS
    labels = Volume(liver.astype(np.uint8), grid)
    n = np.array([1.0, 1.0, 0.0]) / math.sqrt(2)
    plane = ResectionPlane((10.0 + 0.3, 20.0 + 0.3, -5.0), tuple(n))
    flr = compute_flr(LabelIndex.build(labels, LIVER), Resection(planes=(plane,)))
    # the plane is x' + y' = 0.6 mm about the centre; continuous share of the 80 mm square cross
    # section on its positive side: (80^2 / 2 - 0.6 x 80) / 80^2 = 0.4925. Voxel centres on the
    # plane stay in the remnant, so grids with voxels on that diagonal give up to half a column less.
    assert flr.resected_ml / flr.tlv_ml == pytest.approx(0.4925, abs=0.006)


def test_flr_errors_and_not_available(cube):
    g = cube.labels.grid
    far = g.index_to_ras([200, 0, 0])
    n = g.index_to_ras([1, 0, 0]) - g.index_to_ras([0, 0, 0])
    with pytest.raises(InputError, match="does not cut the liver"):
        compute_flr(cube, Resection(planes=(ResectionPlane(tuple(far), tuple(n), "positive"),)))
    with pytest.raises(InputError, match="removes the whole liver"):
        compute_flr(cube, Resection(planes=(ResectionPlane(tuple(far), tuple(n), "negative"),)))
    flr = compute_flr(cube, Resection(planes=(_axis_plane(cube, 29.5, "positive"),)), Patient(175, None))
    assert flr.sflr_percent is None and flr.bsa_m2 is None and flr.verdict == "not available"
    assert "weight unknown" in flr.notes["sflr_percent"]
    with pytest.raises(InputError, match="height"):
        compute_flr(cube, Resection(planes=(_axis_plane(cube, 29.5, "positive"),)), Patient(30, 70))
    with pytest.raises(InputError, match="no liver"):
        compute_flr(LabelIndex.build(cube.labels, LabelTable({2: "liver_tumor"})), Resection(label="resection"))


def test_flr_resection_mask_and_label(cube):
    arr = np.zeros(cube.labels.shape, np.uint8)
    arr[:, :, :30] = 1  # i < 30: half of the cube
    mask = cube.labels.with_array(arr)
    by_mask = compute_flr(cube, Resection(mask=mask))
    assert by_mask.resected_ml / by_mask.tlv_ml == pytest.approx(0.5)
    with pytest.raises(GeometryMismatchError):
        compute_flr(cube, Resection(mask=Volume.from_array(arr)))  # spacing 1 mm, not 2.5 mm
    # the same region painted as a "resection" label into the flat label map
    painted = np.asarray(cube.labels.array).copy()
    painted[(arr == 1) & (painted == 1)] = 3
    index = LabelIndex.build(
        cube.labels.with_array(painted), LabelTable({1: "liver", 2: "liver_tumor", 3: "resection"})
    )
    by_label = compute_flr(index, Resection(label="resection"))
    assert by_label.tlv_ml == pytest.approx(by_mask.tlv_ml)
    assert by_label.flr_ml == pytest.approx(by_mask.flr_ml)
    with pytest.raises(InputError, match="no resection label"):
        compute_flr(cube, Resection(label="resection"))


def test_run_plan_on_abdomen(planning_abdomen):
    labels, table = planning_abdomen
    plane = ResectionPlane((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), "positive")  # resect RAS x > 0 (patient right)
    result = run_plan(labels, table, PlanOptions(resection=Resection(planes=(plane,)), patient=Patient(175, 70)))
    assert result.flr is not None and result.flr.sflr_percent is not None
    assert {les.structure for les in result.lesions} == {"liver_tumor", "kidney_tumor"}
    kidney_tumour = next(les for les in result.lesions if les.structure == "kidney_tumor")
    assert kidney_tumour.organ == "kidney_right"  # laterality: RAS x > 0
    assert kidney_tumour.centroid_ras[0] > 0
    assert len(result.renal) == 1 and result.renal[0].total is not None
    for name in ("liver", "kidney_right", "kidney_left", "spleen"):
        v = result.volumes[name]
        assert abs(v.mesh_difference_percent) < 2.0, name  # surface volume agrees within 2%
    d = result.to_dict()
    assert d["total_liver_volume_ml"] == pytest.approx(
        result.volumes["liver"].volume_ml + result.volumes["liver_tumor"].volume_ml
    )


def test_real_ct_volumes_laterality_and_mesh_placement(real_ct_dir):
    """TotalSegmentator's example (stored RAS, 3 mm): volumes as documented, a tumour put on the
    right kidney is assigned to it, meshes sit where the voxels are."""
    from lkseg.io import read_image, read_label_map

    folder = real_ct_dir / "totalsegmentator"
    ct = read_image(folder / "example_ct_sm.nii.gz")
    labels = read_label_map(folder / "example_seg.nii.gz", reference=ct)
    table = LabelTable({1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 200: "kidney_tumor"})
    arr = np.where(np.isin(labels.array, [1, 2, 3, 5]), labels.array, 0).astype(np.uint8)
    # a 4-voxel-radius tumour on the lateral edge of the right kidney (largest RAS x)
    ras = ras_of_voxels(labels.grid)
    right = arr == 2
    lateral = np.unravel_index(np.argmax(np.where(right, ras[..., 0], -np.inf)), arr.shape)
    tumour = np.linalg.norm(ras - ras[lateral], axis=-1) <= 12.0
    arr[tumour & (arr == 0) | tumour & right] = 200
    result = run_plan(labels.with_array(arr), table, PlanOptions(), image=ct)
    vols = result.volumes
    assert vols["liver"].volume_ml == pytest.approx(1043, rel=0.01)
    assert abs(vols["liver"].mesh_difference_percent) < 2.0
    (les,) = result.lesions
    assert les.organ == "kidney_right" and result.renal[0].kidney == "kidney_right"
    left_x = ras[arr == 3][:, 0].mean()
    assert les.centroid_ras[0] > left_x + 100  # patient right = larger RAS x
    liver_mesh = next(m for m in result.surfaces if m.name == "liver")
    assert np.allclose(liver_mesh.points.mean(axis=0), ras[arr == 5].mean(axis=0), atol=15.0)
    # the surface lies within half a voxel (1.5 mm) + smoothing of the outermost voxel centres
    assert np.all(np.abs(liver_mesh.points.min(axis=0) - ras[arr == 5].min(axis=0)) < 3.0)
    assert np.all(np.abs(liver_mesh.points.max(axis=0) - ras[arr == 5].max(axis=0)) < 3.0)
