"""Renal sinus / hilum from the kidney's own geometry, for R.E.N.A.L. N and L without a
collecting-system segment.

The renal sinus is the kidney's concavity: the space inside the convex hull of the kidney
(with its tumours and cysts) that the kidney does not fill, on its medial side. Here:

1. hull = convex hull of the outline of kidney + its attached lesions (voxel-face centres, mm);
2. concavity = voxel centres inside the hull that are not kidney or lesion, opened by one voxel
   (thin slivers along flat faces removed);
3. with the CT of an enhanced kidney, the kidney segment's voxels below 80 HU (sinus fat and
   urine, when the segment includes the sinus) join the concavity;
4. kept: voxels medial to the kidney's centre (RAS x below it for the right kidney, above it
   for the left one); the largest 26-connected piece is the sinus.

When the kidney segment already contains the sinus (as this product's "kidney" label does:
parenchyma + pelvis/sinus fat) and no CT is given, the concavity is only the hilar notch: N is
then measured to the hilum's opening and the polar lines sit at the notch's lips, which differs
from the true sinus, so a concavity below 8% of the kidney is refused (N and L "not
available", with the reason). Every score says which source it used.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from lkseg.planning._geometry import boundary_face_points

__all__ = ["GEOMETRIC_SOURCE", "geometric_sinus"]

#: an enhanced kidney (median HU of its segment) and the HU below which its voxels count as sinus
#: (parenchyma 150-200 HU nephrographic / 100-130 portal-venous vs sinus fat -100, urine 0-20:
#: clinical.md)
ENHANCED_HU, SINUS_MAX_HU = 100.0, 80.0
#: a derived sinus smaller than this share of the kidney is refused: on the phantoms the medial
#: concavity of a parenchyma-only kidney is 15-19% of it, that of a kidney segment that includes
#: its sinus (only the hilar notch left) 3-5% (Testing/benchmarks/bench_renal_sinus.py)
MIN_SINUS_FRACTION = 0.08
GEOMETRIC_SOURCE = "geometric: convex hull of the kidney minus the kidney, medial side (no collecting-system segment)"


def geometric_sinus(
    kidney: np.ndarray,
    spacing_zyx: np.ndarray,
    ras_x_of_index,
    medial_sign: float,
    own: np.ndarray | None = None,
    hu: np.ndarray | None = None,
) -> tuple[np.ndarray | None, str]:
    """Boolean mask (same crop as ``kidney``) of the renal sinus and its source text, or None and
    the reason (no concavity, or one smaller than :data:`MIN_SINUS_FRACTION` of the kidney).

    Args:
        kidney: ZYX boolean crop of the kidney and its attached lesions (padded by >= 1 voxel).
        spacing_zyx: voxel size (mm) along the crop's axes.
        ras_x_of_index: function (N, 3) ZYX crop indices -> RAS x (mm).
        medial_sign: -1 when medial is toward smaller RAS x (right kidney), +1 (left kidney).
        own: the kidney segment alone (no lesions), for the intensity step.
        hu: the CT (HU) on the same crop: when the kidney is enhanced (median >= 100 HU), its
            voxels below 80 HU (sinus fat, urine) join the concavity, since many kidney
            segments (this product's included) contain the sinus.
    """
    from lkseg.planning.renal import outside_hull

    source = GEOMETRIC_SOURCE
    pts = boundary_face_points(kidney) * spacing_zyx
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):
        return None, "the kidney segment is too small or flat for a convex hull"
    empty = np.argwhere(~kidney)
    inside = ~outside_hull(hull.equations, empty, spacing_zyx)
    concave = np.zeros(kidney.shape, dtype=bool)
    concave[tuple(empty[inside].T)] = True
    if hu is not None and own is not None and own.any() and float(np.median(hu[own])) >= ENHANCED_HU:
        low = own & (hu < SINUS_MAX_HU)
        if low.any():
            concave |= low
            source += f"; with the kidney segment's voxels < {SINUS_MAX_HU:g} HU (sinus fat, urine)"
    concave = ndimage.binary_opening(concave, structure=ndimage.generate_binary_structure(3, 1))
    if not concave.any():
        return None, "the kidney's shape has no concavity (renal sinus)"
    centre_x = float(ras_x_of_index(np.argwhere(kidney).mean(axis=0)[None])[0])
    idx = np.argwhere(concave)
    lateral = (ras_x_of_index(idx) - centre_x) * medial_sign <= 0
    concave[tuple(idx[lateral].T)] = False
    comps, n = ndimage.label(concave, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return None, "the kidney's shape has no concavity (renal sinus) on its medial side"
    sinus = comps == (np.argmax(np.bincount(comps.ravel())[1:]) + 1)
    fraction = float(sinus.sum() / max(1, (own if own is not None else kidney).sum()))
    if fraction < MIN_SINUS_FRACTION:
        return None, (
            f"the kidney's medial concavity is only {100 * fraction:.1f}% of its volume (a renal sinus is "
            f">= {100 * MIN_SINUS_FRACTION:.0f}%): the kidney segment seems to include the sinus; give the CT "
            "(enhanced) or a renal_sinus / renal_pelvis segment"
        )
    return sinus, source
