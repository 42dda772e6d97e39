"""The body wall, spine, muscles, ribs, diaphragm, lungs and heart of the phantom.

Coordinates are LPS millimetres relative to the body centre: +x toward the patient's left,
+y posterior, +z superior. Cross-section functions use only x and y (and z through a scalar
per slice), so on an axial grid most of their arithmetic stays 2D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lkseg.phantom.shapes import F32, Capsule, Shape, tube

__all__ = ["BelowDiaphragm", "BodyParams", "NeuralArch", "Table", "Torso", "Vertebrae", "rib_capsules"]

_BIG = 1e4


@dataclass
class BodyParams:
    """Sampled body habitus and landmarks (mm, LPS, relative to the body centre).

    Attributes:
        a: lateral half-width of the skin outline.
        b_ant, b_post: anterior and posterior half-depths of the skin outline.
        p: superellipse exponent of the outline (2 = ellipse, larger = boxier); the back (the
            posterior half) uses ``p + 1``, flattened on the table.
        taper: relative outline growth per 100 mm toward the head.
        t_sc: mean subcutaneous fat thickness; t_m: abdominal wall muscle thickness.
        spine_y0: y of the vertebral body centres at L3 (``z_l3``); kappa: lordosis (mm/m^2).
        vb_ax, vb_ay: lumbar vertebral body half-width and half-depth.
        vb_period, disc_h: vertebra + disc height and disc height; vb_phase: z of a disc.
        dome_r, dome_l: z of the right and left hemidiaphragm domes.
        height_cm, weight_kg: the patient (for BSA and the DICOM header).
    """

    a: float
    b_ant: float
    b_post: float
    p: float
    taper: float
    t_sc: float
    t_m: float
    spine_y0: float
    z_l3: float
    kappa: float
    vb_ax: float
    vb_ay: float
    vb_period: float
    disc_h: float
    vb_phase: float
    dome_r: float
    dome_l: float
    height_cm: float
    weight_kg: float

    def spine_y(self, z):
        """y (mm) of the vertebral body centre line at height z (lumbar lordosis)."""
        return self.spine_y0 + self.kappa * (z - self.z_l3) ** 2 / 1000.0

    def vb_scale(self, z):
        """Vertebral body size relative to L3: smaller in the thorax."""
        return np.clip(1.0 - 0.0012 * (np.asarray(z, dtype=np.float64) - self.z_l3), 0.7, 1.1)

    def outline(self, theta: np.ndarray, z: float = 0.0) -> np.ndarray:
        """Skin radius (mm) at angles ``theta`` (rad, from +x toward +y) and height ``z``."""
        u, v = np.cos(theta), np.sin(theta)
        b = np.where(v < 0, self.b_ant, self.b_post)
        p = np.where(v < 0, self.p, self.p + 1.0)
        t = np.abs(u / self.a) ** p + np.abs(v / b) ** p
        return (1.0 + self.taper * z / 100.0) * t ** (-1.0 / p)

    def inset(self, theta: np.ndarray, depth: str) -> np.ndarray:
        """Depth below the skin (mm) of the inner surface of ``depth``: "sc_fat" or "muscle"."""
        u, v = np.cos(theta), np.sin(theta)
        sc = self.t_sc * (1.0 + 0.25 * u * u - 0.3 * v)
        if depth == "sc_fat":
            return sc
        return sc + self.t_m * (1.0 + 0.1 * u * u)


class Torso(Shape):
    """The body outline moved inward by a depth that varies with the angle.

    ``level = r - (s(z) R(theta) - inset(theta))`` where ``R`` is the superellipse skin radius and
    ``inset = c0 + cu2 u^2 + cv v`` (``u, v`` = cos, sin of the angle): radial distance in mm.
    """

    separable = True

    def __init__(
        self, body: BodyParams, c0: float = 0.0, cu2: float = 0.0, cv: float = 0.0, z_max: float | None = None
    ):
        self.body, self.c0, self.cu2, self.cv = body, float(c0), float(cu2), float(cv)
        grow = 1.0 + abs(body.taper) * 3.0
        hi_z = _BIG if z_max is None else z_max
        self.bbox = (
            np.array([-body.a * grow, -body.b_ant * grow, -_BIG]),
            np.array([body.a * grow, body.b_post * grow, hi_z]),
        )

    @classmethod
    def layer(cls, body: BodyParams, depth: str) -> Torso:
        """The inner surface of "skin" (2 mm), "sc_fat" or "muscle" (the abdominal cavity)."""
        if depth == "skin":
            return cls(body, 2.0)
        c = body.t_sc
        if depth == "sc_fat":
            return cls(body, c, 0.25 * c, -0.3 * c)
        return cls(body, c + body.t_m, 0.25 * c + 0.1 * body.t_m, -0.3 * c)

    def __call__(self, X, Y, Z):
        b = self.body
        r = np.sqrt(X * X + Y * Y) + F32(1e-3)
        u = X / r
        v = Y / r
        front = v < 0
        bq = np.where(front, F32(1.0 / b.b_ant), F32(1.0 / b.b_post))
        pw = np.where(front, F32(b.p), F32(b.p + 1.0))  # a flatter back
        t = np.abs(u * F32(1.0 / b.a)) ** pw + np.abs(v * bq) ** pw
        R = np.maximum(t, F32(1e-12)) ** (F32(-1.0) / pw)
        inset = F32(self.c0)
        if self.cu2:
            inset = inset + F32(self.cu2) * u * u
        if self.cv:
            inset = inset + F32(self.cv) * v
        near = r + inset
        if b.taper:
            R = R * (F32(1.0) + F32(b.taper / 100.0) * Z)
        return near - R


class _ZLimited(Shape):
    def _zlim(self, Z, lo: float, hi: float):
        return np.maximum(F32(lo) - Z, Z - F32(hi))


class Vertebrae(Shape):
    """Vertebral bodies (``part="body"``) or intervertebral discs (``part="disc"``) along z."""

    separable = True

    def __init__(self, body: BodyParams, part: str, shrink: float = 0.0, endplate: float = 0.0):
        self.body, self.part, self.shrink, self.endplate = body, part, float(shrink), float(endplate)
        ys = body.spine_y(np.array([-400.0, 0.0, 400.0]))
        self.bbox = (
            np.array([-body.vb_ax * 1.2, ys.min() - body.vb_ay * 1.2, -_BIG]),
            np.array([body.vb_ax * 1.2, ys.max() + body.vb_ay * 1.2, _BIG]),
        )

    def __call__(self, X, Y, Z):
        b = self.body
        scale = np.clip(F32(1.0) - F32(0.0012) * (Z - F32(b.z_l3)), F32(0.7), F32(1.1))
        ax = F32(b.vb_ax) * scale
        ay = F32(b.vb_ay) * scale
        dy = Y - (F32(b.spine_y0) + F32(b.kappa / 1000.0) * (Z - F32(b.z_l3)) ** 2)
        e = np.sqrt((X / ax) ** 2 + (dy / ay) ** 2)
        level = (e - F32(1.0)) * np.minimum(ax, ay)
        # signed offset from the middle of the nearest disc (a continuous triangle wave in z)
        period, half = F32(b.vb_period), F32(0.5 * b.vb_period)
        u = np.abs(np.mod(Z - F32(b.vb_phase + 0.5 * b.disc_h) + half, period) - half)
        if self.part == "disc":
            zl = u - F32(0.5 * b.disc_h)
        else:
            zl = F32(0.5 * b.disc_h) - u
        return np.maximum(level + F32(self.shrink), zl + F32(self.endplate))


class NeuralArch(Shape):
    """Posterior elements (``part="arch"``: pedicles, laminae, spinous and transverse processes)
    or the spinal canal (``part="canal"``)."""

    separable = True

    def __init__(self, body: BodyParams, part: str):
        self.body, self.part = body, part
        ys = body.spine_y(np.array([-400.0, 0.0, 400.0]))
        self.bbox = (np.array([-45.0, ys.min() - 5, -_BIG]), np.array([45.0, ys.max() + body.vb_ay + 75, _BIG]))

    def __call__(self, X, Y, Z):
        b = self.body
        scale = np.clip(F32(1.0) - F32(0.0012) * (Z - F32(b.z_l3)), F32(0.7), F32(1.1))
        y_vb = F32(b.spine_y0) + F32(b.kappa / 1000.0) * (Z - F32(b.z_l3)) ** 2
        rc = F32(8.5)
        yc = y_vb + F32(b.vb_ay) * scale + rc + F32(1.0)
        dy = Y - yc
        dist = np.sqrt(X * X + dy * dy)
        if self.part == "canal":
            return dist - rc
        ring = np.maximum(np.abs(dist - (rc + F32(3.5))) - F32(3.5), -(dy + rc * F32(0.6)))
        spinous = np.maximum(np.abs(X) - F32(3.5), np.abs(dy - (rc + F32(22.0))) - F32(19.0))
        transverse = np.maximum(np.abs(dy + F32(1.0)) - F32(4.0), np.abs(X) - F32(30.0) * scale)
        phase = np.mod(Z - F32(b.vb_phase), F32(b.vb_period))
        gap = np.minimum(phase, F32(b.vb_period) - phase)  # distance (z) to the nearest disc middle
        # interlaminar gap of 2 mm at each disc; spinous processes span only mid-vertebra
        arch = np.maximum(np.minimum(ring, transverse), F32(2.0) - gap)
        spinous = np.maximum(spinous, F32(0.3 * b.vb_period) - gap)
        return np.minimum(arch, spinous)


class BelowDiaphragm(Shape):
    """Points at least ``gap`` mm (along z) below the diaphragm surface ``z_d(x, y)``.

    The surface is the upper envelope of two paraboloid domes (right higher) and a flat central
    tendon, so it falls laterally and posteriorly into the costophrenic recesses.
    """

    separable = True

    def __init__(self, body: BodyParams, gap: float = 0.0, above: bool = False):
        self.body, self.gap, self.above = body, float(gap), above
        yb = body.spine_y0
        self.domes = [
            (-0.42 * body.a, yb - 45.0, body.dome_r),
            (0.42 * body.a, yb - 40.0, body.dome_l),
        ]
        # z range of the surface inside the body outline: bounds the region above it
        xs = np.linspace(-body.a, body.a, 41, dtype=np.float32).reshape(1, -1)
        ys = np.linspace(-body.b_ant, body.b_post, 41, dtype=np.float32).reshape(-1, 1)
        zd = self.surface(xs, ys)
        lo, hi = float(zd.min()), float(zd.max())
        if above:
            self.bbox = (np.array([-_BIG, -_BIG, lo + gap - 5.0]), np.array([_BIG, _BIG, _BIG]))
        else:
            self.bbox = (np.array([-_BIG, -_BIG, -_BIG]), np.array([_BIG, _BIG, hi - gap + 5.0]))

    def _pieces(self, X, Y):
        """(height, gradient norm factor) of each dome and of the central tendon."""
        out = []
        for x0, y0, z0 in self.domes:
            dx = X - F32(x0)
            dy = Y - F32(y0)
            # steeper behind the dome: the posterior costophrenic recess reaches ~8-10 cm lower
            ky = np.where(dy > 0, F32(1 / 62.0**2), F32(1 / 85.0**2))
            kx = F32(1 / 75.0**2)
            drop = F32(42.0) * (dx * dx * kx + dy * dy * ky)
            norm = np.sqrt(F32(1.0) + (F32(84.0) * kx * dx) ** 2 + (F32(84.0) * ky * dy) ** 2)
            # the recesses bottom out ~12 cm below the dome (flat beyond: slope factor 1)
            steep = drop < F32(120.0)
            h = F32(z0) - np.minimum(drop, F32(120.0))
            out.append((h, np.where(steep, norm, F32(1.0))))
        dy = Y - F32(self.domes[0][1])
        kx, ky = F32(1 / 90.0**2), F32(1 / 80.0**2)
        h = F32(min(self.body.dome_r, self.body.dome_l) - 18.0) - F32(30.0) * (X * X * kx + dy * dy * ky)
        out.append((h, np.sqrt(F32(1.0) + (F32(60.0) * kx * X) ** 2 + (F32(60.0) * ky * dy) ** 2)))
        return out

    def surface(self, X, Y):
        """Height z_d(x, y) of the diaphragm (mm)."""
        pieces = self._pieces(X, Y)
        out = pieces[0][0]
        for h, _ in pieces[1:]:
            out = np.maximum(out, h)
        return out

    def __call__(self, X, Y, Z):
        # distance-like level: each piece's height difference divided by its slope factor
        out = None
        for h, norm in self._pieces(X, Y):
            if self.above:
                lev = (h + F32(self.gap) - Z) / norm
                out = lev if out is None else np.maximum(out, lev)
            else:
                lev = (Z - (h - F32(self.gap))) / norm
                out = lev if out is None else np.minimum(out, lev)
        return out

    def surface_at(self, x: float, y: float) -> float:
        return float(np.asarray(self.surface(np.float32(x), np.float32(y))))


class Table(Shape):
    """The CT table under the supine patient: a slab ``thickness`` mm thick whose top is
    ``gap`` mm below the back at the midline and curves up toward the sides."""

    separable = True

    def __init__(self, body: BodyParams, gap: float, thickness: float, half_width: float):
        self.y0, self.t, self.w = body.b_post + gap, float(thickness), float(half_width)
        self.bbox = (np.array([-half_width, self.y0 - 60.0, -_BIG]), np.array([half_width, self.y0 + thickness, _BIG]))

    def __call__(self, X, Y, Z):
        top = F32(self.y0) - X * X * F32(1 / 1500.0)
        depth = np.maximum(top - Y, Y - (top + F32(self.t)))  # < 0 inside the slab
        return np.maximum(depth, np.abs(X) - F32(self.w))


def rib_capsules(body: BodyParams, rng: np.random.Generator, radius: float = 4.5) -> list[Capsule]:
    """Ribs as capsule chains following the body wall, sloping down anteriorly.

    Rib k leaves the spine at ``z_top - k * pitch`` and descends ``drop`` mm toward the front;
    the lowest ribs stop laterally (floating ribs), the others reach the costal cartilage.
    """
    caps: list[Capsule] = []
    pitch = rng.uniform(26.0, 31.0)
    drop = rng.uniform(55.0, 80.0)
    z_t12 = body.z_l3 + 3.0 * body.vb_period + rng.uniform(0.0, 15.0)  # head of the 12th rib
    z_top = z_t12 + 11 * pitch
    n_ribs = 12
    for side in (-1.0, 1.0):
        for k in range(n_ribs):
            z0 = z_top - k * pitch
            if z0 < -200:
                break
            # posterior start (near the transverse process) to the anterior end; floating ribs stop early
            end = 0.55 if k >= 10 else (0.92 if k >= 7 else 1.0)
            t = np.linspace(0.0, end, 9)
            theta = np.pi / 2 - side * (0.55 + t * (np.pi - 0.55 - 0.45))
            depth = body.inset(theta, "sc_fat") + 0.45 * body.t_m + radius
            zs = z0 - drop * t - (k >= 7) * 8.0 * t
            rad = body.outline(theta, float(z0)) - depth
            pts = np.stack([rad * np.cos(theta), rad * np.sin(theta), zs], axis=1)
            head = np.array([[side * 35.0, float(body.spine_y(z0)) + 22.0, z0 + 6.0]])
            pts = np.concatenate([head, pts], axis=0)
            caps.extend(tube(pts, radius))
    return caps
