"""Configuration of the synthetic CT phantom: grid, contrast phase, imaging and lesions.

The anatomy is defined in patient LPS millimetres around ``center_lps`` (the body centre,
default the origin) and then sampled onto the requested grid, so a flipped, permuted or oblique
grid shows the same anatomy at the same physical places. ``size_ijk`` and ``spacing`` are along
the grid's own i, j, k axes; by default the grid is centred on the body centre.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from lkseg.errors import InputError
from lkseg.phantom.hu import PHASES
from lkseg.volume import Grid

__all__ = [
    "KIDNEY_TUMOR_KINDS",
    "PhantomConfig",
    "direction_from_orientation",
    "oblique_direction",
]

KIDNEY_TUMOR_KINDS = ("random", "exophytic", "endophytic", "none")
_SIDES = ("random", "right", "left")
_LETTERS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
_MAX_VOXELS = 1024 * 1024 * 1024


def direction_from_orientation(code: str) -> np.ndarray:
    """3x3 LPS direction (columns = i, j, k unit vectors) of an orientation code.

    The letters name where i, j and k point (``"LPS"`` is the usual axial DICOM grid, ``"RAS"``
    the NIfTI RAS+ storage, ``"PIL"`` a sagittal stack).

    Raises:
        InputError: if the code is not three letters from L/R, P/A, S/I naming three axes.
    """
    text = str(code).strip().upper()
    if len(text) != 3 or any(c not in _LETTERS for c in text):
        raise InputError(f"orientation code {code!r} must be 3 letters from L/R, P/A, S/I, e.g. LPS or RAS")
    cols = np.array([_LETTERS[c] for c in text], dtype=np.float64).T
    if abs(abs(np.linalg.det(cols)) - 1.0) > 1e-9:
        raise InputError(f"orientation code {code!r} names an axis twice; use one of L/R, one of P/A, one of S/I")
    return cols


def oblique_direction(direction: np.ndarray, degrees: float, axis: str = "x") -> np.ndarray:
    """``direction`` rotated by ``degrees`` about the patient (LPS) ``axis`` (a gantry tilt for x)."""
    t = math.radians(float(degrees))
    c, s = math.cos(t), math.sin(t)
    rot = {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]
    return rot @ np.asarray(direction, dtype=np.float64)


def _vec3(value, name: str, cast=float) -> tuple:
    try:
        seq = tuple(cast(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be 3 numbers, got {value!r}") from exc
    if len(seq) != 3:
        raise InputError(f"{name} must be 3 numbers (i, j, k), got {len(seq)}: {value!r}")
    return seq


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that defines a phantom; the same config always gives identical arrays.

    Attributes:
        seed: random seed (>= 0); anatomy, lesions, HU values and noise derive from it.
        size_ijk: voxels along i, j, k.
        spacing: mm along i, j, k.
        direction: 3x3 LPS direction (columns = i, j, k unit vectors), 9 numbers row-major
            or None for the identity (axial LPS). Any orthonormal matrix is accepted.
        origin: LPS mm of voxel (0, 0, 0); None centres the grid on ``fov_center_lps``.
        center_lps: LPS mm of the body centre (the anatomy is built around it).
        fov_center_lps: LPS mm of the grid centre when ``origin`` is None (None: the body
            centre); move it to vary the scan range or table position relative to the anatomy.
        phase: "portal_venous" (default), "unenhanced", "arterial" or "nephrographic".
        noise_sd: image noise standard deviation in HU (after blur; 0: none).
        blur_mm: Gaussian sigma (mm) of the scanner point-spread function; a voxel-size term
            (the box of the voxel, sd = spacing / sqrt(12)) is added per axis unless 0.
        kidney_tumor: "random", "exophytic" (>= 50 % outside the kidney), "endophytic"
            (entirely inside) or "none".
        kidney_tumor_side: "random", "right" or "left".
        n_liver_tumors: number of liver tumours (0-12); with two or more, at least one is
            < 10 mm and at least one >= 10 mm in diameter.
        kidney_cyst: add a simple (Bosniak I) cyst to one kidney.
        variation: 0 gives the mean anatomy, 1 (default) the full adult variation.
    """

    seed: int = 0
    size_ijk: tuple[int, int, int] = (256, 256, 100)
    spacing: tuple[float, float, float] = (1.6, 1.6, 2.5)
    direction: tuple[float, ...] | None = None
    origin: tuple[float, float, float] | None = None
    center_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fov_center_lps: tuple[float, float, float] | None = None
    phase: str = "portal_venous"
    noise_sd: float = 12.0
    blur_mm: float = 0.5
    kidney_tumor: str = "random"
    kidney_tumor_side: str = "random"
    n_liver_tumors: int = 3
    kidney_cyst: bool = True
    variation: float = 1.0

    def __post_init__(self) -> None:
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        object.__setattr__(self, "seed", int(seed))
        size = _vec3(self.size_ijk, "size_ijk", cast=_as_int)
        if min(size) < 4 or max(size) > 4096:
            raise InputError(f"size_ijk must be 3 sizes between 4 and 4096 voxels, got {size}")
        if math.prod(size) > _MAX_VOXELS:
            raise InputError(f"size_ijk {size} has {math.prod(size)} voxels; the limit is {_MAX_VOXELS}")
        object.__setattr__(self, "size_ijk", size)
        spacing = _vec3(self.spacing, "spacing")
        if not all(math.isfinite(s) and 0.05 <= s <= 20.0 for s in spacing):
            raise InputError(f"spacing must be 3 finite values between 0.05 and 20 mm, got {spacing}")
        object.__setattr__(self, "spacing", spacing)
        if self.direction is not None:
            mat = np.asarray(self.direction, dtype=np.float64)
            if mat.size != 9 or not np.all(np.isfinite(mat)):
                raise InputError(f"direction must be 9 finite numbers (a 3x3 matrix), got {self.direction!r}")
            mat = mat.reshape(3, 3)
            if not np.allclose(mat.T @ mat, np.eye(3), atol=1e-4):
                raise InputError(
                    f"direction must be orthonormal (columns = unit i, j, k axes), got {mat.round(4).tolist()}"
                )
            object.__setattr__(self, "direction", tuple(float(v) for v in mat.reshape(-1)))
        if self.origin is not None:
            object.__setattr__(self, "origin", _vec3(self.origin, "origin"))
        object.__setattr__(self, "center_lps", _vec3(self.center_lps, "center_lps"))
        if self.fov_center_lps is not None:
            object.__setattr__(self, "fov_center_lps", _vec3(self.fov_center_lps, "fov_center_lps"))
        for name in ("origin", "center_lps", "fov_center_lps"):
            value = getattr(self, name)
            if value is not None and not all(math.isfinite(v) for v in value):
                raise InputError(f"{name} must be finite, got {value}")
        if self.phase not in PHASES:
            raise InputError(f"phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        _check_range("noise_sd", self.noise_sd, 0.0, 200.0, "HU")
        _check_range("blur_mm", self.blur_mm, 0.0, 10.0, "mm")
        _check_range("variation", self.variation, 0.0, 1.5, "")
        if self.kidney_tumor not in KIDNEY_TUMOR_KINDS:
            raise InputError(f"kidney_tumor must be one of {', '.join(KIDNEY_TUMOR_KINDS)}, got {self.kidney_tumor!r}")
        if self.kidney_tumor_side not in _SIDES:
            raise InputError(f"kidney_tumor_side must be one of {', '.join(_SIDES)}, got {self.kidney_tumor_side!r}")
        n = self.n_liver_tumors
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= 12:
            raise InputError(f"n_liver_tumors must be an integer from 0 to 12, got {n!r}")
        object.__setattr__(self, "n_liver_tumors", int(n))
        object.__setattr__(self, "kidney_cyst", bool(self.kidney_cyst))

    # -- geometry ---------------------------------------------------------------------------
    @property
    def direction_matrix(self) -> np.ndarray:
        """The 3x3 direction (identity when ``direction`` is None)."""
        return np.eye(3) if self.direction is None else np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def grid(self) -> Grid:
        """The voxel grid: centred on ``fov_center_lps`` (default the body centre) unless
        ``origin`` is given."""
        size = np.asarray(self.size_ijk, dtype=np.float64)
        mat = self.direction_matrix @ np.diag(self.spacing)
        if self.origin is None:
            center = self.center_lps if self.fov_center_lps is None else self.fov_center_lps
            origin = np.asarray(center) - mat @ ((size - 1) / 2.0)
        else:
            origin = np.asarray(self.origin)
        shape = (self.size_ijk[2], self.size_ijk[1], self.size_ijk[0])
        return Grid(shape, self.spacing, tuple(float(v) for v in origin), self.direction_matrix)

    def blur_sigma_vox(self) -> tuple[float, float, float]:
        """Blur sigma along i, j, k in voxels: PSF ``blur_mm`` combined with the voxel box."""
        if self.blur_mm <= 0:
            return (0.0, 0.0, 0.0)
        return tuple(math.sqrt((self.blur_mm / s) ** 2 + 1.0 / 12.0) for s in self.spacing)  # type: ignore[return-value]

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dict (``from_dict`` inverts it)."""
        out = asdict(self)
        for key in ("size_ijk", "spacing", "direction", "origin", "center_lps", "fov_center_lps"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PhantomConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown phantom config key(s): {', '.join(unknown)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})

    @classmethod
    def for_orientation(cls, code: str, oblique_deg: float = 0.0, **kwargs) -> PhantomConfig:
        """A config whose grid has orientation ``code`` (e.g. "RAS"), optionally tilted."""
        direction = direction_from_orientation(code)
        if oblique_deg:
            direction = oblique_direction(direction, oblique_deg)
        return cls(direction=tuple(direction.reshape(-1)), **kwargs)


def _as_int(value) -> int:
    if isinstance(value, bool):
        raise ValueError("bool")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("not an integer")
    return int(value)


def _check_range(name: str, value, lo: float, hi: float, unit: str) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number, got {value!r}") from exc
    if not (math.isfinite(v) and lo <= v <= hi):
        raise InputError(f"{name} must be between {lo:g} and {hi:g} {unit}".rstrip() + f", got {value!r}")
