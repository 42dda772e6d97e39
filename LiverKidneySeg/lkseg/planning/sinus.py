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

When the kidney segment already contains the sinus (as this product's "kidney" label and
KiTS23's do: parenchyma + pelvis/sinus fat) and no enhanced CT shows it, the concavity is only
the hilar notch (below 8% of the kidney on the phantoms, 15-19% for a parenchyma-only kidney).
Its lips are not the sinus's limits, so that concavity is not used; instead the sinus is
*estimated from the kidney's shape* (:func:`filled_kidney_sinus`): the convex hull of the
kidney segment shrunk to :data:`FILLED_SCALE` of its size about a hilar point on the line from
the kidney's centre toward the hilar notch (toward the medial side when there is no notch).
This models the sinus as a central cavity opening at the hilum, with a parenchyma whose
thickness grows with the kidney's size; the scale and the hilar point were chosen on phantom
seeds 1-8 against the phantoms' exact sinus (Testing/benchmarks/bench_renal_sinus.py) and it
is a model, not a measurement: every score says which source it used
(:data:`ESTIMATED_SOURCE` then).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from lkseg.planning._geometry import boundary_face_points

__all__ = ["ESTIMATED_SOURCE", "GEOMETRIC_SOURCE", "filled_kidney_sinus", "geometric_sinus"]

#: an enhanced kidney (median HU of its segment) and the HU below which its voxels count as sinus
#: (parenchyma 150-200 HU nephrographic / 100-130 portal-venous vs sinus fat -100, urine 0-20:
#: clinical.md)
ENHANCED_HU, SINUS_MAX_HU = 100.0, 80.0
#: a medial concavity smaller than this share of the kidney is only the hilar notch of a kidney
#: segment that includes its sinus: on the phantoms the medial concavity of a parenchyma-only
#: kidney is 15-19% of it, that of a kidney segment that includes its sinus 3-5%
#: (Testing/benchmarks/bench_renal_sinus.py)
MIN_SINUS_FRACTION = 0.08
#: estimated sinus of a kidney segment that includes it: the kidney's convex hull shrunk to this
#: linear scale about the hilar point, which lies this share of the way from the kidney's centre
#: to its hull surface toward the hilar notch (1 = on the hull, at the hilum's opening). Chosen on
#: phantom seeds 1-8 (grid 0.40-0.65 x 0.6-1.0): N and L equal the exact sinus's for 8/8 tumours
#: for scales 0.525-0.56 at 1.0, with the least gap and polar-line errors; evaluated on seeds
#: 10-29 (README, "bench_renal_sinus")
FILLED_SCALE, FILLED_HILUM = 0.55, 1.0
GEOMETRIC_SOURCE = "geometric: convex hull of the kidney minus the kidney, medial side (no collecting-system segment)"
ESTIMATED_SOURCE = (
    "estimated from the kidney's shape (the kidney segment includes its sinus and no enhanced CT shows it): the "
    "kidney's convex hull shrunk to {scale:.0%} about its hilum ({where}); a model, not a measurement"
)


def geometric_sinus(
    kidney: np.ndarray,
    spacing_zyx: np.ndarray,
    ras_x_of_index,
    medial_sign: float,
    own: np.ndarray | None = None,
    hu: np.ndarray | None = None,
    estimate: bool = True,
) -> tuple[np.ndarray | None, str]:
    """Boolean mask (same crop as ``kidney``) of the renal sinus and its source text, or None and
    the reason.

    Args:
        kidney: ZYX boolean crop of the kidney and its attached lesions (padded by >= 1 voxel).
        spacing_zyx: voxel size (mm) along the crop's axes.
        ras_x_of_index: function (N, 3) ZYX crop indices -> RAS x (mm); affine.
        medial_sign: -1 when medial is toward smaller RAS x (right kidney), +1 (left kidney).
        own: the kidney segment alone (no lesions), for the intensity step and the estimate.
        hu: the CT (HU) on the same crop: when the kidney is enhanced (median >= 100 HU), its
            voxels below 80 HU (sinus fat, urine) join the concavity, since many kidney
            segments (this product's included) contain the sinus.
        estimate: when the medial concavity is below :data:`MIN_SINUS_FRACTION` of the kidney
            (its segment includes the sinus), estimate the sinus from the kidney's shape
            (:func:`filled_kidney_sinus`); False refuses instead (None and the reason).
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
    centre_x = float(ras_x_of_index(np.argwhere(kidney).mean(axis=0)[None])[0])
    idx = np.argwhere(concave)
    lateral = (ras_x_of_index(idx) - centre_x) * medial_sign <= 0
    concave[tuple(idx[lateral].T)] = False
    comps, n = ndimage.label(concave, structure=np.ones((3, 3, 3), dtype=bool))
    sinus = comps == (np.argmax(np.bincount(comps.ravel())[1:]) + 1) if n else np.zeros_like(concave)
    fraction = float(sinus.sum() / max(1, (own if own is not None else kidney).sum()))
    if fraction >= MIN_SINUS_FRACTION:
        return sinus, source
    found = (
        "the kidney's shape has no medial concavity (renal sinus)"
        if n == 0
        else f"the kidney's medial concavity is only {100 * fraction:.1f}% of its volume (a renal sinus is "
        f">= {100 * MIN_SINUS_FRACTION:.0f}%)"
    )
    if not estimate:
        return None, (
            f"{found}: the kidney segment seems to include the sinus; give the CT (enhanced) or a renal_sinus / "
            "renal_pelvis segment"
        )
    return filled_kidney_sinus(own if own is not None else kidney, spacing_zyx, ras_x_of_index, medial_sign, sinus)


def filled_kidney_sinus(
    own: np.ndarray,
    spacing_zyx: np.ndarray,
    ras_x_of_index,
    medial_sign: float,
    notch: np.ndarray | None = None,
    scale: float | None = None,
    hilum: float | None = None,
) -> tuple[np.ndarray | None, str]:
    """Estimated renal sinus of a kidney segment that includes it (parenchyma + sinus in one
    label), from its shape alone: the convex hull of ``own`` shrunk to ``scale`` (linear) about
    the hilar point, intersected with the kidney and its hilar notch.

    The hilar point lies ``hilum`` of the way from the kidney's centroid to its hull surface
    along the direction toward the centroid of ``notch`` (the hilar notch, the medial concavity),
    or toward the medial side (RAS x times ``medial_sign``) when there is no notch.

    Args:
        own: ZYX boolean crop of the kidney segment without its lesions (padded by >= 1 voxel).
        spacing_zyx, ras_x_of_index, medial_sign: as for :func:`geometric_sinus`.
        notch: boolean crop of the hilar notch (may be None or empty).
        scale, hilum: default :data:`FILLED_SCALE`, :data:`FILLED_HILUM`.

    Returns the mask and its source text (:data:`ESTIMATED_SOURCE`), or None and the reason.
    """
    from lkseg.planning.renal import outside_hull

    scale = FILLED_SCALE if scale is None else float(scale)
    hilum = FILLED_HILUM if hilum is None else float(hilum)
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    try:
        hull = ConvexHull(boundary_face_points(own) * sp)
    except (QhullError, ValueError):
        return None, "the kidney segment is too small or flat for a convex hull"
    normal, offset = hull.equations[:, :3], hull.equations[:, 3]
    centre = np.argwhere(own).mean(axis=0) * sp
    if notch is not None and notch.any():
        direction = np.argwhere(notch).mean(axis=0) * sp - centre
        where = "toward the hilar notch"
    else:
        # RAS x per mm along each crop axis: the medial direction in the crop's mm frame
        origin = ras_x_of_index(np.zeros((1, 3)))[0]
        direction = medial_sign * (ras_x_of_index(np.eye(3)) - origin) / sp
        where = "no hilar notch: toward the medial side"
    norm = float(np.linalg.norm(direction))
    if norm < 1e-9:
        return None, "the kidney's hilar direction is undefined"
    direction = direction / norm
    # distance from the centroid to the hull surface along ``direction``
    along = normal @ direction
    reach = float(np.min(-(normal[along > 1e-12] @ centre + offset[along > 1e-12]) / along[along > 1e-12]))
    point = centre + hilum * reach * direction
    where = f"{'on' if hilum == 1.0 else f'{hilum:.0%} of the way to'} its hull from its centre, {where}"
    # p in the hull shrunk by ``scale`` about ``point``: point + (p - point) / scale is in the hull
    shrunk = np.column_stack([normal, scale * offset - (1.0 - scale) * (normal @ point)])
    region = own | notch if notch is not None else own
    cand = np.argwhere(region)
    inside = ~outside_hull(shrunk, cand, sp)
    sinus = np.zeros(own.shape, dtype=bool)
    sinus[tuple(cand[inside].T)] = True
    comps, n = ndimage.label(sinus, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return None, "the kidney segment is too small for an estimated renal sinus"
    sinus = comps == (np.argmax(np.bincount(comps.ravel())[1:]) + 1)
    return sinus, ESTIMATED_SOURCE.format(scale=scale, where=where)
