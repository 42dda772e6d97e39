"""Exact Couinaud ground truth of a phantom, from its own vessel anatomy.

The phantom's anatomy keeps the exact centrelines it painted its vessels from (IVC capsule
chain, the portal vein's division point, the three hepatic vein trunks). From them:

* :func:`exact_landmarks` gives the landmarks a careful user would click: points every 10% of
  each hepatic vein trunk from 20% to its end, where the trunk runs inside the liver (near the
  IVC a trunk may run outside the phantom's liver, where it is not visible), the IVC chain points and the portal
  bifurcation, in RAS mm of the phantom's grid;
* :func:`couinaud_truth` labels every voxel of the phantom's liver (parenchyma, intrahepatic
  vessels, liver tumours) with segment 1-8 from the *dense* centrelines (resampled every
  0.5 mm; a hepatic vein counts where it runs inside the liver) by the same anatomical convention as :mod:`lkseg.planning.couinaud` (described there),
  written independently here (LPS body frame, nearest-radius vein direction instead of
  interpolated azimuths).

So the truth is the convention applied to the exact vessel geometry; it is not an independent
anatomical truth (the phantom's portal tree is random, so portal territories do not follow
Couinaud's segments). It tests the landmark handling, geometry (grids, RAS/LPS) and the
automatic landmark proposal against exact answers.
"""

from __future__ import annotations

import itertools

import numpy as np

from lkseg.volume import LPS_TO_RAS, Volume

__all__ = ["TRUTH_TABLE", "couinaud_truth", "exact_landmarks"]

#: label value -> name of the truth map (0 = outside the liver)
TRUTH_TABLE = {s: f"couinaud_{s}" for s in range(1, 9)}
_LIVER_PARTS = ("liver_parenchyma", "portal_vein", "hepatic_vein", "liver_tumor")


def _anatomy(phantom):
    from lkseg.phantom.generator import _anatomy as cached

    return cached(phantom.config)


def _world_ras(phantom, lps_body: np.ndarray) -> np.ndarray:
    lps = np.asarray(lps_body, dtype=float).reshape(-1, 3) + np.asarray(phantom.config.center_lps, dtype=float)
    return lps @ LPS_TO_RAS.T


def exact_landmarks(phantom):
    """The phantom's Couinaud landmarks (:class:`~lkseg.planning.CouinaudLandmarks`, RAS mm)."""
    from lkseg.planning.landmarks import CouinaudLandmarks

    vl = _anatomy(phantom).vessel_landmarks
    veins = vl["hepatic_veins"]
    if set(veins) != {"right", "middle", "left"}:
        raise ValueError(f"phantom seed {phantom.config.seed} lacks a hepatic vein trunk ({sorted(veins)})")
    liver = phantom.mask("liver")
    clicked = {}
    for k, v in veins.items():
        pts = _world_ras(phantom, _along(v, np.linspace(0.2, 1.0, 9)))
        ijk = np.rint(phantom.grid.ras_to_index(pts)).astype(int)
        ok = np.all((ijk >= 0) & (ijk < np.array(phantom.grid.size_ijk)), axis=1)
        ok[ok] = liver[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]]
        clicked[k] = pts[ok] if ok.any() else pts[-1:]
    return CouinaudLandmarks(
        ivc=_world_ras(phantom, vl["ivc"]),  # type: ignore[arg-type]
        portal_bifurcation=_world_ras(phantom, vl["portal_bifurcation"])[0],  # type: ignore[arg-type]
        right_hepatic_vein=clicked["right"],  # type: ignore[arg-type]
        middle_hepatic_vein=clicked["middle"],  # type: ignore[arg-type]
        left_hepatic_vein=clicked["left"],  # type: ignore[arg-type]
        source=f"phantom exact (seed {phantom.config.seed})",
    )


def _along(poly: np.ndarray, fractions) -> np.ndarray:
    """Points at the given fractions of a polyline's length (as a user clicks along a vein,
    inside the liver: not at its junction with the IVC)."""
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    return np.stack([np.interp(np.asarray(fractions) * s[-1], s, poly[:, a]) for a in range(3)], axis=1)


def _dense(poly: np.ndarray, step: float = 0.5) -> np.ndarray:
    out = [poly[0]]
    for a, b in itertools.pairwise(poly):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        out += [a + (b - a) * t for t in np.linspace(0, 1, n + 1)[1:]]
    return np.array(out)


def _in_mask(grid, mask: np.ndarray, lps: np.ndarray) -> np.ndarray:
    ijk = np.rint(grid.lps_to_index(lps)).astype(int)
    ok = np.all((ijk >= 0) & (ijk < np.array(grid.size_ijk)), axis=1)
    ok[ok] = mask[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]]
    return ok


def couinaud_truth(phantom) -> Volume:
    """uint8 ZYX Volume on the phantom's grid: 0 outside the liver, Couinaud segment 1-8 inside."""
    vl = _anatomy(phantom).vessel_landmarks
    centre = np.asarray(phantom.config.center_lps, dtype=float)
    ivc = vl["ivc"] + centre
    ivc = ivc[np.argsort(ivc[:, 2])]
    pb = vl["portal_bifurcation"] + centre
    grid = phantom.grid
    liver = phantom.mask("liver") | phantom.mask("liver_tumor")
    kji = np.argwhere(liver)
    lps = grid.index_to_lps(kji[:, ::-1].astype(np.float64))

    def horizontal(p: np.ndarray) -> np.ndarray:
        """Complex horizontal offset from the IVC axis, oriented as RAS x + i RAS y."""
        ax = np.interp(p[:, 2], ivc[:, 2], ivc[:, 0])
        ay = np.interp(p[:, 2], ivc[:, 2], ivc[:, 1])
        return -(p[:, 0] - ax) - 1j * (p[:, 1] - ay)  # LPS -> RAS flips x and y

    v = horizontal(lps)
    radius = np.abs(v)
    direction = {}
    confluence = []
    for name in ("right", "middle", "left"):
        dense = _dense(vl["hepatic_veins"][name] + centre)
        dense = dense[_in_mask(grid, liver, dense)]  # the vein as it runs inside the liver
        w = horizontal(dense)
        confluence.append(dense[np.argmin(np.abs(np.abs(w) - 10.0)), 2])  # height 10 mm from the IVC axis
        keep = np.abs(w) >= 10.0
        w = w[keep]
        order = np.argsort(np.abs(w))
        w, rw = w[order], np.abs(w[order])
        nearest = np.clip(np.searchsorted(rw, radius), 0, len(rw) - 1)
        lower = np.clip(nearest - 1, 0, len(rw) - 1)
        pick = np.where(np.abs(rw[lower] - radius) < np.abs(rw[nearest] - radius), lower, nearest)
        direction[name] = w[pick] / np.abs(w[pick])
    rel = v / direction["middle"]  # rotate so the middle vein points along +real
    ang = np.angle(rel)
    ang_r = np.angle(direction["right"] / direction["middle"])
    ang_l = np.angle(direction["left"] / direction["middle"])
    superior = lps[:, 2] > pb[2]
    seg = np.where(ang < ang_r, np.where(superior, 7, 6), 0)
    seg = np.where((ang >= ang_r) & (ang < 0), np.where(superior, 8, 5), seg)
    seg = np.where((ang >= 0) & (ang < ang_l), 4, seg)
    seg = np.where(ang >= ang_l, np.where(superior, 2, 3), seg)
    r_pb = float(np.abs(horizontal(pb[None]))[0])
    caudate = (
        (lps[:, 1] > pb[1])  # LPS +y is posterior
        & (radius <= r_pb)
        & (lps[:, 2] >= pb[2] - 15.0)
        & (lps[:, 2] <= float(np.mean(confluence)))
        & (ang >= ang_r)
    )
    seg = np.where(caudate, 1, seg)
    out = np.zeros(grid.shape, dtype=np.uint8)
    out[tuple(kji.T)] = seg
    return Volume(out, grid, {"label_table": {str(k): v for k, v in TRUTH_TABLE.items()}})
