"""Helpers for the Slicer-module tests (``test_slicer*.py``, ``test_mrml*.py``).

Importing this module puts ``LiverKidneySeg/`` (the scripted module folder, which holds
``LiverKidneySegLib``) on ``sys.path``. The MRML scene itself comes from the ``headless_slicer``
/ ``mrml_scene`` fixtures in ``conftest.py``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LiverKidneySeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


def sphere(shape_zyx: tuple[int, int, int], center_zyx, radius: float) -> np.ndarray:
    """Bool ZYX ball of ``radius`` voxels."""
    zz, yy, xx = np.ogrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    c = center_zyx
    return (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius**2


class _FakeSlicer:
    """The part of ``lkseg.refine.slices.VolumeSlicer`` the engine uses."""

    def __init__(self, volume):
        self.volume = volume

    def user_slice_axis(self, view: str) -> int:
        # numpy (ZYX) axis of the user array that the anatomical view slices
        lps_axis = {"sagittal": 0, "coronal": 1, "axial": 2}[view]
        column = np.argmax(np.abs(self.volume.grid.direction[lps_axis, :]))  # index axis along that LPS axis
        return 2 - int(column)


class FakePromptPredictor:
    """A deterministic stand-in for ``lkseg.refine.PromptPredictor`` (no model weights needed).

    ``predict`` returns, on the requested slice, the box filled (if any), plus a disk of radius
    ``radius`` voxels around each positive point, minus disks around negative points; a prior
    mask is the starting point when given. ``propagate`` copies the slice mask to every slice
    where the image is above ``threshold`` under it. Records every call in ``calls``.
    """

    def __init__(self, model="fake", device="cpu", radius: int = 3, threshold: float = 0.0):
        self.model, self.device, self.radius, self.threshold = model, device, radius, threshold
        self.calls: list[tuple] = []
        self.volumes_set = 0
        self._volume = None

    def set_volume(self, volume) -> None:
        self.calls.append({"kind": "set_volume", "thread": threading.get_ident()})
        self._volume = volume
        self.slicer = _FakeSlicer(volume)
        self.volumes_set += 1

    def predict(
        self, view, slice_index, points=None, labels=None, box=None, mask_prior=None, coords="voxel", structure=None
    ):
        self.calls.append(
            {
                "kind": "predict",
                "view": view,
                "slice": slice_index,
                "points": None if points is None else np.array(points),
                "labels": None if labels is None else np.array(labels),
                "box": None if box is None else np.array(box),
                "prior": None if mask_prior is None else np.array(mask_prior),
                "structure": structure,
                "thread": threading.get_ident(),
            }
        )
        axis = 2 - self.slicer.user_slice_axis(view)  # index axis (0=i,1=j,2=k)
        shape2d = tuple(n for a, n in enumerate(self._volume.shape) if a != 2 - axis)
        inplane = [a for a in range(3) if a != axis]  # index axes in the 2D mask, as (row=slower, col=faster)
        rows_axis, cols_axis = inplane[1], inplane[0]  # ZYX order: higher index axis first
        mask = np.zeros(shape2d, bool) if mask_prior is None else np.array(mask_prior, bool)
        rr, cc = np.ogrid[: shape2d[0], : shape2d[1]]
        if box is not None:
            lo, hi = np.asarray(box)[0], np.asarray(box)[1]
            mask[
                int(np.ceil(lo[rows_axis])) : int(np.floor(hi[rows_axis])) + 1,
                int(np.ceil(lo[cols_axis])) : int(np.floor(hi[cols_axis])) + 1,
            ] = True
        if points is not None:
            labs = np.ones(len(points)) if labels is None else np.asarray(labels)
            for p, lab in zip(np.asarray(points), labs):
                disk = (rr - p[rows_axis]) ** 2 + (cc - p[cols_axis]) ** 2 <= self.radius**2
                mask = mask | disk if lab == 1 else mask & ~disk
        return mask

    def propagate(self, view, slice_index, mask2d, structure=None, max_slices=None, progress=None, cancel=None):
        self.calls.append(
            {
                "kind": "propagate",
                "view": view,
                "slice": slice_index,
                "structure": structure,
                "thread": threading.get_ident(),
            }
        )
        axis_np = self.slicer.user_slice_axis(view)
        image = np.asarray(self._volume.array)
        out = np.zeros(image.shape, bool)
        n = image.shape[axis_np]
        for index in range(n):
            if cancel is not None:
                cancel.raise_if_cancelled()
            plane = np.take(image, index, axis=axis_np) > self.threshold
            region = [slice(None)] * 3
            region[axis_np] = index
            out[tuple(region)] = np.asarray(mask2d, bool) & plane
            if progress is not None:
                progress((index + 1) / n, "propagating")
        return out
