"""Tests of the synthetic CT phantom: reproducibility, true volumes, anatomy, HU, lesions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lkseg.errors import CancelledError, InputError
from lkseg.labels import PRODUCT_LABELS
from lkseg.phantom import (
    DETAILED,
    PRODUCT_FROM_DETAILED,
    PhantomConfig,
    direction_from_orientation,
    generate_phantom,
)
from lkseg.progress import CancelToken

#: A small, fast grid covering the default field of view (410 x 410 x 250 mm).
COARSE = {"size_ijk": (128, 128, 84), "spacing": (3.2, 3.2, 3.0)}


@pytest.fixture(scope="session")
def clean():
    """Default grid, no noise and no blur: HU values exactly as painted."""
    return generate_phantom(PhantomConfig(seed=0, noise_sd=0.0, blur_mm=0.0))


@pytest.fixture(scope="session")
def noisy():
    """The same phantom with the default noise and blur."""
    return generate_phantom(PhantomConfig(seed=0))


@pytest.fixture(scope="session")
def seeds():
    """Several seeds on the coarse grid (volumes, laterality, lesion sizes)."""
    return [generate_phantom(PhantomConfig(seed=s, noise_sd=0.0, blur_mm=0.0, **COARSE)) for s in range(6)]


def _centroid_ras(phantom, name: str) -> np.ndarray:
    idx = np.argwhere(phantom.mask(name))  # (k, j, i)
    return phantom.grid.index_to_ras(idx.mean(axis=0)[::-1])


# -- reproducibility --------------------------------------------------------------------------
def test_same_seed_gives_identical_arrays_and_other_seed_differs():
    cfg = PhantomConfig(seed=11, size_ijk=(72, 72, 40), spacing=(5.5, 5.5, 6.0))
    a, b = generate_phantom(cfg), generate_phantom(cfg)
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.labels.array, b.labels.array)
    assert a.lesions == b.lesions and a.volumes_ml == b.volumes_ml
    c = generate_phantom(PhantomConfig(seed=12, size_ijk=(72, 72, 40), spacing=(5.5, 5.5, 6.0)))
    assert not np.array_equal(a.labels.array, c.labels.array)
    assert a.volumes_ml["liver"] != c.volumes_ml["liver"]


def test_image_and_labels_share_the_configured_grid(noisy):
    grid = PhantomConfig().grid()
    assert noisy.image.grid.same_as(grid) and noisy.labels.grid.same_as(grid)
    assert noisy.image.dtype == np.int16 and noisy.labels.dtype == np.uint8
    assert noisy.image.meta["height_cm"] == noisy.meta["height_cm"]
    # the grid is centred on the body centre (LPS origin) by default
    centre = grid.index_to_lps((np.array(grid.size_ijk) - 1) / 2.0)
    assert np.allclose(centre, 0.0, atol=1e-6)


# -- volumes ----------------------------------------------------------------------------------
def test_volumes_are_voxel_counts_times_voxel_volume(clean):
    counts = np.bincount(clean.labels.array.ravel(), minlength=256)
    vox = clean.grid.voxel_volume_ml
    for name, value in DETAILED.items():
        assert clean.volumes_ml[name] == pytest.approx(counts[value] * vox, abs=1e-3)
    product = clean.product_labels().array
    pcounts = np.bincount(product.ravel(), minlength=256)
    for value, name in PRODUCT_LABELS.items():
        assert clean.volumes_ml[name] == pytest.approx(pcounts[value] * vox, abs=1e-3)
    # liver volumetry: parenchyma + intrahepatic vessels, tumours excluded
    assert clean.volumes_ml["liver"] == pytest.approx(
        clean.volumes_ml["liver_parenchyma"] + clean.volumes_ml["portal_vein"] + clean.volumes_ml["hepatic_vein"],
        abs=1e-3,
    )
    lesion_total = sum(les["volume_ml"] for les in clean.lesions if les["label"] == "liver_tumor")
    assert lesion_total == pytest.approx(clean.volumes_ml["liver_tumor"], abs=1e-3)


def test_organ_volumes_in_adult_ranges(seeds):
    for ph in seeds:
        v = ph.volumes_ml
        assert 1200 <= v["liver"] <= 1800, (ph.config.seed, v["liver"])
        assert 120 <= v["kidney_right"] <= 200, (ph.config.seed, v["kidney_right"])
        assert 120 <= v["kidney_left"] <= 200, (ph.config.seed, v["kidney_left"])
        assert 150 <= v["spleen"] <= 250, (ph.config.seed, v["spleen"])
        # liver cranio-caudal extent ~15-20 cm
        ks = np.nonzero(ph.mask("liver").any(axis=(1, 2)))[0]
        extent = (ks.max() - ks.min() + 1) * ph.grid.spacing[2]
        assert 140 <= extent <= 210, (ph.config.seed, extent)
        for kidney in ("kidney_right", "kidney_left"):  # ~10-12 cm long (principal axis)
            pts = ph.grid.index_to_lps(np.argwhere(ph.mask(kidney))[:, ::-1].astype(float))
            pts -= pts.mean(axis=0)
            axis = np.linalg.svd(pts, full_matrices=False)[2][0]
            length = np.ptp(pts @ axis) + ph.grid.spacing[2]
            assert 95 <= length <= 130, (ph.config.seed, kidney, length)
    livers = [ph.volumes_ml["liver"] for ph in seeds]
    assert np.ptp(livers) > 100  # varied, not one fixed anatomy


def test_structures_stay_inside_the_body(clean):
    labels = clean.labels.array
    body = (labels > 0) & (labels != DETAILED["table"])
    assert ndimage.label(body)[1] == 1  # one body, nothing labelled outside it
    assert clean.volumes_ml["table"] > 0  # the CT table under the patient, outside the body
    organs = np.isin(
        labels, [DETAILED[n] for n in ("liver_parenchyma", "spleen", "kidney_right_cortex", "kidney_left_cortex")]
    )
    # organs never touch the outside air: their dilation stays inside the body
    assert not (ndimage.binary_dilation(organs, iterations=2) & ~body).any()


# -- laterality -------------------------------------------------------------------------------
@pytest.mark.parametrize("code", ["LPS", "RAS"])
def test_laterality_liver_and_right_kidney_on_patient_right(code):
    cfg = PhantomConfig.for_orientation(code, seed=2, noise_sd=0.0, **COARSE)
    ph = generate_phantom(cfg)
    x = {name: _centroid_ras(ph, name)[0] for name in ("liver", "kidney_right", "kidney_left", "spleen")}
    assert x["liver"] > 0 > x["spleen"]
    assert x["kidney_right"] > 0 > x["kidney_left"]
    assert x["liver"] > x["spleen"] and x["kidney_right"] > x["kidney_left"]
    spine_x = _centroid_ras(ph, "spine_trabecular")[0]
    assert abs(spine_x) < 5.0
    # the aorta runs anterior-left of the spine
    aorta, spine = _centroid_ras(ph, "aorta"), _centroid_ras(ph, "spine_trabecular")
    assert aorta[0] < spine[0] and aorta[1] > spine[1]


# -- HU ---------------------------------------------------------------------------------------
CLINICAL_HU = {  # clinical.md, portal-venous phase
    "liver_parenchyma": (100, 130),
    "spleen": (110, 130),
    "kidney_right_cortex": (150, 200),
    "kidney_left_cortex": (150, 200),
    "aorta": (150, 200),
    "portal_vein_extrahepatic": (150, 200),
    "subcutaneous_fat": (-120, -80),
    "visceral_fat": (-120, -80),
    "muscle": (40, 60),
    "liver_tumor": (40, 80),
    "kidney_cyst": (0, 20),
    "kidney_tumor": (80, 180),
    "spine_trabecular": (150, 400),
    "lung": (-900, -500),
}


def _eroded_median(phantom, name: str, iterations: int = 1) -> float:
    mask = phantom.labels.array == DETAILED[name]
    core = ndimage.binary_erosion(mask, iterations=iterations)
    if core.sum() < 20:
        core = mask
    return float(np.median(phantom.image.array[core]))


@pytest.mark.parametrize("which", ["clean", "noisy"])
def test_hu_medians_in_clinical_ranges(which, request):
    phantom = request.getfixturevalue(which)
    for name, (lo, hi) in CLINICAL_HU.items():
        if phantom.volumes_ml[name] == 0:
            continue
        med = _eroded_median(phantom, name)
        assert lo <= med <= hi, (which, name, med)


def test_noise_standard_deviation():
    cfg = {"seed": 4, "size_ijk": (96, 96, 40), "spacing": (4.0, 4.0, 5.0)}
    a = generate_phantom(PhantomConfig(noise_sd=15.0, **cfg)).image.array.astype(float)
    b = generate_phantom(PhantomConfig(noise_sd=0.0, **cfg)).image.array.astype(float)
    inside = (a > -900) & (b > -900) & (b < 2000)
    assert np.std((a - b)[inside]) == pytest.approx(15.0, rel=0.1)


def test_phases_change_enhancement():
    grid = {"seed": 1, "noise_sd": 0.0, "blur_mm": 0.0, **COARSE}
    plain = generate_phantom(PhantomConfig(phase="unenhanced", **grid))
    arterial = generate_phantom(PhantomConfig(phase="arterial", **grid))
    assert 55 <= _eroded_median(plain, "liver_parenchyma") <= 65
    assert _eroded_median(arterial, "aorta") >= 250
    assert _eroded_median(arterial, "kidney_right_cortex") - _eroded_median(arterial, "kidney_right_medulla") > 50
    assert np.array_equal(plain.labels.array, arterial.labels.array)  # same anatomy, other contrast


# -- lesions ----------------------------------------------------------------------------------
def _enclosed_by(phantom, lesion_label: str, allowed: list[str]) -> bool:
    labels = phantom.labels.array
    lesion = labels == DETAILED[lesion_label]
    shell = ndimage.binary_dilation(lesion) & ~lesion
    return bool(np.isin(labels[shell], [DETAILED[a] for a in allowed]).all())


def test_liver_tumour_sizes_and_containment(seeds, clean):
    for ph in [clean, *seeds]:
        liver_tumours = [les for les in ph.lesions if les["label"] == "liver_tumor"]
        assert len(liver_tumours) == 3
        sizes = [les["diameter_mm"] for les in liver_tumours]
        assert min(sizes) < 10 <= max(sizes)
        assert all(5 <= s <= 40 for s in sizes)
        assert _enclosed_by(ph, "liver_tumor", ["liver_parenchyma", "portal_vein", "hepatic_vein"])
    for les in clean.lesions:  # each lesion's centre voxel carries its label
        ijk = np.rint(clean.grid.ras_to_index(les["center_ras"])).astype(int)
        assert clean.labels.array[ijk[2], ijk[1], ijk[0]] == DETAILED[les["label"]], les["name"]
        assert les["volume_ml"] > 0


@pytest.mark.parametrize("kind", ["endophytic", "exophytic"])
def test_kidney_tumour_growth(kind):
    ph = generate_phantom(PhantomConfig(seed=5, kidney_tumor=kind, kidney_tumor_side="left", noise_sd=0.0, **COARSE))
    (tumour,) = [les for les in ph.lesions if les["label"] == "kidney_tumor"]
    assert tumour["growth"] == kind and tumour["organ"] == "kidney_left"
    kidney_left = [f"kidney_left_{p}" for p in ("cortex", "medulla", "pelvis")]
    mask = ph.labels.array == DETAILED["kidney_tumor"]
    touching = ndimage.binary_dilation(mask) & ~mask
    assert np.isin(ph.labels.array[touching], [DETAILED[k] for k in kidney_left]).any()
    assert 20 <= _eroded_median(ph, "kidney_tumor") <= 180
    if kind == "endophytic":
        assert tumour["fraction_outside_kidney"] == 0.0
        assert _enclosed_by(ph, "kidney_tumor", [*kidney_left, "kidney_cyst"])
    else:
        assert tumour["fraction_outside_kidney"] >= 0.5
        assert not _enclosed_by(ph, "kidney_tumor", [*kidney_left, "kidney_cyst"])


def test_no_lesions_when_disabled():
    ph = generate_phantom(PhantomConfig(seed=3, n_liver_tumors=0, kidney_tumor="none", kidney_cyst=False, **COARSE))
    assert ph.lesions == []
    for name in ("liver_tumor", "kidney_tumor", "kidney_cyst"):
        assert ph.volumes_ml[name] == 0.0


def test_product_labels_mapping(clean):
    product = clean.product_labels()
    assert product.grid.same_as(clean.grid)
    for name, parts in PRODUCT_FROM_DETAILED.items():
        expected = np.isin(clean.labels.array, [DETAILED[p] for p in parts])
        assert np.array_equal(product.array == PRODUCT_LABELS.value_of(name), expected), name
    assert set(np.unique(product.array)) <= {0, *PRODUCT_LABELS}


# -- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"size_ijk": (0, 10, 10)}, "size_ijk"),
        ({"size_ijk": (10, 10)}, "size_ijk"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"direction": (1, 0, 0, 0, 1, 0, 0, 0, 2)}, "orthonormal"),
        ({"direction": (1, 0, 0)}, "9 finite"),
        ({"phase": "venous"}, "phase"),
        ({"noise_sd": -1}, "noise_sd"),
        ({"blur_mm": float("nan")}, "blur_mm"),
        ({"kidney_tumor": "big"}, "kidney_tumor"),
        ({"n_liver_tumors": 13}, "n_liver_tumors"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(InputError, match=message):
        PhantomConfig(**kwargs)


def test_orientation_codes():
    assert np.array_equal(direction_from_orientation("LPS"), np.eye(3))
    assert np.array_equal(direction_from_orientation("ras"), np.diag([-1.0, -1.0, 1.0]))
    assert PhantomConfig.for_orientation("PIL").grid().orientation == "PIL"
    for bad in ("LP", "LLS", "XYZ"):
        with pytest.raises(InputError):
            direction_from_orientation(bad)
    cfg = PhantomConfig(seed=3, fov_center_lps=(0, 0, 40))
    assert cfg.to_dict()["fov_center_lps"] == [0.0, 0.0, 40.0]
    assert PhantomConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="unknown"):
        PhantomConfig.from_dict({"seed": 1, "colour": "red"})


# -- progress and cancellation ----------------------------------------------------------------
def test_progress_and_cancel():
    seen: list[float] = []
    generate_phantom(
        PhantomConfig(seed=1, size_ijk=(48, 48, 24), spacing=(8.0, 8.0, 10.0)), progress=lambda f, m: seen.append(f)
    )
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        generate_phantom(PhantomConfig(seed=1, size_ijk=(48, 48, 24), spacing=(8.0, 8.0, 10.0)), cancel=token)
