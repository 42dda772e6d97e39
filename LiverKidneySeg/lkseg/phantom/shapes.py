"""Implicit shapes in physical (LPS, mm) space for the phantom.

A shape is a callable ``shape(X, Y, Z) -> level`` where ``X, Y, Z`` are float32 arrays of LPS
millimetres that broadcast against each other (for an axial grid ``X`` may be ``(1, 1, ni)``,
``Y`` ``(1, nj, 1)`` and ``Z`` ``(nk, 1, 1)``; numpy broadcasting keeps cross-section-only work
2D), and ``level`` is an approximate signed distance in mm: negative inside, positive outside,
roughly the distance to the surface near it. Every shape also has a ``bbox``: the LPS box
``(lo, hi)`` (mm) outside which it is certainly positive, used to evaluate it only on the voxels
that can be inside.

Composites (:class:`Union`, :class:`Intersect`, :class:`Subtract`, :class:`Offset`,
:class:`Perturb`) combine shapes with min/max, so "the liver minus the kidney grown by 3 mm" is
``Subtract(liver, Offset(kidney, 3))``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BBox",
    "Capsule",
    "Ellipsoid",
    "HalfSpace",
    "Intersect",
    "Offset",
    "Perturb",
    "Shape",
    "SmoothUnion",
    "Subtract",
    "Union",
    "bbox_of_points",
    "local_coords",
    "rotation_from_axes",
    "tube",
    "wave_argument",
]

F32 = np.float32
BBox = tuple[np.ndarray, np.ndarray]
_INF_BOX: BBox = (np.full(3, -1e9), np.full(3, 1e9))


def bbox_of_points(points: np.ndarray, pad: float = 0.0) -> BBox:
    """Axis-aligned LPS box of ``points`` (N, 3) grown by ``pad`` mm."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return pts.min(axis=0) - pad, pts.max(axis=0) + pad


#: Children of a composite whose bbox is farther than this (mm) from the evaluated block are
#: skipped and count as "outside by at least CULL_MARGIN"; every Offset must stay below it.
CULL_MARGIN = 16.0
_tls = threading.local()


def coord_range(X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """LPS box ``(lo, hi)`` spanned by coordinate arrays (cached for the arrays last seen on this
    thread), as tuples of floats."""
    c = getattr(_tls, "last", None)
    if c is not None and c[0] is X and c[1] is Y and c[2] is Z:
        return c[3]
    lo = (float(X.min()), float(Y.min()), float(Z.min()))
    hi = (float(X.max()), float(Y.max()), float(Z.max()))
    _tls.last = (X, Y, Z, (lo, hi))
    return lo, hi


def _far(shape: Shape, rng: tuple[tuple[float, ...], tuple[float, ...]]) -> bool:
    """True when ``shape``'s bbox is more than CULL_MARGIN away from the coordinate range ``rng``."""
    box = shape.__dict__.get("_bbox_t")
    if box is None:
        box = (tuple(float(v) for v in shape.bbox[0]), tuple(float(v) for v in shape.bbox[1]))
        shape.__dict__["_bbox_t"] = box
    lo, hi = box
    rlo, rhi = rng
    m = CULL_MARGIN
    return (
        hi[0] < rlo[0] - m
        or hi[1] < rlo[1] - m
        or hi[2] < rlo[2] - m
        or lo[0] > rhi[0] + m
        or lo[1] > rhi[1] + m
        or lo[2] > rhi[2] + m
    )


def _outside_const(X, Y, Z) -> np.ndarray:
    shape = np.broadcast_shapes(np.shape(X), np.shape(Y), np.shape(Z))
    return np.full(shape, F32(CULL_MARGIN), dtype=F32)


def _intersect_boxes(boxes: Sequence[BBox]) -> BBox:
    lo = np.max([b[0] for b in boxes], axis=0)
    hi = np.min([b[1] for b in boxes], axis=0)
    return lo, np.maximum(hi, lo)


def _union_boxes(boxes: Sequence[BBox]) -> BBox:
    return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)


def rotation_from_axes(first: Sequence[float], second: Sequence[float]) -> np.ndarray:
    """Orthonormal 3x3 matrix whose columns are local axes in LPS.

    Column 0 is ``first`` normalised, column 1 is ``second`` made orthogonal to it, column 2
    their cross product.
    """
    a = np.asarray(first, dtype=np.float64)
    a = a / np.linalg.norm(a)
    b = np.asarray(second, dtype=np.float64)
    b = b - a * float(a @ b)
    b = b / np.linalg.norm(b)
    return np.stack([a, b, np.cross(a, b)], axis=1)


class Shape:
    """Base class: ``__call__(X, Y, Z)`` returns the level (mm, negative inside).

    ``separable`` shapes depend on x and y only through cross-section maps and on z through
    per-slice scalars: on an axial grid they are cheapest evaluated directly (2D broadcasting).
    """

    bbox: BBox = _INF_BOX
    separable: bool = False

    def __call__(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def at(self, points: np.ndarray) -> np.ndarray:
        """Level at LPS points (N, 3) -> (N,), for placement checks on a few points."""
        pts = np.asarray(points, dtype=F32).reshape(-1, 3)
        out = self(pts[:, 0], pts[:, 1], pts[:, 2])
        return np.broadcast_to(out, (pts.shape[0],)).astype(np.float64)


def local_coords(X, Y, Z, center: np.ndarray, rot: np.ndarray):
    """Local coordinates q = rot^T (p - center); zero matrix terms are skipped (keeps broadcasting)."""
    d = (X - F32(center[0]), Y - F32(center[1]), Z - F32(center[2]))
    out = []
    for a in range(3):
        acc = None
        for k in range(3):
            c = float(rot[k, a])
            if abs(c) < 1e-12:
                continue
            term = d[k] if abs(c - 1.0) < 1e-12 else d[k] * F32(c)
            acc = term if acc is None else acc + term
        out.append(acc if acc is not None else np.zeros((1,), F32))
    return out


@dataclass
class Ellipsoid(Shape):
    """Ellipsoid with ``radii`` (mm) along the columns of ``rot`` (local axes in LPS).

    The level is the usual first-order distance estimate ``k0 (k0 - 1) / k1``: exact on the
    surface, close to the Euclidean distance within a few mm of it.
    """

    center: Sequence[float]
    radii: Sequence[float]
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64)
        self.radii = np.asarray(self.radii, dtype=np.float64)
        self.rot = np.asarray(self.rot, dtype=np.float64)
        half = np.sqrt(((self.rot * self.radii[None, :]) ** 2).sum(axis=1))
        self.bbox = (self.center - half, self.center + half)

    def __call__(self, X, Y, Z):
        q = local_coords(X, Y, Z, self.center, self.rot)
        r = self.radii
        k0 = (q[0] * F32(1 / r[0])) ** 2 + (q[1] * F32(1 / r[1])) ** 2 + (q[2] * F32(1 / r[2])) ** 2
        k1 = (q[0] * F32(1 / r[0] ** 2)) ** 2 + (q[1] * F32(1 / r[1] ** 2)) ** 2 + (q[2] * F32(1 / r[2] ** 2)) ** 2
        np.sqrt(k0, out=k0)
        np.sqrt(k1, out=k1)
        np.maximum(k1, F32(1e-6), out=k1)
        return k0 * (k0 - F32(1.0)) / k1


@dataclass
class Capsule(Shape):
    """A tapered tube between points ``a`` and ``b`` (LPS mm) with radii ``ra`` and ``rb`` (mm)."""

    a: Sequence[float]
    b: Sequence[float]
    ra: float
    rb: float

    def __post_init__(self) -> None:
        self.a = np.asarray(self.a, dtype=np.float64)
        self.b = np.asarray(self.b, dtype=np.float64)
        r = max(self.ra, self.rb)
        self.bbox = (np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r)

    def __call__(self, X, Y, Z):
        ab = self.b - self.a
        L2 = float(ab @ ab) or 1e-9
        px, py, pz = X - F32(self.a[0]), Y - F32(self.a[1]), Z - F32(self.a[2])
        h = px * F32(ab[0] / L2) + py * F32(ab[1] / L2) + pz * F32(ab[2] / L2)
        np.clip(h, F32(0.0), F32(1.0), out=h)
        dx = px - h * F32(ab[0])
        dy = py - h * F32(ab[1])
        dz = pz - h * F32(ab[2])
        dist = np.sqrt(dx * dx + dy * dy + dz * dz)
        return dist - (F32(self.ra) + h * F32(self.rb - self.ra))


@dataclass
class HalfSpace(Shape):
    """Points with ``normal . (p - point) <= 0`` (the normal points outward), level in mm."""

    point: Sequence[float]
    normal: Sequence[float]

    def __post_init__(self) -> None:
        self.point = np.asarray(self.point, dtype=np.float64)
        n = np.asarray(self.normal, dtype=np.float64)
        self.normal = n / np.linalg.norm(n)
        self.bbox = _INF_BOX

    def __call__(self, X, Y, Z):
        n, p = self.normal, self.point
        acc = None
        for coord, c, c0 in ((X, n[0], p[0]), (Y, n[1], p[1]), (Z, n[2], p[2])):
            if abs(c) < 1e-12:
                continue
            term = (coord - F32(c0)) * F32(c)
            acc = term if acc is None else acc + term
        return acc


class Union(Shape):
    """Points inside any of the shapes (minimum of the levels)."""

    def __init__(self, *shapes: Shape):
        self.shapes = list(shapes)
        self.bbox = _union_boxes([s.bbox for s in self.shapes])
        self.separable = all(s.separable for s in self.shapes)

    def __call__(self, X, Y, Z):
        rng = coord_range(X, Y, Z)
        out = None
        for s in self.shapes:
            if _far(s, rng):
                continue
            out = s(X, Y, Z) if out is None else np.minimum(out, s(X, Y, Z))
        return _outside_const(X, Y, Z) if out is None else out


class SmoothUnion(Shape):
    """Union with a rounded crease of width ``k`` mm (polynomial smooth minimum)."""

    def __init__(self, a: Shape, b: Shape, k: float):
        self.a, self.b, self.k = a, b, float(k)
        self.bbox = _union_boxes([a.bbox, b.bbox])

    def __call__(self, X, Y, Z):
        da, db = self.a(X, Y, Z), self.b(X, Y, Z)
        k = F32(self.k)
        h = np.clip(F32(0.5) + F32(0.5) * (db - da) / k, F32(0.0), F32(1.0))
        return db + (da - db) * h - k * h * (F32(1.0) - h)


class Intersect(Shape):
    """Points inside all the shapes (maximum of the levels)."""

    def __init__(self, *shapes: Shape):
        self.shapes = list(shapes)
        self.bbox = _intersect_boxes([s.bbox for s in self.shapes])
        self.separable = all(s.separable for s in self.shapes)

    def __call__(self, X, Y, Z):
        rng = coord_range(X, Y, Z)
        if _far(self, rng):
            return _outside_const(X, Y, Z)
        out = self.shapes[0](X, Y, Z)
        for s in self.shapes[1:]:
            out = np.maximum(out, s(X, Y, Z))
        return out


class Subtract(Shape):
    """``base`` minus every shape in ``cutters``."""

    def __init__(self, base: Shape, *cutters: Shape):
        self.base = base
        self.cutters = list(cutters)
        self.bbox = base.bbox
        self.separable = base.separable and all(c.separable for c in self.cutters)

    def __call__(self, X, Y, Z):
        rng = coord_range(X, Y, Z)
        out = self.base(X, Y, Z)
        for c in self.cutters:
            if _far(c, rng):
                continue
            out = np.maximum(out, -c(X, Y, Z))
        return out


class Offset(Shape):
    """``shape`` grown by ``distance`` mm (negative: shrunk)."""

    def __init__(self, shape: Shape, distance: float):
        self.shape, self.distance = shape, float(distance)
        self.separable = shape.separable
        lo, hi = shape.bbox
        grow = max(self.distance, 0.0)
        self.bbox = (lo - grow, hi + grow)

    def __call__(self, X, Y, Z):
        return self.shape(X, Y, Z) - F32(self.distance)


class Perturb(Shape):
    """``shape`` with a smooth bumpy surface: the level plus a sum of plane waves.

    Args:
        shape: the base shape.
        waves: (M, 3) wave vectors in rad/mm.
        phases: (M,) phases in rad.
        amplitudes: (M,) amplitudes in mm (the surface moves by up to their sum).
    """

    def __init__(self, shape: Shape, waves: np.ndarray, phases: np.ndarray, amplitudes: np.ndarray):
        self.shape = shape
        self.waves = np.asarray(waves, dtype=np.float64).reshape(-1, 3)
        self.phases = np.asarray(phases, dtype=np.float64).reshape(-1)
        self.amplitudes = np.asarray(amplitudes, dtype=np.float64).reshape(-1)
        grow = float(np.abs(self.amplitudes).sum())
        self.bbox = (shape.bbox[0] - grow, shape.bbox[1] + grow)

    @classmethod
    def random(cls, shape: Shape, rng: np.random.Generator, amplitude: float, wavelength: float, n: int = 3) -> Perturb:
        """Random bumps of total ``amplitude`` mm and typical ``wavelength`` mm."""
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        k = 2 * np.pi / (wavelength * rng.uniform(0.7, 1.4, size=n))
        amps = rng.uniform(0.5, 1.0, size=n)
        amps *= amplitude / amps.sum()
        return cls(shape, dirs * k[:, None], rng.uniform(0, 2 * np.pi, size=n), amps)

    def __call__(self, X, Y, Z):
        out = self.shape(X, Y, Z)
        for w, ph, amp in zip(self.waves, self.phases, self.amplitudes):
            arg = wave_argument(X, Y, Z, w, ph)
            out = out + F32(amp) * np.sin(arg)
        return out


def wave_argument(X, Y, Z, w: np.ndarray, phase: float) -> np.ndarray:
    """``w . p + phase`` for broadcastable coordinate arrays (float32)."""
    acc = None
    for coord, c in ((X, w[0]), (Y, w[1]), (Z, w[2])):
        if abs(c) < 1e-12:
            continue
        term = coord * F32(c)
        acc = term if acc is None else acc + term
    if acc is None:
        return np.full((1,), F32(phase))
    return acc + F32(phase)


def tube(points: Sequence[Sequence[float]], radii: Sequence[float]) -> list[Capsule]:
    """A polyline tube as a list of capsules (painted one by one: each has a small bbox)."""
    pts = np.asarray(points, dtype=np.float64)
    rad = np.asarray(radii, dtype=np.float64)
    if rad.size == 1:
        rad = np.full(len(pts), float(rad))
    return [Capsule(pts[i], pts[i + 1], float(rad[i]), float(rad[i + 1])) for i in range(len(pts) - 1)]
