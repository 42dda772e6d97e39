"""Body levels (hip joints, lungs) and the position check built on them.

Truth is analytic (a drawn torso with two femoral heads, ribs, arms and lungs at known heights) and,
on the real scan, TotalSegmentator's bone masks of example_ct (femurs and hip bones), which
``lkseg.auto.levels`` never reads.
"""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.auto.levels import body_levels
from lkseg.labels import LabelTable
from lkseg.volume import Grid, Volume

TABLE = LabelTable({1: "liver", 2: "liver_tumor", 3: "kidney_right", 4: "kidney_left", 5: "kidney_tumor", 7: "spleen"})
HIP_TOP_MM = 60.0  # femoral heads from z = 0 to 60 mm
CHEST_FROM_MM = 300.0  # lungs above this height


def _torso(spacing=(2.0, 2.0, 3.0), height_mm=390.0, arms=False, scapulae=False, one_hip=False, bright=None):
    """A canonical LPS torso (ZYX array; i -> patient left, j -> posterior, k -> superior), origin
    z = 0: an ellipse 320 x 220 mm, the spine behind its centre, femoral heads (discs of radius 25 mm,
    85 mm either side of the midline) up to ``HIP_TOP_MM``, rib sections (1.3 cm²) at the sides from
    200 mm up, lungs filling the chest above ``CHEST_FROM_MM``. ``bright``: two round, symmetric
    structures brighter than bone's threshold that are not hips - ``"kidneys"`` (arterial-phase
    kidneys, behind the body's middle, 60 mm tall) or ``"colons"`` (both colons full of oral
    contrast, in front, 150 mm tall)."""
    si, sj, sk = spacing
    ni, nj, nk = round(400 / si), round(300 / sj), round(height_mm / sk)
    x = (np.arange(ni) - (ni - 1) / 2) * si  # mm toward the patient's left
    y = (np.arange(nj) - (nj - 1) / 2) * sj  # mm toward posterior
    z = np.arange(nk) * sk
    yy, xx = np.meshgrid(y, x, indexing="ij")
    image = np.full((nk, nj, ni), -1000, np.int16)
    body = (xx / 160) ** 2 + (yy / 110) ** 2 <= 1
    image[:, body] = 40
    image[:, (xx**2 + (yy - 60) ** 2) <= 18**2] = 500  # spine
    for k, zk in enumerate(z):
        if zk <= HIP_TOP_MM:
            for side in (-1, 1) if not one_hip else (1,):
                image[k, (xx - side * 85) ** 2 + yy**2 <= 25**2] = 600
        if zk >= 200:
            for side in (-1, 1):  # a rib section at the body wall: 1.3 cm²
                image[k, ((xx - side * 150) / 6.5) ** 2 + ((yy - 20) / 6.5) ** 2 <= 1] = 500
        if zk >= CHEST_FROM_MM:
            for side in (-1, 1):
                image[k, ((xx - side * 75) / 65) ** 2 + ((yy + 5) / 85) ** 2 <= 1] = -850
        if arms:  # upper arms touching the body, humerus 15 cm² at 150 mm from the midline
            for side in (-1, 1):
                image[k, ((xx - side * 175) / 45) ** 2 + (yy / 45) ** 2 <= 1] = 40
                image[k, (xx - side * 178) ** 2 + yy**2 <= 22**2] = 600
        if bright == "kidneys" and 170 <= zk <= 230:
            for side in (-1, 1):
                image[k, (xx - side * 75) ** 2 + (yy - 45) ** 2 <= 25**2] = 280
        if bright == "colons" and 150 <= zk <= 300:
            for side in (-1, 1):
                image[k, (xx - side * 90) ** 2 + (yy + 20) ** 2 <= 25**2] = 450
        if scapulae and zk >= 250:  # shoulder blades: large, symmetric, in the back third
            for side in (-1, 1):
                image[k, ((xx - side * 90) / 40) ** 2 + ((yy - 85) / 8) ** 2 <= 1] = 600
    return image, Grid(image.shape, spacing, (x[0], y[0], 0.0))


def _stored(image: np.ndarray, grid: Grid, order: str) -> Volume:
    """The same voxels stored in another order (exact permutation/flip), via the project's reorienter."""
    from lkseg.orientation import reorient

    vol, _ = reorient(Volume(image, grid), order)
    return vol


@pytest.mark.parametrize("order", ["LPS", "RAS", "PIR", "SAL"])
@pytest.mark.parametrize("spacing", [(2.0, 2.0, 3.0), (0.8, 0.8, 5.0)], ids=["2x2x3", "0.8x0.8x5"])
def test_hip_top_and_chest_are_found_at_their_drawn_heights_in_any_storage_order(order, spacing):
    image, grid = _torso(spacing)
    vol = _stored(image, grid, order)
    levels = body_levels(vol.array, vol.grid)
    assert levels.hip_top_z is not None
    assert abs(levels.hip_top_z - HIP_TOP_MM) <= spacing[2], levels.hip_top_z
    assert levels.air_fraction_at(CHEST_FROM_MM + 30) > 0.4
    assert levels.air_fraction_at(150.0) < 0.02
    assert not levels.hip[levels.slice_z > HIP_TOP_MM + spacing[2]].any()  # ribs are not hips


@pytest.mark.parametrize("variant", ["arms", "scapulae", "one_hip", "kidneys", "colons"])
def test_arms_shoulder_blades_bright_kidneys_and_colons_are_not_hip_joints(variant):
    image, grid = _torso(
        arms=variant == "arms",
        scapulae=variant == "scapulae",
        one_hip=variant == "one_hip",
        bright=variant if variant in ("kidneys", "colons") else None,
    )
    levels = body_levels(image, grid)
    if variant == "one_hip":
        assert levels.hip_top_z is None
    else:  # the femoral heads are still found and are the hip level
        assert levels.hip_top_z is not None and abs(levels.hip_top_z - HIP_TOP_MM) <= 3.0
    above = levels.hip[levels.slice_z > HIP_TOP_MM + 3.0]
    if variant == "colons":  # each slice looks like a hip pair; the 150 mm run is too tall for one
        assert levels.hip[(levels.slice_z >= 153.0) & (levels.slice_z <= 297.0)].all()
    else:
        assert not above.any()


@pytest.mark.parametrize("order", ["LPS", "RAS"])
def test_organs_centred_at_the_hips_or_in_the_chest_are_refused_others_kept(order):
    from lkseg.auto.plausibility import refuse_implausible_positions

    image, grid = _torso()
    labels = np.zeros(image.shape, np.uint8)
    k_of = lambda mm: round(mm / 3.0)  # noqa: E731
    nj, ni = image.shape[1:]

    def blob(value, z_mm, x_mm, r_mm=24):  # x: mm toward the patient's left in the LPS drawing
        i0, j0, k0 = round((ni - 1) / 2 + x_mm / 2), round((nj - 1) / 2), k_of(z_mm)
        r, rk = round(r_mm / 2), round(r_mm / 3)
        labels[k0 - rk : k0 + rk, j0 - r : j0 + r, i0 - r : i0 + r] = value

    blob(1, 230, -70, r_mm=45)  # liver, centre 170 mm above the hips: kept
    blob(3, 200, -60)  # right kidney: kept
    blob(4, 200, 60)  # left kidney: kept
    blob(7, 250, 90)  # spleen: kept
    blob(4, 120, 60)  # "kidney" centred 60 mm above the hip joints: refused
    blob(7, 30, 60)  # "spleen" among the femoral heads: refused
    blob(1, 345, -60, r_mm=24)  # "liver" in the chest: refused
    vol = _stored(image, grid, order)
    lab = _stored(labels, grid, order)
    out = lab.array.copy()
    notes = refuse_implausible_positions(out, vol.array, vol.grid, TABLE)
    kept = Volume(out, vol.grid)
    from lkseg.orientation import reorient

    back, _ = reorient(kept, "LPS")
    b = back.array
    assert b[k_of(230), 75, round((ni - 1) / 2 - 35)] == 1
    assert b[k_of(200), 75, round((ni - 1) / 2 - 30)] == 3 and b[k_of(200), 75, round((ni - 1) / 2 + 30)] == 4
    assert b[k_of(250), 75, round((ni - 1) / 2 + 45)] == 7
    assert b[k_of(120), 75, round((ni - 1) / 2 + 30)] == 0 and b[k_of(30), 75, round((ni - 1) / 2 + 30)] == 0
    assert b[k_of(345), 75, round((ni - 1) / 2 - 30)] == 0
    hips = [n for n in notes if "hip joints" in n]
    chest = [n for n in notes if "chest" in n]
    assert len(hips) == 2 and len(chest) == 1, notes


def test_real_hip_level_lies_between_the_femoral_heads_and_the_iliac_crest(real_ct_dir):
    """On example_ct the hip level's top lies between the top of the femurs and the top of the hip
    bones in TotalSegmentator's masks (labels 75/76 femur, 77/78 hip), and the real liver, kidneys
    and spleen are centred far above it and below the lungs: the check refuses none of them."""
    from lkseg.io import read_image

    folder = real_ct_dir / "totalsegmentator"
    ct = read_image(folder / "example_ct.nii.gz")
    seg = read_image(folder / "example_seg_fast_force_split.nii.gz").array
    levels = body_levels(ct.array, ct.grid)

    def z_of(mask, how):
        kji = np.argwhere(mask)
        return how(ct.grid.index_to_ras(kji[:, ::-1].astype(float))[:, 2])

    femur_top = z_of(np.isin(seg, [75, 76]), np.max)
    hip_bone_top = z_of(np.isin(seg, [77, 78]), np.max)
    slack = ct.grid.spacing[2]  # one slice
    assert femur_top - slack <= levels.hip_top_z <= hip_bone_top, (femur_top, levels.hip_top_z, hip_bone_top)
    for value in (1, 2, 3, 5):  # spleen, kidneys, liver
        centre = z_of(seg == value, np.mean)
        assert centre - levels.hip_top_z > 180.0, (value, centre, levels.hip_top_z)
        assert levels.air_fraction_at(centre) < 0.1


def test_the_demo_model_reports_no_organ_on_a_real_pelvis_only_scan(real_ct_dir, tmp_path):
    """Slices 0-50 of example_ct (bladder, hip joints; none of the four organs in TotalSegmentator's
    map) gave a liver, two kidneys and a spleen before the hip-level check: now an empty result,
    each refusal reported."""
    import SimpleITK as sitk

    from lkseg.auto import AutoSegmenter
    from lkseg.io import read_image
    from lkseg.models import DEFAULT_MODEL_ID, builtin_models_dir

    if not (builtin_models_dir() / DEFAULT_MODEL_ID).is_dir():
        pytest.skip("demo model not present")
    folder = real_ct_dir / "totalsegmentator"
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_seg_fast_force_split.nii.gz")))
    assert not np.isin(ref[0:51], [1, 2, 3, 5]).any()  # the truth: none of the four organs
    path = tmp_path / "pelvis.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(folder / "example_ct.nii.gz"))[:, :, 0:51], str(path))
    result = AutoSegmenter(DEFAULT_MODEL_ID, device="cpu", backend="torch").predict(read_image(path))
    assert result.empty, result.volumes_ml
    assert sum("hip joints" in n for n in result.notes) >= 3, result.notes


def test_the_demo_model_draws_no_organ_in_the_back_muscles_of_a_real_slab(real_ct_dir, tmp_path):
    """Slices 62-81 of example_ct lie below the spleen (TotalSegmentator: no spleen there). The
    demo U-Net had called the left erector spinae a 19 mL spleen and the right one a 73 mL right
    kidney; the position check now refuses both (centres 6 and 1 mm in front of the back of the
    spine): no spleen, and no kidney voxel in the back muscles (TotalSegmentator 86/87)."""
    import SimpleITK as sitk

    from lkseg.auto import AutoSegmenter
    from lkseg.io import read_image
    from lkseg.models import DEFAULT_MODEL_ID, builtin_models_dir

    if not (builtin_models_dir() / DEFAULT_MODEL_ID).is_dir():
        pytest.skip("demo model not present")
    folder = real_ct_dir / "totalsegmentator"
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_seg_fast_force_split.nii.gz")))[62:82]
    assert not (ref == 1).any() and (ref == 2).sum() > 1000  # the truth: no spleen, a right kidney
    path = tmp_path / "slab.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(folder / "example_ct.nii.gz"))[:, :, 62:82], str(path))
    result = AutoSegmenter(DEFAULT_MODEL_ID, device="cpu", backend="torch").predict(read_image(path))
    labels, table = result.labels.array, result.label_table
    assert not (labels == table.value_of("spleen")).any(), result.notes
    kidneys = np.isin(labels, [table.value_of("kidney_right"), table.value_of("kidney_left")])
    assert kidneys.any() and (kidneys & np.isin(ref, [86, 87])).sum() < 0.05 * kidneys.sum(), result.notes
