"""Solid organs of the phantom as implicit shapes: kidneys, liver, spleen, gallbladder.

Organ volumes are *calibrated*: each organ's full shape (with the cuts made by the body wall,
the diaphragm and its neighbours) is evaluated on a coarse grid and scaled until its volume
matches a target drawn in the adult range of ``clinical.md`` (liver 1200-1800 mL, from the
standardised TLV of the patient's BSA; kidneys 120-200 mL; spleen 150-250 mL).

Coordinates: LPS mm relative to the body centre (+x patient left, +y posterior, +z superior).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lkseg.phantom.shapes import (
    F32,
    Ellipsoid,
    HalfSpace,
    Intersect,
    Offset,
    Perturb,
    Shape,
    SmoothUnion,
    Subtract,
    local_coords,
    rotation_from_axes,
)

__all__ = [
    "KidneyModel",
    "Pyramids",
    "calibrate",
    "coarse_points",
    "coarse_volume_ml",
    "kidney_model",
    "liver_shape",
    "spleen_shape",
]


def _chunked_levels(shape: Shape, axes: list[np.ndarray], chunk: int = 24) -> np.ndarray:
    """Levels of ``shape`` at the grid ``axes`` (x, y, z 1D arrays), ZYX, evaluated by chunks so
    composites skip the parts far from each chunk."""
    out = np.empty((len(axes[2]), len(axes[1]), len(axes[0])), dtype=F32)
    for k in range(0, out.shape[0], chunk):
        for j in range(0, out.shape[1], chunk):
            for i in range(0, out.shape[2], chunk):
                X = axes[0][i : i + chunk].astype(F32).reshape(1, 1, -1)
                Y = axes[1][j : j + chunk].astype(F32).reshape(1, -1, 1)
                Z = axes[2][k : k + chunk].astype(F32).reshape(-1, 1, 1)
                block = out[k : k + chunk, j : j + chunk, i : i + chunk]
                block[...] = np.broadcast_to(shape(X, Y, Z), block.shape)
    return out


def _axes(bbox, step: float) -> list[np.ndarray]:
    lo, hi = bbox
    return [np.arange(lo[d] + step / 2, hi[d], step, dtype=np.float64) for d in range(3)]


def coarse_points(shape: Shape, step: float, bbox=None) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate ``shape`` on a regular LPS grid (``step`` mm) over its bbox.

    Returns:
        ``(points, level)``: (N, 3) LPS mm of the grid points and their levels (N,).
    """
    axes = _axes(bbox if bbox is not None else shape.bbox, step)
    level = _chunked_levels(shape, axes)
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
    return pts, level.astype(np.float64).ravel()


def coarse_volume_ml(shape: Shape, step: float) -> float:
    """Volume (mL) of ``shape`` estimated by counting points of a ``step`` mm grid."""
    level = _chunked_levels(shape, _axes(shape.bbox, step))
    return int(np.count_nonzero(level < 0)) * step**3 / 1000.0


def calibrate(
    build: Callable[[float], Shape],
    target_ml: float,
    step: float,
    power: float = 3.0,
    iters: int = 3,
    tol: float = 0.015,
) -> tuple[Shape, float, float]:
    """Find the scale ``s`` for which ``build(s)`` has ``target_ml`` (volume ~ s**power).

    Returns ``(shape, scale, coarse volume mL)``.
    """
    s = 1.0
    shape = build(s)
    vol = coarse_volume_ml(shape, step)
    if abs(vol - target_ml) < tol * target_ml:
        return shape, s, vol
    for _ in range(iters):
        if vol <= 0:
            s *= 1.5
        else:
            s *= float(np.clip((target_ml / vol) ** (1.0 / power), 0.6, 1.6))
        shape = build(s)
        vol = coarse_volume_ml(shape, step)
        if abs(vol - target_ml) < tol * target_ml:
            break
    return shape, s, vol


# -- kidneys ----------------------------------------------------------------------------------
class Pyramids(Shape):
    """Renal pyramids: a fan of wedges around the sinus in the kidney's coronal plane, split
    into an anterior and a posterior row (the cortical columns of Bertin lie between)."""

    def __init__(self, center: np.ndarray, rot: np.ndarray, n: int, bbox):
        self.center, self.rot, self.n = np.asarray(center), np.asarray(rot), int(n)
        self.bbox = bbox

    def __call__(self, X, Y, Z):
        q = local_coords(X, Y, Z, self.center, self.rot)
        psi = np.arctan2(q[0], -q[1])
        rho = np.sqrt(q[0] * q[0] + q[1] * q[1])
        # angular distance to the column edges in mm (keeps the level's gradient bounded)
        wedge = (F32(-0.3) - np.cos(F32(self.n) * psi)) * rho * F32(1.5 / self.n)
        return np.maximum(wedge, F32(1.2) - np.abs(q[2]))


@dataclass
class KidneyModel:
    """One kidney. ``outer`` is the whole kidney (cortex + medulla + sinus); ``medulla`` and
    ``sinus`` are painted over it; ``pelvis_core`` marks the urine-filled pelvis inside the sinus.
    ``frame`` columns: long axis (to the upper pole), hilum direction, antero-posterior axis."""

    side: str
    center: np.ndarray
    frame: np.ndarray
    length: float
    width: float
    thickness: float
    outer: Shape
    medulla: Shape
    sinus: Shape
    pelvis_core: Shape
    volume_ml: float


def kidney_model(
    side: str, center: np.ndarray, length: float, target_ml: float, rng: np.random.Generator
) -> KidneyModel:
    """A bean-shaped kidney with its hilum facing antero-medially, calibrated to ``target_ml``.

    The long axis tilts so that the upper pole is medial and posterior (as on CT).
    """
    sgn = -1.0 if side == "right" else 1.0  # LPS x of the patient's right is negative
    axis = np.array([-sgn * rng.uniform(0.15, 0.3), rng.uniform(0.1, 0.25), 1.0])
    hilum = np.array([-sgn * 1.0, -rng.uniform(0.6, 1.0), 0.0])
    rot = rotation_from_axes(axis, hilum)
    cortex_t = rng.uniform(5.0, 7.5)
    bumps = rng.normal(size=(3, 3))
    phases = rng.uniform(0, 2 * np.pi, 3)
    aspect = rng.uniform(0.72, 0.85)  # thickness / width

    def build(f: float) -> Shape:
        w = 50.0 * f
        t = w * aspect
        half = np.array([length / 2, w / 2, t / 2])
        base = Ellipsoid(center, half, rot)
        notch = Ellipsoid(center + rot[:, 1] * (w / 2 + 2.0), (length * 0.17, w * 0.3, t * 0.3), rot)
        dirs = bumps / np.linalg.norm(bumps, axis=1, keepdims=True) * (2 * np.pi / 45.0)
        return Perturb(Subtract(base, notch), dirs, phases, np.full(3, 0.5))

    outer, f, vol = calibrate(build, target_ml, step=1.5, power=2.0)
    w = 50.0 * f
    t = w * aspect
    sinus_c = center + rot[:, 1] * (w * 0.2)
    sinus = Intersect(Ellipsoid(sinus_c, (length * 0.27, w * 0.25, t * 0.24), rot), outer)
    pelvis_core = Ellipsoid(center + rot[:, 1] * (w * 0.3), (length * 0.1, w * 0.12, t * 0.12), rot)
    medulla = Intersect(
        Offset(outer, -cortex_t),
        Subtract(Pyramids(center + rot[:, 1] * (w * 0.12), rot, 4, outer.bbox), Offset(sinus, 1.5)),
    )
    return KidneyModel(side, np.asarray(center, float), rot, length, w, t, outer, medulla, sinus, pelvis_core, vol)


# -- liver ------------------------------------------------------------------------------------
@dataclass
class LiverParams:
    """Unscaled liver geometry (mm, LPS): right and left lobes, the two cut planes of the visceral
    surface, surface bumps, and the point about which the liver is scaled (near the dome)."""

    right_c: np.ndarray
    right_r: np.ndarray
    right_rot: np.ndarray
    left_c: np.ndarray
    left_r: np.ndarray
    left_rot: np.ndarray
    cut_points: list[np.ndarray]
    cut_normals: list[np.ndarray]
    waves: np.ndarray
    phases: np.ndarray
    amps: np.ndarray
    anchor: np.ndarray


def liver_shape(p: LiverParams, scale: float, bounds: list[Shape], cutters: list[Shape]) -> Shape:
    """The liver at ``scale``: lobes smoothly joined, cut, bumped, kept inside ``bounds`` (body
    cavity, below the diaphragm) and minus ``cutters`` (neighbours grown by a fat gap)."""

    def moved(c: np.ndarray) -> np.ndarray:
        return p.anchor + scale * (np.asarray(c) - p.anchor)

    right = Ellipsoid(moved(p.right_c), p.right_r * scale, p.right_rot)
    left = Ellipsoid(moved(p.left_c), p.left_r * scale, p.left_rot)
    body: Shape = SmoothUnion(right, left, 25.0 * scale)
    cuts = [HalfSpace(moved(c), n) for c, n in zip(p.cut_points, p.cut_normals)]
    body = Intersect(body, *cuts)
    body = Perturb(body, p.waves / scale, p.phases - (p.waves @ p.anchor) * (1 / scale - 1), p.amps * scale)
    return Subtract(Intersect(body, *bounds), *cutters)


def sample_liver_params(
    rng: np.random.Generator, cavity_half_width: float, spine_y: float, dome_r: float
) -> LiverParams:
    """Random liver geometry in the right upper abdomen (patient right = negative LPS x)."""
    ac = cavity_half_width
    right_c = np.array(
        [-0.45 * ac + rng.uniform(-6, 6), spine_y - 35 + rng.uniform(-8, 8), dome_r - 75 + rng.uniform(-8, 8)]
    )
    right_r = np.array([0.62 * ac * rng.uniform(0.92, 1.08), rng.uniform(80, 95), rng.uniform(82, 95)])
    tilt = np.radians(rng.uniform(-12, 4))
    right_rot = rotation_from_axes([np.cos(tilt), 0.0, np.sin(tilt)], [0.0, 1.0, 0.0])
    left_c = np.array(
        [0.12 * ac + rng.uniform(-8, 8), spine_y - 88 + rng.uniform(-8, 6), dome_r - 45 + rng.uniform(-8, 8)]
    )
    left_r = np.array([0.5 * ac * rng.uniform(0.8, 1.15), rng.uniform(32, 44), rng.uniform(24, 34)])
    up = np.radians(rng.uniform(5, 20))
    left_rot = rotation_from_axes([np.cos(up), 0.0, np.sin(up)], [0.0, 1.0, 0.0])
    cut_points = [
        np.array([-15.0, spine_y - 30, dome_r - 135 + rng.uniform(-10, 10)]),
        np.array([0.0, spine_y - 90, dome_r - 110 + rng.uniform(-10, 10)]),
    ]
    cut_normals = [
        np.array([rng.uniform(0.4, 0.6), rng.uniform(0.15, 0.35), -0.83]),
        np.array([rng.uniform(-0.1, 0.1), -rng.uniform(0.45, 0.65), -0.83]),
    ]
    n = 4
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = dirs * (2 * np.pi / rng.uniform(60, 110, size=(n, 1)))
    amps = rng.uniform(0.5, 1.0, n)
    amps *= rng.uniform(3.0, 6.0) / amps.sum()
    anchor = np.array([right_c[0], right_c[1], dome_r])
    return LiverParams(
        right_c,
        right_r,
        right_rot,
        left_c,
        left_r,
        left_rot,
        cut_points,
        cut_normals,
        waves,
        rng.uniform(0, 2 * np.pi, n),
        amps,
        anchor,
    )


# -- spleen -----------------------------------------------------------------------------------
def spleen_shape(
    center: np.ndarray, rng: np.random.Generator, bounds: list[Shape], cutters: list[Shape]
) -> Callable[[float], Shape]:
    """Builder ``scale -> spleen``: a crescent along the left 10th rib, convex to the diaphragm,
    concave at the hilum, in the left upper quadrant (positive LPS x)."""
    axis = np.array([rng.uniform(0.05, 0.25), -rng.uniform(0.45, 0.65), -0.82])
    lateral = np.array([0.85, rng.uniform(0.35, 0.6), 0.0])
    e1 = axis / np.linalg.norm(axis)
    e3 = lateral - e1 * float(e1 @ lateral)
    e3 /= np.linalg.norm(e3)
    rot = np.stack([e1, np.cross(e3, e1), e3], axis=1)
    half = np.array([rng.uniform(50, 60), rng.uniform(32, 40), rng.uniform(20, 25)])
    bumps = rng.normal(size=(3, 3))
    phases = rng.uniform(0, 2 * np.pi, 3)

    def build(s: float) -> Shape:
        base = Ellipsoid(center, half * s, rot)
        hilum = Ellipsoid(
            center - e3 * (half[2] * s + 10.0 * s), (half[0] * 0.55 * s, half[1] * 0.6 * s, 16.0 * s), rot
        )
        dirs = bumps / np.linalg.norm(bumps, axis=1, keepdims=True) * (2 * np.pi / 50.0)
        shape = Perturb(Subtract(base, hilum), dirs, phases, np.full(3, 0.8))
        return Subtract(Intersect(shape, *bounds), *cutters)

    return build


def gallbladder_shape(liver: Shape, x: float, y: float, rng: np.random.Generator) -> Shape | None:
    """The gallbladder in its fossa under the liver, its fundus just below the liver edge, or
    None when the liver has no inferior surface above (x, y)."""
    zs = np.arange(200.0, -200.0, -2.0)
    pts = np.stack([np.full_like(zs, x), np.full_like(zs, y), zs], axis=1)
    inside = liver.at(pts) < 0
    if not inside.any():
        return None
    z_low = float(zs[np.nonzero(inside)[0].max()])
    axis = np.array([rng.uniform(-0.15, 0.05), -rng.uniform(0.35, 0.6), -0.89])
    half = np.array([rng.uniform(32, 45), rng.uniform(13, 18), rng.uniform(12, 16)])
    e1 = axis / np.linalg.norm(axis)
    center = np.array([x, y, z_low]) - e1 * (half[0] - rng.uniform(8, 14))
    return Ellipsoid(center, half, rotation_from_axes(e1, [1.0, 0.0, 0.0]))
