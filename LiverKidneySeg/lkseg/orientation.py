"""Exact reorientation by axis permutation and flips (no interpolation), and its inverse.

A CT may be stored with any axis order (sagittal acquisitions, NIfTI in RAS+, flipped rows).
Models run on a canonical orientation; :func:`reorient` permutes and flips the voxel array so
that i, j, k point as close as possible to the target anatomical directions, and
:meth:`Reorientation.undo` puts a result (a label map, a probability map) back onto the
original grid voxel for voxel. Oblique directions keep their residual rotation: only
permutations and flips are applied, so no voxel value is ever interpolated.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from lkseg.errors import InputError
from lkseg.volume import Grid, Volume, orientation_code

__all__ = ["CANONICAL", "Reorientation", "reorient", "reorient_grid"]

#: Canonical orientation of the core's models: i -> patient Left, j -> Posterior, k -> Superior
#: (the usual axial DICOM storage order).
CANONICAL = "LPS"

_LETTER_AXIS = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def _parse_code(code: str) -> tuple[list[int], list[float]]:
    code = code.upper()
    if len(code) != 3 or any(c not in _LETTER_AXIS for c in code):
        raise InputError(f"orientation code must be 3 letters of L/R, P/A, S/I, got {code!r}")
    axes = [_LETTER_AXIS[c][0] for c in code]
    if sorted(axes) != [0, 1, 2]:
        raise InputError(f"orientation code {code!r} names one anatomical axis twice")
    return axes, [_LETTER_AXIS[c][1] for c in code]


@dataclass(frozen=True)
class Reorientation:
    """What :func:`reorient` did, so it can be undone exactly.

    Attributes:
        perm: ``perm[n]`` is the original index axis (0=i, 1=j, 2=k) that became new axis n.
        flip: ``flip[n]`` is True where new axis n runs opposite to original axis ``perm[n]``.
        original: the original grid.
        reoriented: the grid after reorientation.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    original: Grid
    reoriented: Grid

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)

    def apply_array(self, array: np.ndarray) -> np.ndarray:
        """Reorient a ZYX array (or C x ZYX with leading channels) of the original grid."""
        lead = array.ndim - 3
        # numpy axis of index axis a is (2 - a) among the last three axes
        axes = list(range(lead)) + [lead + 2 - self.perm[2 - ax] for ax in range(3)]
        out = np.transpose(array, axes)
        for n, flipped in enumerate(self.flip):
            if flipped:
                out = np.flip(out, axis=lead + 2 - n)
        return out

    def undo_array(self, array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`apply_array`: from the reoriented grid back to the original."""
        lead = array.ndim - 3
        out = array
        for n, flipped in enumerate(self.flip):
            if flipped:
                out = np.flip(out, axis=lead + 2 - n)
        inv = [0, 0, 0]
        for n, p in enumerate(self.perm):
            inv[p] = n
        axes = list(range(lead)) + [lead + 2 - inv[2 - ax] for ax in range(3)]
        return np.transpose(out, axes)

    def apply(self, volume: Volume) -> Volume:
        volume.grid.require_same(self.original, "volume")
        return Volume(np.ascontiguousarray(self.apply_array(volume.array)), self.reoriented, dict(volume.meta))

    def undo(self, volume: Volume) -> Volume:
        """Put a volume on the reoriented grid back onto the original grid (voxel-exact)."""
        volume.grid.require_same(self.reoriented, "reoriented volume")
        return Volume(np.ascontiguousarray(self.undo_array(volume.array)), self.original, dict(volume.meta))


def reorient_grid(grid: Grid, target: str = CANONICAL) -> Reorientation:
    """Plan the permutation and flips that bring ``grid`` closest to ``target`` orientation."""
    world_axes, signs = _parse_code(target)
    direction = grid.direction
    best_perm, best_score = (0, 1, 2), -1.0
    for perm in itertools.permutations(range(3)):
        # new axis n takes original axis perm[n]; it should point along world axis world_axes[n]
        score = sum(abs(direction[world_axes[n], perm[n]]) for n in range(3))
        if score > best_score + 1e-9:
            best_perm, best_score = perm, score
    flips = tuple(bool(direction[world_axes[n], best_perm[n]] * signs[n] < 0) for n in range(3))

    size = grid.size_ijk
    new_dir = np.zeros((3, 3))
    new_spacing = []
    new_size = []
    origin_index = [0.0, 0.0, 0.0]
    for n in range(3):
        old = best_perm[n]
        new_dir[:, n] = direction[:, old] * (-1.0 if flips[n] else 1.0)
        new_spacing.append(grid.spacing[old])
        new_size.append(size[old])
        if flips[n]:
            origin_index[old] = size[old] - 1
    new_origin = grid.index_to_lps(origin_index)
    new_grid = Grid((new_size[2], new_size[1], new_size[0]), tuple(new_spacing), tuple(new_origin), new_dir)
    return Reorientation(tuple(best_perm), flips, grid, new_grid)


def reorient(volume: Volume, target: str = CANONICAL) -> tuple[Volume, Reorientation]:
    """Permute and flip ``volume`` so that its axes follow ``target`` (e.g. ``"LPS"``, ``"RAS"``).

    Returns the reoriented volume and the :class:`Reorientation` that undoes it. The physical
    position of every voxel is unchanged; only its index changes.
    """
    plan = reorient_grid(volume.grid, target)
    return plan.apply(volume), plan


def describe_orientation(grid: Grid) -> str:
    """Human-readable orientation, e.g. ``"LPS (axial)"`` or ``"LIP (oblique 12.0 deg)"``."""
    code = orientation_code(grid.direction)
    # largest angle between an axis and its nearest anatomical axis
    cosines = np.max(np.abs(grid.direction), axis=0)
    angle = float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))
    plane = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal", "L": "sagittal", "R": "sagittal"}[code[2]]
    return f"{code} ({plane}{f', oblique {angle:.1f} deg' if angle > 0.5 else ''})"
