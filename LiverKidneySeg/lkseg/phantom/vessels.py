"""Vessels of the phantom as capsule chains: aorta, inferior vena cava, portal and hepatic veins.

The intrahepatic trees are grown inside the (calibrated) liver: branches run from the porta
hepatis (portal vein) or from the inferior vena cava below the dome (hepatic veins) to random
points deep inside the liver, with radii tapering from 7 to ~2 mm.

Coordinates: LPS mm relative to the body centre (+x patient left, +y posterior, +z superior).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lkseg.phantom.shapes import Capsule, tube

__all__ = ["aorta_path", "branch", "grow", "hepatic_tree", "ivc_path", "portal_tree"]


def aorta_path(
    spine_y: Callable[[float], float], vb_ay: float, radius: float, rng: np.random.Generator
) -> list[Capsule]:
    """Descending aorta, left-anterolateral to the spine in the thorax, anterior-left of the lumbar
    spine in the abdomen, dividing into the common iliac arteries at about L4."""
    x_abd = rng.uniform(8, 18)
    z_bif = rng.uniform(-125, -100)
    zs = [260.0, 160.0, 90.0, 40.0, -20.0, z_bif + 15]
    xs = [26.0, 22.0, 14.0, x_abd, x_abd, x_abd - 4]
    ys = [spine_y(260) - 2, spine_y(160) - 8, spine_y(90) - vb_ay - 8, None, None, None]
    pts = []
    for x, y, z in zip(xs, ys, zs):
        yy = y if y is not None else spine_y(z) - vb_ay - radius - rng.uniform(2, 6)
        pts.append([x, yy, z])
    r_thorax = radius * 1.15
    caps = tube(pts, [r_thorax, r_thorax, radius * 1.05, radius, radius, radius * 0.9])
    fork = np.array(pts[-1])
    for side in (-1.0, 1.0):
        mid = fork + np.array([side * 22.0, 2.0, -45.0])
        end = fork + np.array([side * 55.0, 20.0, -110.0])
        caps += tube([fork, mid, end], [radius * 0.7, radius * 0.6, radius * 0.55])
    return caps


def ivc_path(
    spine_y: Callable[[float], float], vb_ay: float, dome_z: float, rng: np.random.Generator
) -> tuple[list[Capsule], np.ndarray]:
    """Inferior vena cava right of the aorta, running up behind the liver into the right atrium.

    Returns the capsules and the point below the dome where the hepatic veins join it.
    """
    r = rng.uniform(9.0, 12.0)
    x = -rng.uniform(20, 28)
    pts = [
        [x + 5, spine_y(-230) - vb_ay + 5, -230.0],
        [x + 4, spine_y(-110) - vb_ay - 6, -110.0],
        [x, spine_y(-20) - vb_ay - r - 4, -20.0],
        [x - 2, spine_y(40) - vb_ay - r - 8, 40.0],
        [x + 2, spine_y(dome_z) - vb_ay - 22, dome_z - 15],
        [x + 12, spine_y(dome_z) - vb_ay - 45, dome_z + 30],
    ]
    junction = np.array(pts[4], dtype=float)
    return tube(pts, [r * 0.9, r, r, r * 1.05, r * 1.1, r * 1.2]), junction


def branch(
    start: np.ndarray, end: np.ndarray, r0: float, r1: float, rng: np.random.Generator, n: int = 4, wiggle: float = 0.08
) -> list[Capsule]:
    """A gently curved tapered vessel from ``start`` to ``end`` (``n`` capsules)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    t = np.linspace(0, 1, n + 1)
    pts = start[None] + t[:, None] * (end - start)[None]
    length = float(np.linalg.norm(end - start))
    jitter = rng.normal(scale=wiggle * length, size=(n + 1, 3)) * np.sin(np.pi * t)[:, None]
    return tube(pts + jitter, r0 + (r1 - r0) * t)


def _pick(points: np.ndarray, near: np.ndarray, rng: np.random.Generator, k: int = 40) -> np.ndarray:
    """A random point among the ``k`` candidates nearest to ``near``."""
    d = np.linalg.norm(points - near[None], axis=1)
    idx = np.argsort(d)[: max(1, min(k, len(d)))]
    return points[rng.choice(idx)]


def grow(
    start: np.ndarray,
    direction: np.ndarray,
    radius: float,
    depth: int,
    deep: np.ndarray,
    rng: np.random.Generator,
    children: int = 2,
) -> list[Capsule]:
    """Branches from ``start`` toward random deep points ahead (within ~60 degrees of
    ``direction``), each ~8-16 radii long, radii shrinking by ~0.78 per level (Murray's law),
    recursing ``depth`` levels."""
    caps: list[Capsule] = []
    if depth <= 0 or radius < 1.1 or len(deep) == 0:
        return caps
    rel = deep - start[None]
    dist = np.linalg.norm(rel, axis=1)
    unit = direction / max(np.linalg.norm(direction), 1e-9)
    cos = (rel @ unit) / np.maximum(dist, 1e-9)
    ok = (dist > 5 * radius) & (dist < 14 * radius + 10) & (cos > 0.2)
    cand = np.nonzero(ok)[0]
    if len(cand) == 0:
        return caps
    chosen: list[np.ndarray] = []
    for _ in range(children):
        for _try in range(6):
            end = deep[rng.choice(cand)]
            if all(np.linalg.norm(end - c) > 4 * radius for c in chosen):
                break
        else:
            continue
        chosen.append(end)
        r_child = radius * rng.uniform(0.72, 0.84)
        caps += branch(start, end, radius, r_child, rng, n=2, wiggle=0.06)
        caps += grow(end, end - start, r_child, depth - 1, deep, rng, children=2)
    return caps


def portal_tree(hilum: np.ndarray, deep: np.ndarray, rng: np.random.Generator) -> list[Capsule]:
    """Intrahepatic portal vein: right and left branches from the porta hepatis, each dividing
    into sectoral, segmental and subsegmental branches toward random deep points of its side.

    Args:
        hilum: porta hepatis (LPS mm), just inside the liver.
        deep: (N, 3) points at least ~8 mm deep inside the liver.
    """
    caps: list[Capsule] = []
    right_pts = deep[deep[:, 0] < hilum[0] - 10]
    left_pts = deep[deep[:, 0] > hilum[0] + 15]
    for pts, offset, r_main, n in (
        (right_pts, np.array([-35.0, 10.0, 10.0]), 5.5, 4),
        (left_pts, np.array([40.0, -25.0, 12.0]), 4.5, 3),
    ):
        if len(pts) < 10:
            continue
        end = _pick(pts, hilum + offset, rng)
        caps += branch(hilum, end, r_main, r_main * 0.85, rng, n=3)
        caps += grow(end, end - hilum, r_main * 0.8, 3, pts, rng, children=n)
    return caps


def hepatic_tree(
    junction: np.ndarray, deep: np.ndarray, rng: np.random.Generator, trunks: dict | None = None
) -> list[Capsule]:
    """Right, middle and left hepatic veins fanning out from the IVC below the dome and branching
    as they run antero-inferiorly through the liver.

    Args:
        trunks: if given, receives each vein's trunk centreline, ``"right"``/``"middle"``/
            ``"left"`` -> (n, 3) LPS points from the junction outward (no extra random draws).
    """
    caps: list[Capsule] = []
    aims = [np.array([-65.0, 20.0, -45.0]), np.array([-15.0, -50.0, -50.0]), np.array([45.0, -40.0, -25.0])]
    for name, aim in zip(("right", "middle", "left"), aims):
        end = _pick(deep, junction + aim, rng, k=60)
        if np.linalg.norm(end - junction) < 25:
            continue
        r0 = rng.uniform(5.0, 6.5)
        trunk = branch(junction, end, r0, r0 * 0.8, rng, n=3)
        if trunks is not None:
            trunks[name] = np.array([c.a for c in trunk] + [trunk[-1].b])
        caps += trunk
        caps += grow(end, end - junction, r0 * 0.75, 2, deep, rng, children=2)
        for _ in range(2):  # tributaries joining along the trunk
            start = junction + (end - junction) * rng.uniform(0.4, 0.85)
            caps += grow(start, aim + rng.normal(scale=30.0, size=3), r0 * 0.55, 2, deep, rng, children=1)
    return caps
