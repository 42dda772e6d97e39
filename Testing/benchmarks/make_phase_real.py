"""Contrast-phase versions of the real ``example_ct`` (unenhanced) for ``bench_auto_real.py``.

The project's only labelled real scan is unenhanced, while the scans users (and the issue's
table) bring are mostly portal-venous or arterial. This script adds contrast enhancement to the
real scan, structure by structure, using TotalSegmentator's own masks of it (v2 "total" map,
``example_seg_fast_force_split``): each labelled structure gets an HU offset typical of the phase
(values from standard CT physiology, fixed here before any run; see ``PHASES``), the offset map
is blurred by ``--blur-mm`` (partial volume at 3 mm) and added to the real voxels, whose noise,
texture and anatomy stay as they are. In the arterial phase the kidneys get a cortex (the outer
``CORTEX_MM`` of the kidney mask) brighter than the medulla, and the spleen a smooth arciform-like
pattern of +-``SPLEEN_ARCIFORM_HU``.

**What this is and is not.** The same patient with painted-on enhancement: it shows how the
automatic pipeline behaves when the organs have contrast-phase HU (HU guards, window, the U-Net's
phase handling), not how it does on new anatomy. Enhancement follows the reference masks exactly
(up to the blur), so the organ outlines are, if anything, easier than on a real enhanced scan;
intrahepatic and intrasplenic vessels, which TotalSegmentator includes in the organ masks, are not
brightened separately. Never report these numbers as results on unseen real CT.

Writes ``<out>/totalsegmentator/<phase>_ct.nii.gz`` + ``<phase>_seg.nii.gz`` (the whole scan) and
``<phase>-slab_ct.nii.gz`` + ``<phase>-slab_seg.nii.gz`` (slices 82-111, the slab that
``example_ct_sm`` holds, with its origin shifted so that it lies where it lay in the whole scan),
the layout ``bench_auto_real.py`` reads from an extra folder::

    python Testing/benchmarks/make_phase_real.py /tmp/phases
    OMP_NUM_THREADS=2 python Testing/benchmarks/bench_auto_real.py /tmp/phases --cases portal_ct arterial_ct
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from lkseg.io.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[2]
TOTALSEG = ROOT.parent / "shared" / "data" / "real-ct" / "totalsegmentator"
SLAB = (82, 112)  # example_ct_sm = slices 82-111 of example_ct (the data README)

# TotalSegmentator v2 "total" labels present in example_seg_fast_force_split
SPLEEN, KIDNEY_R, KIDNEY_L, GALLBLADDER, LIVER, STOMACH, PANCREAS = 1, 2, 3, 4, 5, 6, 7
ADRENALS = (8, 9)
SMALL_BOWEL, DUODENUM, COLON = 18, 19, 20
AORTA, IVC, PORTAL_SPLENIC = 52, 63, 64
ILIAC_ARTERIES, ILIAC_VEINS = (65, 66), (67, 68)
MUSCLES = (80, 81, 82, 83, 84, 85, 86, 87, 88, 89)  # gluteal muscles, autochthon, iliopsoas

CORTEX_MM = 5.0
SPLEEN_ARCIFORM_HU = 35.0

# HU added to the unenhanced scan (typical enhancement; portal-venous ~70 s, late arterial ~35 s)
PHASES: dict[str, dict[int | tuple[int, ...], float]] = {
    "portal": {
        LIVER: 60.0,
        SPLEEN: 75.0,
        KIDNEY_R: 130.0,
        KIDNEY_L: 130.0,
        PANCREAS: 60.0,
        ADRENALS: 40.0,
        AORTA: 130.0,
        IVC: 110.0,
        PORTAL_SPLENIC: 140.0,
        ILIAC_ARTERIES: 125.0,
        ILIAC_VEINS: 90.0,
        SMALL_BOWEL: 35.0,
        DUODENUM: 35.0,
        STOMACH: 20.0,
        MUSCLES: 10.0,
    },
    "arterial": {
        LIVER: 18.0,
        SPLEEN: 70.0,
        KIDNEY_R: 55.0,  # medulla; the cortex gets CORTEX_HU_ARTERIAL
        KIDNEY_L: 55.0,
        PANCREAS: 80.0,
        ADRENALS: 50.0,
        AORTA: 280.0,
        IVC: 25.0,
        PORTAL_SPLENIC: 70.0,
        ILIAC_ARTERIES: 260.0,
        ILIAC_VEINS: 5.0,
        SMALL_BOWEL: 30.0,
        DUODENUM: 30.0,
        STOMACH: 15.0,
        MUSCLES: 5.0,
    },
}
CORTEX_HU_ARTERIAL = 165.0


def _labels(key) -> tuple[int, ...]:
    return key if isinstance(key, tuple) else (key,)


def enhance(
    ct: np.ndarray, seg: np.ndarray, spacing_zyx: tuple[float, float, float], phase: str, blur_mm: float, seed: int
) -> np.ndarray:
    """The scan ``ct`` (numpy ``(z, y, x)``, HU) with ``phase``'s enhancement added by ``seg``'s labels."""
    offset = np.zeros(ct.shape, np.float32)
    for key, hu in PHASES[phase].items():
        offset[np.isin(seg, _labels(key))] = hu
    if phase == "arterial":
        for kidney in (KIDNEY_R, KIDNEY_L):
            mask = seg == kidney
            depth = ndimage.distance_transform_edt(mask, sampling=spacing_zyx)
            offset[mask & (depth <= CORTEX_MM)] = CORTEX_HU_ARTERIAL
        spleen = seg == SPLEEN
        if spleen.any():
            rng = np.random.default_rng(seed)
            field = ndimage.gaussian_filter(rng.standard_normal(ct.shape).astype(np.float32), sigma=2.0)
            field /= max(float(np.abs(field[spleen]).max()), 1e-6)
            offset[spleen] += SPLEEN_ARCIFORM_HU * field[spleen]
    if blur_mm > 0:
        offset = ndimage.gaussian_filter(offset, sigma=[blur_mm / s for s in spacing_zyx])
    return np.clip(np.rint(ct + offset), -1024, 3071).astype(np.int16)


def write(array: np.ndarray, like: sitk.Image, path: Path, z0: int = 0) -> None:
    """``array`` on ``like``'s grid from its slice ``z0`` on, written atomically."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(like.GetSpacing())
    image.SetDirection(like.GetDirection())
    image.SetOrigin(like.TransformIndexToPhysicalPoint((0, 0, z0)))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--phases", nargs="+", default=sorted(PHASES), choices=sorted(PHASES))
    p.add_argument("--blur-mm", type=float, default=1.5, help="Gaussian sigma of the enhancement map (mm)")
    p.add_argument("--seed", type=int, default=0, help="seed of the arterial spleen pattern")
    args = p.parse_args()
    ct_img = sitk.ReadImage(str(TOTALSEG / "example_ct.nii.gz"))
    seg_img = sitk.ReadImage(str(TOTALSEG / "example_seg_fast_force_split.nii.gz"))
    ct = sitk.GetArrayFromImage(ct_img).astype(np.float32)
    seg = sitk.GetArrayFromImage(seg_img)
    spacing_zyx = tuple(reversed(ct_img.GetSpacing()))
    out = args.out / "totalsegmentator"
    out.mkdir(parents=True, exist_ok=True)
    for phase in args.phases:
        enhanced = enhance(ct, seg, spacing_zyx, phase, args.blur_mm, args.seed)
        write(enhanced, ct_img, out / f"{phase}_ct.nii.gz")
        write(seg.astype(np.uint8), ct_img, out / f"{phase}_seg.nii.gz")
        z0, z1 = SLAB
        write(enhanced[z0:z1], ct_img, out / f"{phase}-slab_ct.nii.gz", z0)
        write(seg[z0:z1].astype(np.uint8), ct_img, out / f"{phase}-slab_seg.nii.gz", z0)
        for name, value in (("liver", LIVER), ("spleen", SPLEEN), ("kidney_r", KIDNEY_R), ("aorta", AORTA)):
            print(
                f"{phase}: {name} median {np.median(enhanced[seg == value]):.0f} HU (unenhanced {np.median(ct[seg == value]):.0f})"
            )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
