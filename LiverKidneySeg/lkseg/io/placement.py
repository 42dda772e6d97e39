"""Put a label map onto its image's voxel grid: exactly when the lattices coincide, else refuse.

Masks written by other tools often lie on the image's own voxel centres but are stored with other
axis directions (a nibabel/TotalSegmentator NIfTI with a flipped y axis beside a DICOM series, a
sagittal re-slicing, a ``.seg.nrrd`` that Slicer cropped). :func:`place_label_map` recognises
these cases (every voxel centre of the image is a voxel centre of the label map, up to a
permutation and flips of the index axes and a whole-voxel shift) and copies the voxels across
without any interpolation. Grids that do not share a lattice are refused with the first
difference, unless the caller opts in to nearest-neighbour resampling, which is recorded in the
result's ``meta["grid_placement"]`` and logged as a warning so that outputs can state it.

Index conventions: (i, j, k) index axes as in :mod:`lkseg.volume`; arrays are ZYX.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lkseg.errors import GeometryMismatchError
from lkseg.volume import Grid, Volume

__all__ = ["LatticeMap", "lattice_map", "place_label_map"]

log = logging.getLogger(__name__)

#: Largest distance (in voxels of the label map) between an image voxel centre and the label
#: voxel centre it is matched to; beyond it the lattices are taken as different.
LATTICE_TOL_VOXELS = 0.01


@dataclass(frozen=True)
class LatticeMap:
    """How the voxels of a source grid land on a target grid sharing its lattice.

    Source index along source axis ``axis[a]`` = ``sign[a] * (target index along axis a) +
    offset[a]``, for the target's index axes a = 0 (i), 1 (j), 2 (k).
    """

    axis: tuple[int, int, int]
    sign: tuple[int, int, int]
    offset: tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        return self.axis == (0, 1, 2) and self.sign == (1, 1, 1) and self.offset == (0, 0, 0)

    def describe(self) -> str:
        names = "ijk"
        parts = [f"{'-' if s < 0 else ''}{names[ax]}" for ax, s in zip(self.axis, self.sign)]
        text = f"label axes (i, j, k) <- ({', '.join(parts)})"
        if any(self.offset):
            text += f", offset {self.offset} voxels"
        return text


def lattice_map(source: Grid, target: Grid, tol_voxels: float = LATTICE_TOL_VOXELS) -> LatticeMap | None:
    """The exact index correspondence from ``target`` to ``source`` when both share one lattice.

    Returns None when some target voxel centre is not (within ``tol_voxels``) a source voxel
    centre: other spacing, a rotation that is not a signed axis permutation, or a sub-voxel shift.
    """
    src = np.asarray(source.direction) @ np.diag(source.spacing)
    tgt = np.asarray(target.direction) @ np.diag(target.spacing)
    inv = np.linalg.inv(src)
    mat = inv @ tgt  # target index -> source index (linear part)
    shift = inv @ (np.asarray(target.origin) - np.asarray(source.origin))
    perm = np.rint(mat)
    if not (np.all(np.abs(perm).sum(axis=0) == 1) and np.all(np.abs(perm).sum(axis=1) == 1)):
        return None
    offset = np.rint(shift)
    size = np.asarray(target.size_ijk, dtype=np.float64) - 1.0
    corners = np.array([[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])]).T
    error = (mat - perm) @ corners + (shift - offset)[:, None]
    if np.max(np.abs(error)) > tol_voxels:
        return None
    axis = tuple(int(np.flatnonzero(perm[:, a])[0]) for a in range(3))
    sign = tuple(int(perm[axis[a], a]) for a in range(3))
    return LatticeMap(axis, sign, tuple(int(offset[axis[a]]) for a in range(3)))


def _covers(lmap: LatticeMap, source: Grid, target: Grid) -> bool:
    """Whether the source's voxels are exactly the target's (same extent along every axis)."""
    for a in range(3):
        n = target.size_ijk[a]
        ends = sorted((lmap.offset[a], lmap.sign[a] * (n - 1) + lmap.offset[a]))
        if source.size_ijk[lmap.axis[a]] != n or ends != [0, n - 1]:
            return False
    return True


def _copy_exact(array: np.ndarray, target: Grid, lmap: LatticeMap) -> tuple[np.ndarray, int]:
    """Target-shaped array copied voxel for voxel; returns it and the foreground voxels lost.

    Every axis maps by a shift and a step of +1 or -1, so the overlap is one strided view of the
    source (no index arrays, a single copy).
    """
    # numpy axis n of the target is index axis 2 - n; bring the matching source axes into that order
    moved = np.transpose(array, [2 - lmap.axis[2 - n] for n in range(3)])
    dst, src = [], []
    for n in range(3):
        a = 2 - n
        sign, offset = lmap.sign[a], lmap.offset[a]
        along = sign * np.arange(target.shape[n]) + offset
        inside = np.flatnonzero((along >= 0) & (along < moved.shape[n]))
        if inside.size == 0:
            return np.zeros(target.shape, dtype=array.dtype), int(np.count_nonzero(array))
        first, last = int(inside[0]), int(inside[-1])
        dst.append(slice(first, last + 1))
        start, stop = int(along[first]), int(along[last]) + sign
        src.append(slice(start, stop if stop >= 0 else None, sign))
    out = np.zeros(target.shape, dtype=array.dtype)
    out[tuple(dst)] = moved[tuple(src)]
    lost = int(np.count_nonzero(array)) - int(np.count_nonzero(out))
    return out, lost


def place_label_map(
    labels: Volume,
    image: Volume | Grid,
    *,
    resample: bool = False,
    partial: bool = False,
    what: str = "label map",
) -> Volume:
    """``labels`` on ``image``'s grid: as is, reoriented exactly, or (opt-in) resampled.

    Args:
        labels: integer label map (ZYX, any grid).
        image: the image (or its grid) the label map belongs to.
        resample: when the lattices differ, resample ``labels`` with nearest neighbour instead of
            refusing (the result's ``meta["grid_placement"]`` says so; a warning is logged).
        partial: accept a label map on the image's lattice that covers only part of it (a
            ``.seg.nrrd`` that Slicer cropped to its segments); the rest becomes background.
            Without it the label map must cover exactly the image's voxels.
        what: name used in messages ("label map", "prediction", "reference").

    Returns:
        A Volume on exactly ``image``'s grid. ``meta["grid_placement"]`` is ``"same grid"``,
        ``"reoriented exactly (...)"`` (axes permuted/flipped and/or shifted by whole voxels;
        no value interpolated) or ``"resampled with nearest neighbour from ..."``.

    Raises:
        GeometryMismatchError: the lattices differ (message names the first difference and the
            opt-in), or labelled voxels would fall outside the image and ``resample`` is False.
    """
    grid = image.grid if isinstance(image, Volume) else image
    if grid.same_as(labels.grid):  # keeps the note of an earlier placement onto this grid
        return _with_note(labels, labels.array, grid, labels.meta.get("grid_placement", "same grid"))
    lmap = lattice_map(labels.grid, grid)
    if lmap is not None and not partial and not _covers(lmap, labels.grid, grid) and not resample:
        raise GeometryMismatchError(
            f"the {what} lies on the image's voxel lattice but covers other voxels ({labels.grid.describe()} vs the "
            f"image's {grid.describe()}; {lmap.describe()}): it was made for another image or cropped. Resample it "
            "onto the image (nearest neighbour) explicitly to go on (Python: resample=True, CLI: --resample-labels)"
        )
    if lmap is not None:
        out, lost = _copy_exact(labels.array, grid, lmap)
        if lost and not resample:
            raise GeometryMismatchError(
                f"the {what} shares the image's voxel lattice but {lost} labelled voxel(s) lie outside the image "
                f"({labels.grid.describe()} vs {grid.describe()}); crop it or allow resampling"
            )
        note = f"reoriented exactly ({lmap.describe()}; no interpolation)"
        if lost:
            note += f"; {lost} labelled voxel(s) outside the image dropped"
        log.info("%s %s onto the image grid", what, note)
        return _with_note(labels, out, grid, note)
    if not resample:
        try:
            grid.require_same(labels.grid, what)
        except GeometryMismatchError as exc:
            raise GeometryMismatchError(
                f"{exc}; its voxel centres are not on the image's voxel lattice (not even up to an axis "
                "permutation or flip), so it cannot be placed exactly. Resample it onto the image (nearest "
                "neighbour) explicitly to go on (Python: resample=True, CLI: --resample-labels)"
            ) from None
    from lkseg.resample import resample_array_to_grid

    out = resample_array_to_grid(labels.array, labels.grid, grid, "nearest")
    note = f"resampled with nearest neighbour from {labels.grid.describe()}"
    log.warning("the %s was %s onto the image grid (%s)", what, note, grid.describe())
    return _with_note(labels, out, grid, note)


def _with_note(labels: Volume, array: np.ndarray, grid: Grid, note: str) -> Volume:
    return Volume(np.ascontiguousarray(array), grid, {**labels.meta, "grid_placement": note})
