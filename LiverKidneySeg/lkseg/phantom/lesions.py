"""Lesions of the phantom: liver metastases, a renal cell carcinoma and a simple renal cyst.

Placement works on the organs' implicit shapes: a liver tumour's centre is drawn among points
deep enough for its radius and then checked on points of its surface (all must lie inside the
liver), so tumours are entirely intrahepatic; an endophytic kidney tumour is checked the same
way inside its kidney; an exophytic one is centred on the kidney surface, pushed outward until
at least half of it lies outside, and must not touch the neighbouring organs.

Coordinates: LPS mm relative to the body centre.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from lkseg.phantom.organs import KidneyModel, coarse_points
from lkseg.phantom.shapes import F32, Ellipsoid, Perturb, Shape, rotation_from_axes, wave_argument

__all__ = ["Lesion", "kidney_cyst", "kidney_tumor", "liver_tumors", "sphere_directions"]

log = logging.getLogger(__name__)


@dataclass
class Lesion:
    """A lesion to paint. ``center`` is LPS mm in the body frame; ``diameter`` in mm (nominal);
    ``growth`` is "exophytic"/"endophytic" for the kidney tumour, "cortical"/"exophytic" for the
    cyst, None for liver tumours."""

    name: str
    kind: str
    organ: str
    label: str
    center: np.ndarray
    diameter: float
    shape: Shape
    hu: object
    growth: str | None = None
    extra: dict = field(default_factory=dict)
    hu_depth: float = 0.0  # depth (mm) down to which ``hu`` depends on the level


def sphere_directions(n: int = 64) -> np.ndarray:
    """``n`` nearly uniform unit vectors (Fibonacci sphere), shape (n, 3)."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


_DIRS = sphere_directions(64)


def _ball_points(center: np.ndarray, r: float, rng: np.random.Generator, n: int = 300) -> np.ndarray:
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return center[None] + d * (r * rng.random(n) ** (1 / 3))[:, None]


def lesion_shape(center: np.ndarray, diameter: float, rng: np.random.Generator, irregular: float = 0.06) -> Shape:
    """A slightly ellipsoidal, gently lobulated lesion of nominal ``diameter`` mm."""
    r = diameter / 2
    radii = r * rng.uniform(0.88, 1.12, size=3)
    radii *= r / np.prod(radii) ** (1 / 3)  # keep the nominal volume
    rot = rotation_from_axes(rng.normal(size=3), rng.normal(size=3))
    dirs = rng.normal(size=(3, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = dirs * (2 * np.pi / (diameter * rng.uniform(0.6, 1.0, size=(3, 1))))
    amps = np.full(3, irregular * diameter / 3)
    return Perturb(Ellipsoid(center, radii, rot), waves, rng.uniform(0, 2 * np.pi, 3), amps)


def _liver_hu(core: float, rim: float | None):
    if rim is None:
        return core
    core32, rim32 = F32(core), F32(rim)

    def rim_enhancing(X, Y, Z, level):
        return np.where(level > F32(-2.0), rim32, core32)

    return rim_enhancing


def liver_tumors(
    liver: Shape,
    pts: np.ndarray,
    level: np.ndarray,
    n: int,
    rng: np.random.Generator,
    hu_range: tuple[float, float],
    rim_range: tuple[float, float],
) -> list[Lesion]:
    """``n`` hypodense liver metastases entirely inside ``liver``.

    ``pts`` (N, 3) and ``level`` (N,) are the liver's levels on a coarse grid (candidate centres).

    Diameters: with n >= 2 one is 5-9.5 mm and one 12-40 mm, the others log-uniform 5-40 mm;
    with n == 1 it is 12-40 mm. Lesions keep >= 4 mm of liver between them.
    """
    if n == 0:
        return []
    if n == 1:
        sizes = [rng.uniform(12, 40)]
    else:
        others = np.exp(rng.uniform(np.log(5), np.log(40), size=n - 2))
        sizes = [rng.uniform(5, 9.5), rng.uniform(12, 40), *others]
    keep = level < -5.5
    pts, level = pts[keep], level[keep]
    placed: list[Lesion] = []
    order = np.argsort(sizes)[::-1]
    for idx in order:
        d = float(sizes[idx])
        floor = 10.5 if d >= 10 else 4.0
        for _attempt in range(6):
            lesion = _place_in(liver, pts, level, d, placed, rng)
            if lesion is not None:
                break
            d = max(floor, d * 0.8)
        if lesion is None:
            log.warning("could not place a %.1f mm liver tumour; the liver is too small", d)
            continue
        center, shape = lesion
        rim = float(rng.uniform(*rim_range)) if d >= 20 and rng.random() < 0.5 else None
        core = float(rng.uniform(*hu_range))
        les = Lesion(
            f"liver_tumor_{len(placed) + 1}",
            "liver_metastasis",
            "liver",
            "liver_tumor",
            center,
            d,
            shape,
            _liver_hu(core, rim),
        )
        les.hu_depth = 2.0 if rim is not None else 0.0
        les.extra = {"rim_enhancing": rim is not None}
        placed.append(les)
    for i, les in enumerate(placed, 1):
        les.name = f"liver_tumor_{i}"
    return placed


def _place_in(
    organ: Shape, pts: np.ndarray, level: np.ndarray, d: float, placed: list[Lesion], rng: np.random.Generator
):
    r = d / 2
    ok = level < -(r + 2.0)
    for other in placed:
        ok &= np.linalg.norm(pts - other.center[None], axis=1) > r + other.diameter / 2 * 1.15 + 4.0
    cand = np.nonzero(ok)[0]
    for _ in range(30):
        if len(cand) == 0:
            return None
        center = pts[rng.choice(cand)] + rng.uniform(-1.0, 1.0, 3)
        shape = lesion_shape(center, d, rng)
        surface = center[None] + _DIRS * (r * 1.2 + 1.0)
        if np.all(organ.at(surface) < -0.5):
            return center, shape
    return None


def _rcc_hu(base: float, necrosis: float | None, radius: float, rng: np.random.Generator):
    dirs = rng.normal(size=(3, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = dirs * (2 * np.pi / rng.uniform(7, 14, size=(3, 1)))
    phases = rng.uniform(0, 2 * np.pi, 3)
    base32 = F32(base)
    nec = None if necrosis is None else F32(necrosis)
    core = F32(-0.35 * radius)

    def heterogeneous(X, Y, Z, level):
        tex = None
        for w, ph in zip(waves, phases):
            s = np.sin(wave_argument(X, Y, Z, w, ph))
            tex = s if tex is None else tex + s
        out = base32 + F32(9.0) * tex
        if nec is not None:
            out = np.where(level + F32(2.0) * tex < core, nec + F32(4.0) * tex, out)
        return out

    return heterogeneous


def kidney_tumor(
    kidney: KidneyModel,
    growth: str,
    rng: np.random.Generator,
    obstacles: list[Shape],
    hu_base: tuple[float, float],
    hu_necrosis: tuple[float, float],
) -> Lesion | None:
    """A renal cell carcinoma, ``growth`` "exophytic" (>= 50 % outside the kidney) or
    "endophytic" (entirely inside), that does not touch ``obstacles`` (neighbour organs)."""
    outer = kidney.outer
    half_t = kidney.thickness / 2
    for _ in range(8):
        if growth == "endophytic":
            d = rng.uniform(15.0, max(16.0, min(32.0, 2 * (half_t - 3.0))))
            found = _endophytic(kidney, d, rng)
        else:
            d = rng.uniform(20.0, 45.0)
            found = _surface_site(kidney, d, rng, obstacles, (0.05, 0.35), min_outside=0.5)
        if found is not None:
            center, shape = found
            necrosis = float(rng.uniform(*hu_necrosis)) if d >= 25 and rng.random() < 0.6 else None
            hu = _rcc_hu(float(rng.uniform(*hu_base)), necrosis, d / 2, rng)
            outside = float(np.mean(outer.at(_ball_points(center, d / 2, rng, 600)) > 0))
            extra = {"fraction_outside_kidney": round(outside, 3), "necrosis": necrosis is not None}
            return Lesion(
                "kidney_tumor",
                "renal_cell_carcinoma",
                f"kidney_{kidney.side}",
                "kidney_tumor",
                center,
                d,
                shape,
                hu,
                growth,
                extra,
                0.35 * d / 2 + 3.0,
            )
    log.warning("could not place an %s kidney tumour in the %s kidney", growth, kidney.side)
    return None


def _endophytic(kidney: KidneyModel, d: float, rng: np.random.Generator):
    pts, level = coarse_points(kidney.outer, 2.0)
    r = d / 2
    cand = np.nonzero(level < -(r + 1.5))[0]
    for _ in range(30):
        if len(cand) == 0:
            return None
        center = pts[rng.choice(cand)]
        shape = lesion_shape(center, d, rng, irregular=0.04)
        if np.all(kidney.outer.at(center[None] + _DIRS * (r * 1.15 + 1.0)) < -0.3):
            return center, shape
    return None


def _surface_site(
    kidney: KidneyModel,
    d: float,
    rng: np.random.Generator,
    obstacles: list[Shape],
    push: tuple[float, float],
    min_outside: float,
):
    """A lesion centred near the kidney surface (not at the hilum), pushed outward by a fraction
    ``push`` of its radius, free of ``obstacles``."""
    outer = kidney.outer
    pts, level = coarse_points(outer, 2.0)
    near = np.abs(level) < 1.5
    local = (pts - kidney.center[None]) @ kidney.frame
    near &= local[:, 1] < 0.1 * kidney.width  # away from the hilum
    cand = np.nonzero(near)[0]
    r = d / 2
    for idx in rng.permutation(cand)[:120]:
        p = pts[idx]
        eps = 1.0
        grad = np.array([(outer.at(p + e * eps) - outer.at(p - e * eps))[0] for e in np.eye(3)])
        if np.linalg.norm(grad) < 1e-6:
            continue
        normal = grad / np.linalg.norm(grad)
        center = p + normal * r * rng.uniform(*push)
        ball = _ball_points(center, r * 1.05 + 1.0, rng, 400)
        if min_outside > 0 and np.mean(outer.at(_ball_points(center, r, rng, 400)) > 0) < min_outside:
            continue
        if any(np.any(ob.at(ball) < 1.0) for ob in obstacles):
            continue
        return center, lesion_shape(center, d, rng, irregular=0.05)
    return None


def kidney_cyst(
    kidneys: list[KidneyModel], rng: np.random.Generator, obstacles: list[Shape], avoid: list[Lesion], hu: float
) -> Lesion | None:
    """A simple (Bosniak I) cortical cyst, partly exophytic or not, away from other lesions."""
    for _ in range(10):
        kidney = kidneys[int(rng.integers(len(kidneys)))]
        d = rng.uniform(10.0, 28.0)
        found = _surface_site(kidney, d, rng, obstacles, (-0.45, 0.2), min_outside=0.0)
        if found is None:
            continue
        center, _ = found
        if any(np.linalg.norm(center - o.center) < d / 2 + o.diameter / 2 * 1.2 + 6.0 for o in avoid):
            continue
        shape = lesion_shape(center, d, rng, irregular=0.02)
        outside = float(np.mean(kidney.outer.at(_ball_points(center, d / 2, rng, 600)) > 0))
        growth = "exophytic" if outside >= 0.5 else "cortical"
        return Lesion(
            "kidney_cyst",
            "simple_cyst",
            f"kidney_{kidney.side}",
            "kidney_cyst",
            center,
            d,
            shape,
            hu,
            growth,
            {"fraction_outside_kidney": round(outside, 3)},
        )
    log.warning("could not place a kidney cyst")
    return None
