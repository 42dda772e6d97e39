"""Hollow organs and the pancreas: stomach, duodenum, small bowel, colon, pancreas and the
extrahepatic portal system (splenic vein, superior mesenteric vein, main portal vein).

Each hollow organ is a list of :class:`Tract` segments: a capsule chain painted twice, first
as wall (enhancing) then, shrunk by the wall thickness, as lumen filled with fluid, gas,
positive oral contrast or stool (gas floats anteriorly: lowest LPS y in a supine patient).

Coordinates: LPS mm relative to the body centre (+x patient left, +y posterior, +z superior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lkseg.phantom.shapes import F32, Capsule, Union, tube, wave_argument

__all__ = ["Landmarks", "Tract", "colon", "pancreas_and_veins", "small_bowel", "stomach_and_duodenum"]


@dataclass
class Landmarks:
    """Positions the hollow organs are laid out around (mm, LPS, body frame)."""

    cavity_a: float  # lateral half-width of the abdominal cavity
    front_y: float  # y of the anterior abdominal wall (inner surface) at the midline
    spine_y: float  # y of the lumbar vertebral bodies
    dome_l: float  # z of the left hemidiaphragm dome
    pancreas_z: float  # z of the pancreas body
    spleen_c: np.ndarray
    bottom_z: float  # lowest z worth filling with bowel


@dataclass
class Tract:
    """One hollow-organ segment: capsules, wall thickness (mm) and lumen content.

    ``content`` is "fluid", "gas", "contrast", "stool" or "fluid_gas" (air-fluid level with
    ``gas_y``: gas where y < gas_y).
    """

    capsules: list[Capsule]
    wall: float
    content: str
    gas_y: float = -1e9
    texture: tuple | None = None

    def shape(self) -> Union:
        return Union(*self.capsules)

    def lumen_hu(self, hu: dict[str, float]):
        """HU function of the lumen for :class:`~lkseg.phantom.raster.Layer`."""
        content = self.content
        if content in ("fluid", "gas", "contrast"):
            return hu[{"fluid": "gut_fluid", "gas": "gas", "contrast": "oral_contrast"}[content]]
        if content == "fluid_gas":
            gas_y, fluid, gas = F32(self.gas_y), F32(hu["gut_fluid"]), F32(hu["gas"])

            def fluid_gas(X, Y, Z, level):
                return np.where(gas_y > Y, gas, fluid)

            return fluid_gas
        waves, phases = self.texture if self.texture is not None else (np.eye(3) * 0.4, np.zeros(3))
        stool, gas = F32(hu["stool"]), F32(hu["gas"])

        def mottled(X, Y, Z, level):
            tex = None
            for w, ph in zip(waves, phases):
                s = np.sin(wave_argument(X, Y, Z, w, ph))
                tex = s if tex is None else tex + s
            return np.where(tex > F32(0.9), gas, stool + F32(20.0) * tex)

        return mottled


def _chain(points, radii, rng: np.random.Generator, jitter: float = 6.0) -> list[Capsule]:
    pts = np.asarray(points, float) + rng.normal(scale=jitter, size=(len(points), 3))
    return tube(pts, radii)


def _gas_level(caps: list[Capsule], fraction: float) -> float:
    lo = min(min(c.a[1] - c.ra, c.b[1] - c.rb) for c in caps)
    hi = max(max(c.a[1] + c.ra, c.b[1] + c.rb) for c in caps)
    return lo + fraction * (hi - lo)


def stomach_and_duodenum(
    lm: Landmarks, head: np.ndarray, rng: np.random.Generator, contrast: bool
) -> tuple[Tract, Tract]:
    """The J-shaped stomach under the left dome and the C-loop of the duodenum around the
    pancreatic head ``head``."""
    a, sy, dz = lm.cavity_a, lm.spine_y, lm.dome_l
    k = rng.uniform(0.75, 1.15)  # distension
    pts = [
        [0.40 * a, sy - 5, dz - 32],
        [0.43 * a, sy - 45, dz - 68],
        [0.30 * a, sy - 72, dz - 105],
        [0.02 * a, sy - 80, dz - 118],
        [head[0] + 8, head[1] - 28, head[2] + 22],
    ]
    caps = _chain(pts, np.array([31, 29, 24, 17, 11]) * k, rng, jitter=5.0)
    content = "contrast" if contrast and rng.random() < 0.5 else "fluid_gas"
    stomach = Tract(caps, rng.uniform(3.0, 5.0), content, gas_y=_gas_level(caps, rng.uniform(0.15, 0.4)))
    duo_pts = [
        pts[-1],
        [head[0] - 14, head[1] - 18, head[2] + 18],
        [head[0] - 24, head[1] - 2, head[2] - 5],
        [head[0] - 20, head[1] + 4, head[2] - 45],
        [head[0] + 20, head[1] + 6, head[2] - 58],
        [head[0] + 52, head[1] - 4, head[2] - 38],
    ]
    duo = Tract(_chain(duo_pts, [11, 12, 12, 11, 10, 10], rng, jitter=3.0), 2.5, "contrast" if contrast else "fluid")
    return stomach, duo


def colon(lm: Landmarks, liver_low_z: float, rng: np.random.Generator) -> list[Tract]:
    """Ascending, transverse and descending colon framing the abdomen, with mottled stool and gas."""
    a, sy, fy = lm.cavity_a, lm.spine_y, lm.front_y
    hf_z = liver_low_z - rng.uniform(0, 15)
    pts = [
        [-0.60 * a, sy - 35, -165],
        [-0.66 * a, sy - 25, -90],
        [-0.58 * a, sy - 50, hf_z],
        [-0.25 * a, fy + 38, hf_z - rng.uniform(10, 40)],
        [0.25 * a, fy + 38, hf_z - rng.uniform(5, 30)],
        [0.64 * a, sy - 30, lm.spleen_c[2] - rng.uniform(55, 75)],
        [0.70 * a, sy - 5, -60],
        [0.62 * a, sy - 25, -150],
        [0.2 * a, sy - 50, -195],
    ]
    radii = rng.uniform(16, 24, size=len(pts))
    caps = _chain(pts, radii, rng, jitter=6.0)
    tracts = []
    for i in range(0, len(caps), 2):
        part = caps[i : i + 2]
        dirs = rng.normal(size=(3, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        tex = (dirs * (2 * np.pi / rng.uniform(14, 24, size=(3, 1))), rng.uniform(0, 2 * np.pi, 3))
        tracts.append(Tract(part, 2.0, "stool", texture=tex))
    return tracts


def small_bowel(
    lm: Landmarks, start: np.ndarray, rng: np.random.Generator, contrast: bool, steps: int = 60
) -> list[Tract]:
    """Jejunal and ileal loops: a reflected random walk in the central and lower abdomen."""
    a, sy, fy = lm.cavity_a, lm.spine_y, lm.front_y
    center = np.array([0.0, 0.5 * (fy + sy - 20), 0.5 * (lm.bottom_z - 30)])
    half = np.array([0.55 * a, 0.5 * (sy - 20 - fy), max(40.0, 0.5 * (-30 - lm.bottom_z))])
    p = np.asarray(start, float)
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    loops: list[Tract] = []
    pts = [p]
    for i in range(steps):
        d = d + rng.normal(scale=0.7, size=3)
        q = p + 22.0 * d / np.linalg.norm(d)
        rel = (q - center) / half
        if np.linalg.norm(rel) > 1.0:  # turn back inside the region
            d = -rel / np.linalg.norm(rel) + rng.normal(scale=0.3, size=3)
            q = p + 22.0 * d / np.linalg.norm(d)
        d = (q - p) / np.linalg.norm(q - p)
        pts.append(q)
        p = q
        if len(pts) == 7 or i == steps - 1:
            r = rng.uniform(10.0, 14.0)
            content = (
                rng.choice(["fluid", "fluid", "contrast", "gas"])
                if contrast
                else rng.choice(["fluid", "fluid", "fluid", "gas"])
            )
            loops.append(Tract(tube(np.array(pts), r), 2.2, str(content)))
            pts = [p]
    return loops


def pancreas_and_veins(
    lm: Landmarks, rng: np.random.Generator
) -> tuple[list[Capsule], list[Capsule], np.ndarray, np.ndarray]:
    """Pancreas (head, neck, body, tail toward the splenic hilum) and the splenic and superior
    mesenteric veins meeting behind its neck.

    Returns ``(pancreas capsules, vein capsules, pancreatic head centre, portal confluence)``.
    """
    sy, z = lm.spine_y, lm.pancreas_z
    tail = np.array(lm.spleen_c) + np.array([-35.0, -15.0, -15.0])
    pts = np.array(
        [
            [-38, sy - 45, z - 18],
            [-5, sy - 60, z],
            [35, sy - 52, z + 8],
            [0.5 * (35 + tail[0]), 0.5 * (sy - 52 + tail[1]), 0.5 * (z + 8 + tail[2])],
            tail,
        ],
        dtype=float,
    ) + rng.normal(scale=4.0, size=(5, 3))
    k = rng.uniform(0.85, 1.15)
    pancreas = tube(pts, np.array([16, 11, 10, 9, 8]) * k)
    behind = np.array([0.0, 12.0 * k, -3.0])
    confluence = pts[1] + behind
    veins = tube([pts[4] + behind * 0.9, pts[3] + behind, pts[2] + behind, confluence], [4.0, 4.5, 5.0, 5.5])
    veins += tube(
        [confluence, confluence + np.array([-4.0, -10.0, -45.0]), confluence + np.array([-6.0, -14.0, -95.0])],
        [6.0, 5.5, 5.0],
    )
    return pancreas, veins, pts[0], confluence
