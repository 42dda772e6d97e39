"""The :class:`Volume` value: a numpy array that never travels without its geometry.

Conventions (stated once, used everywhere in the core):

* ``array`` is numpy in **ZYX** order, i.e. ``array[k, j, i]`` (SimpleITK's
  ``GetArrayFromImage`` order and Slicer's ``arrayFromVolume`` order).
* ``spacing`` is ``(si, sj, sk)`` in mm along the index axes i, j, k (ITK order, **not** ZYX).
* ``origin`` is the physical position in **LPS** mm (DICOM/ITK patient coordinates) of the
  centre of voxel ``(i, j, k) = (0, 0, 0)``.
* ``direction`` is a 3x3 matrix whose **columns** are the LPS unit vectors of the i, j and k
  axes (ITK's direction cosines).

So a continuous index ``(i, j, k)`` maps to ``LPS = origin + direction @ diag(spacing) @ ijk``.
3D Slicer works in **RAS**, which differs from LPS by one sign flip of x and y:
``RAS = diag(-1, -1, 1) @ LPS``. :meth:`Grid.ijk_to_ras` is exactly Slicer's IJKToRAS matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lkseg.errors import GeometryMismatchError, InputError

__all__ = ["LPS_TO_RAS", "Grid", "Volume", "orientation_code"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_LPS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


def _as_vec3(value: Sequence[float] | np.ndarray, name: str) -> tuple[float, float, float]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise InputError(f"{name} must be 3 finite numbers, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _as_direction(value: Sequence[float] | np.ndarray | None) -> np.ndarray:
    if value is None:
        mat = np.eye(3)
    else:
        mat = np.array(value, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(mat)):
        raise InputError("direction contains non-finite values")
    if not np.allclose(mat.T @ mat, np.eye(3), atol=1e-4):
        raise InputError(f"direction is not orthonormal: {mat.tolist()}")
    mat.setflags(write=False)
    return mat


def orientation_code(direction: np.ndarray) -> str:
    """Three-letter code of the anatomical direction toward which i, j and k increase.

    Uses the LPS letters of DICOM/nibabel ``aff2axcodes`` style: a standard axial DICOM CT
    (i toward patient left, j toward posterior, k toward superior) is ``"LPS"``; a NIfTI in
    RAS+ storage is ``"RAS"``. Oblique axes get the letter of their dominant component.
    """
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    letters = []
    for col in range(3):
        axis = direction[:, col]
        dominant = int(np.argmax(np.abs(axis)))
        positive, negative = _LPS_LETTERS[dominant]
        letters.append(positive if axis[dominant] > 0 else negative)
    return "".join(letters)


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid: shape, spacing, origin and direction, without voxel values.

    Attributes:
        shape: array shape in ZYX order ``(nk, nj, ni)``.
        spacing: ``(si, sj, sk)`` mm along i, j, k.
        origin: LPS mm of the centre of voxel (0, 0, 0).
        direction: 3x3, columns are the LPS unit vectors of i, j, k.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: _as_direction(None))

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"grid shape must be 3 positive sizes (ZYX), got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        spacing = _as_vec3(self.spacing, "spacing")
        if min(spacing) <= 0:
            raise InputError(f"spacing must be positive, got {spacing}")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", _as_vec3(self.origin, "origin"))
        object.__setattr__(self, "direction", _as_direction(self.direction))

    # -- sizes -----------------------------------------------------------------------------
    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k (ITK ``GetSize`` order)."""
        return (self.shape[2], self.shape[1], self.shape[0])

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (1 mL = 1000 mm^3)."""
        return self.voxel_volume_mm3 / 1000.0

    @property
    def orientation(self) -> str:
        """Orientation code, see :func:`orientation_code` (e.g. ``"LPS"``)."""
        return orientation_code(self.direction)

    # -- matrices --------------------------------------------------------------------------
    @property
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix from continuous index (i, j, k, 1) to LPS mm."""
        mat = np.eye(4)
        mat[:3, :3] = self.direction @ np.diag(self.spacing)
        mat[:3, 3] = self.origin
        return mat

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix from (i, j, k, 1) to RAS mm: Slicer's ``IJKToRASMatrix``."""
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        return flip @ self.ijk_to_lps

    def index_to_lps(self, ijk: np.ndarray | Sequence[float]) -> np.ndarray:
        """Map continuous indices, shape (3,) or (N, 3) in **(i, j, k)** order, to LPS mm."""
        pts = np.asarray(ijk, dtype=np.float64)
        out = pts.reshape(-1, 3) @ (self.direction @ np.diag(self.spacing)).T + np.asarray(self.origin)
        return out.reshape(pts.shape)

    def lps_to_index(self, lps: np.ndarray | Sequence[float]) -> np.ndarray:
        """Map LPS mm, shape (3,) or (N, 3), to continuous (i, j, k) indices (not rounded)."""
        pts = np.asarray(lps, dtype=np.float64)
        inv = np.linalg.inv(self.direction @ np.diag(self.spacing))
        out = (pts.reshape(-1, 3) - np.asarray(self.origin)) @ inv.T
        return out.reshape(pts.shape)

    def index_to_ras(self, ijk: np.ndarray | Sequence[float]) -> np.ndarray:
        """Map (i, j, k) indices to RAS mm (Slicer coordinates)."""
        lps = self.index_to_lps(ijk)
        return lps * np.array([-1.0, -1.0, 1.0])

    def ras_to_index(self, ras: np.ndarray | Sequence[float]) -> np.ndarray:
        """Map RAS mm (Slicer coordinates) to continuous (i, j, k) indices."""
        lps = np.asarray(ras, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])
        return self.lps_to_index(lps)

    def contains_index(self, ijk: np.ndarray | Sequence[float]) -> np.ndarray | bool:
        """Whether continuous (i, j, k) indices round to a voxel inside the grid."""
        idx = np.rint(np.asarray(ijk, dtype=np.float64)).astype(np.int64)
        size = np.array(self.size_ijk)
        inside = np.all((idx >= 0) & (idx < size), axis=-1)
        return bool(inside) if inside.ndim == 0 else inside

    def corners_lps(self) -> np.ndarray:
        """The 8 corner voxel centres in LPS mm, shape (8, 3)."""
        ni, nj, nk = (s - 1 for s in self.size_ijk)
        corners = np.array([[i, j, k] for i in (0, ni) for j in (0, nj) for k in (0, nk)], dtype=np.float64)
        return self.index_to_lps(corners)

    # -- comparison --------------------------------------------------------------------------
    def same_as(self, other: Grid, tol: float = 1e-4) -> bool:
        """True when both grids have the same shape and, within ``tol`` (mm / cosines), the same
        spacing, origin and direction."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol, rtol=0)
            and np.allclose(self.origin, other.origin, atol=tol * max(1.0, max(self.spacing)), rtol=0)
            and np.allclose(self.direction, other.direction, atol=tol, rtol=0)
        )

    def require_same(self, other: Grid, what: str = "label map", tol: float = 1e-4) -> None:
        """Raise :class:`GeometryMismatchError` describing the first difference, if any."""
        if self.same_as(other, tol):
            return
        if self.shape != other.shape:
            diff = f"size {other.size_ijk} != {self.size_ijk}"
        elif not np.allclose(self.spacing, other.spacing, atol=tol, rtol=0):
            diff = f"spacing {_fmt(other.spacing)} != {_fmt(self.spacing)} mm"
        elif not np.allclose(self.origin, other.origin, atol=tol * max(1.0, max(self.spacing)), rtol=0):
            diff = f"origin {_fmt(other.origin)} != {_fmt(self.origin)} mm"
        else:
            diff = f"direction {orientation_code(other.direction)} differs from {orientation_code(self.direction)}"
        raise GeometryMismatchError(f"the {what}'s voxel grid does not match the image: {diff}")

    def describe(self) -> str:
        return (
            f"size {self.size_ijk[0]}x{self.size_ijk[1]}x{self.size_ijk[2]} (IJK), "
            f"spacing {_fmt(self.spacing)} mm, orientation {self.orientation}, origin(LPS) {_fmt(self.origin)} mm"
        )

    def to_dict(self) -> dict:
        return {
            "size_ijk": list(self.size_ijk),
            "spacing": list(self.spacing),
            "origin_lps": list(self.origin),
            "direction": self.direction.tolist(),
        }


def _fmt(vec: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in vec) + ")"


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image or label map with its geometry. Immutable: the array is made read-only.

    Attributes:
        array: numpy array in ZYX order (``array[k, j, i]``), any numeric dtype.
        grid: the voxel grid (spacing along i, j, k in mm; origin and direction in LPS).
        meta: free-form metadata (modality, patient height/weight, source path, ...).
    """

    array: np.ndarray
    grid: Grid
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise InputError(f"a Volume needs a 3D array, got shape {arr.shape}")
        if tuple(arr.shape) != self.grid.shape:
            raise InputError(f"array shape {arr.shape} does not match grid shape {self.grid.shape}")
        if arr.flags.writeable:
            arr = arr.view()
            arr.setflags(write=False)
        object.__setattr__(self, "array", arr)

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: Sequence[float] | np.ndarray | None = None,
        meta: dict | None = None,
    ) -> Volume:
        """Build a Volume from a ZYX array and LPS geometry (spacing in i, j, k order)."""
        arr = np.asarray(array)
        if arr.ndim != 3:
            raise InputError(f"a Volume needs a 3D array, got shape {arr.shape}")
        grid = Grid(tuple(arr.shape), tuple(spacing), tuple(origin), _as_direction(direction))
        return cls(arr, grid, dict(meta or {}))

    # geometry shortcuts
    @property
    def shape(self) -> tuple[int, int, int]:
        return self.grid.shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing

    @property
    def origin(self) -> tuple[float, float, float]:
        return self.grid.origin

    @property
    def direction(self) -> np.ndarray:
        return self.grid.direction

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def with_array(self, array: np.ndarray, meta: dict | None = None) -> Volume:
        """A new Volume on the same grid (e.g. a label map of this image)."""
        return Volume(np.asarray(array), self.grid, dict(self.meta if meta is None else meta))

    def astype(self, dtype: np.dtype | type) -> Volume:
        return self.with_array(self.array.astype(dtype, copy=False))

    def describe(self) -> str:
        return f"{self.grid.describe()}, dtype {self.dtype}"

    # SimpleITK bridge ------------------------------------------------------------------------
    def to_sitk(self):
        """Convert to a ``SimpleITK.Image`` (copying the array; geometry kept exactly)."""
        import SimpleITK as sitk

        arr = np.ascontiguousarray(self.array)
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(self.grid.spacing)
        img.SetOrigin(self.grid.origin)
        img.SetDirection(tuple(float(v) for v in self.grid.direction.reshape(-1)))
        return img

    @classmethod
    def from_sitk(cls, image, meta: dict | None = None) -> Volume:
        """Convert a 3D scalar ``SimpleITK.Image`` (geometry in LPS, as ITK stores it)."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise InputError(f"expected a 3D image, got {image.GetDimension()}D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components")
        arr = sitk.GetArrayFromImage(image)
        return cls.from_array(arr, image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()), meta)
