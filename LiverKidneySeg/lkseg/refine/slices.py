"""Slices of a volume as the model sees them, and prompts converted to slice pixels.

Three coordinate frames meet here:

* **user frame**: the volume's own voxel grid, continuous indices ``(i, j, k)`` (or RAS mm,
  converted with :meth:`~lkseg.volume.Grid.ras_to_index`); a 2D slice mask is
  ``volume.array`` with the view's axis removed (ZYX order kept).
* **canonical frame**: the volume permuted and flipped (never interpolated) to LPS with
  :func:`~lkseg.orientation.reorient`, so that ``axial`` / ``coronal`` / ``sagittal`` are the
  numpy axes 0 / 1 / 2 whatever the storage order.
* **display frame**: a 2D slice as a radiologist looks at it (rows top to bottom, columns left
  to right): axial = anterior up, patient right on the left of the image (radiological convention);
  coronal = superior up, patient right on the left; sagittal = superior up, anterior on the left. Points there are
  ``(row, col)`` pixel indices; the model sees this frame resized to its input.

The model input keeps the true aspect ratio of anisotropic pixels: the slice is resized so that
its longest *physical* side spans the model input, then zero-padded bottom/right
(:class:`InputTransform`), and the model's low-resolution logits go back to the slice's pixel
grid through the inverse map.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from lkseg.errors import PromptError
from lkseg.orientation import reorient
from lkseg.volume import Volume

__all__ = ["VIEWS", "HUWindow", "InputTransform", "View", "VolumeSlicer", "resize_2d", "resize_weights", "window_for"]

View = Literal["axial", "coronal", "sagittal"]
VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")
_CANON_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}  # numpy axis of the canonical (k, j, i) array


@dataclass(frozen=True)
class HUWindow:
    """A CT display window in Hounsfield units (level = centre, width = full range)."""

    level: float
    width: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2.0

    @property
    def high(self) -> float:
        return self.level + self.width / 2.0

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """HU -> float32 in [0, 1]."""
        out = (np.asarray(hu, dtype=np.float32) - np.float32(self.low)) / np.float32(self.width)
        return np.clip(out, 0.0, 1.0, out=out)


#: Soft-tissue abdominal window (W400/L40), the window MedSAM's CT training data used.
ABDOMEN = HUWindow(40.0, 400.0)
_WINDOWS = {
    "liver": ABDOMEN,
    "kidney_right": ABDOMEN,
    "kidney_left": ABDOMEN,
    "spleen": ABDOMEN,
}


def window_for(structure: str | None) -> HUWindow:
    """The HU window used for ``structure`` (soft-tissue W400/L40 unless listed otherwise)."""
    return _WINDOWS.get(structure or "", ABDOMEN)


@dataclass(frozen=True)
class InputTransform:
    """Map between a display slice (``h`` x ``w`` pixels of ``row_mm`` x ``col_mm``) and a square
    model input of side ``size`` (resize longest physical side, pad bottom/right).

    Attributes:
        h, w: slice size in pixels (rows, columns).
        row_mm, col_mm: pixel spacing along rows (vertical) and columns (horizontal) in mm.
        size: model input side (256 for LiteMedSAM, 1024 for SAM).
        box_extent: class-wide switch of the box convention: True (default) maps a box to the
            model pixels its slice pixels cover; False to SAM's ``index x scale`` (a measured
            variant: about one model pixel tighter on the bottom/right side).
    """

    h: int
    w: int
    row_mm: float
    col_mm: float
    size: int
    box_extent: ClassVar[bool] = True

    @property
    def scale_y(self) -> float:
        """Model pixels per slice row."""
        return self.size * self.row_mm / max(self.h * self.row_mm, self.w * self.col_mm)

    @property
    def scale_x(self) -> float:
        return self.size * self.col_mm / max(self.h * self.row_mm, self.w * self.col_mm)

    @property
    def resized(self) -> tuple[int, int]:
        """(rows, cols) of the resized slice inside the padded input."""
        return (
            max(1, min(self.size, round(self.h * self.scale_y))),
            max(1, min(self.size, round(self.w * self.scale_x))),
        )

    def to_model_xy(self, rc: np.ndarray) -> np.ndarray:
        """Display (row, col) pixel indices, shape (N, 2) -> model input (x, y), float32.

        A pixel maps to the model pixel index of its centre, ``(p + 0.5) * scale - 0.5`` (the
        prompt encoder adds the last 0.5 back), consistent with the image's resize (:func:`resize_weights`).
        """
        rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
        x = (rc[:, 1] + 0.5) * self.scale_x - 0.5
        y = (rc[:, 0] + 0.5) * self.scale_y - 0.5
        return np.stack([x, y], axis=1).astype(np.float32)

    def box_to_model(self, box_rc: np.ndarray) -> np.ndarray:
        """Display box ``(r0, c0, r1, c1)`` (inclusive pixel indices) -> model XYXY, float32 (4,).

        The corners are the first and last model pixels that the box's pixels cover, as a box
        computed from a mask resized to the model input (how MedSAM's boxes were made).
        """
        r0, c0, r1, c1 = (float(v) for v in box_rc)
        sx, sy = self.scale_x, self.scale_y
        if not self.box_extent:
            return np.array([c0 * sx, r0 * sy, c1 * sx, r1 * sy], dtype=np.float32)
        return np.array([c0 * sx, r0 * sy, (c1 + 1.0) * sx - 1.0, (r1 + 1.0) * sy - 1.0], dtype=np.float32)

    def image_to_model(self, unit: np.ndarray, normalisation: str) -> np.ndarray:
        """A windowed display slice in [0, 1] (h, w) -> model input (3, size, size) float32, resized
        by :func:`resize_2d` (area averaging along an axis that shrinks, as LiteMedSAM's training
        images were made; linear interpolation along one that grows)."""
        rh, rw = self.resized
        t = resize_2d(unit, rh, rw)
        out = np.zeros((3, self.size, self.size), dtype=np.float32)
        if normalisation == "minmax":
            lo, hi = float(t.min()), float(t.max())
            t = (t - lo) / max(hi - lo, 1e-8)
            out[:, :rh, :rw] = t
        else:  # imagenet: 0..255 RGB, minus mean, over std; padding stays 0 after normalising
            mean = np.array([123.675, 116.28, 103.53], dtype=np.float32)[:, None, None]
            std = np.array([58.395, 57.12, 57.375], dtype=np.float32)[:, None, None]
            out[:, :rh, :rw] = (t[None] * 255.0 - mean) / std
        return out

    def mask_to_lowres(self, mask: np.ndarray, low: int = 256, magnitude: float = 8.0) -> np.ndarray:
        """A display mask (h, w) -> decoder mask prompt (1, 1, low, low) logits (+/- ``magnitude``)."""
        import torch
        import torch.nn.functional as F

        rh, rw = self.resized
        lh, lw = max(1, round(rh * low / self.size)), max(1, round(rw * low / self.size))
        t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        t = F.interpolate(t, size=(lh, lw), mode="bilinear", align_corners=False)[0, 0].numpy()
        out = np.full((1, 1, low, low), -magnitude, dtype=np.float32)
        out[0, 0, :lh, :lw] = (t * 2.0 - 1.0) * magnitude
        return out

    def lowres_to_logits(self, lowres: np.ndarray) -> np.ndarray:
        """Decoder logits (low, low) over the padded input -> logits on the display slice (h, w)."""
        import torch
        import torch.nn.functional as F

        low = lowres.shape[-1]
        rh, rw = self.resized
        lh, lw = max(1, round(rh * low / self.size)), max(1, round(rw * low / self.size))
        t = torch.from_numpy(np.ascontiguousarray(lowres[..., :lh, :lw], dtype=np.float32)).reshape(1, 1, lh, lw)
        return F.interpolate(t, size=(self.h, self.w), mode="bilinear", align_corners=False)[0, 0].numpy()


@functools.lru_cache(maxsize=32)
def resize_weights(n_in: int, n_out: int):
    """The (n_out, n_in) sparse weights of resizing one axis of pixels from ``n_in`` to ``n_out``.

    Pixel ``i`` of the output spans ``[i, i + 1) * n_in / n_out`` of the input (so pixel centres
    map as ``(p + 0.5) * scale - 0.5``, the convention of :meth:`InputTransform.to_model_xy`).
    Shrinking: each output pixel is the mean of the input pixels it spans, a partly spanned pixel
    weighted by the fraction spanned (area averaging, OpenCV's ``INTER_AREA``, which LiteMedSAM's
    preprocessing uses: every input pixel counts, so the fine noise and texture of a 0.5-0.6 mm
    slice are averaged out, not aliased as point sampling would). Enlarging (or equal): linear
    interpolation between pixel centres, edge pixels clamped (PyTorch's bilinear with
    ``align_corners=False``). Rows sum to 1.
    """
    from scipy import sparse

    if n_in < 1 or n_out < 1:
        raise ValueError(f"resize needs positive sizes, got {n_in} -> {n_out}")
    scale = n_in / n_out
    if n_out < n_in:
        lo = np.arange(n_out) * scale
        hi = lo + scale
        first = np.floor(lo).astype(np.int64)
        width = int(np.ceil(scale)) + 1  # input pixels an output pixel can touch
        cols = first[:, None] + np.arange(width)[None, :]
        weights = np.minimum(hi[:, None], cols + 1.0) - np.maximum(lo[:, None], cols)
        keep = (weights > 1e-12) & (cols < n_in)
        rows = np.broadcast_to(np.arange(n_out)[:, None], cols.shape)
        w = sparse.csr_matrix((weights[keep] / scale, (rows[keep], cols[keep])), shape=(n_out, n_in), dtype=np.float64)
    else:
        src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
        j0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        j1 = np.minimum(j0 + 1, n_in - 1)
        frac = src - j0
        rows = np.arange(n_out)
        w = sparse.csr_matrix(
            (np.concatenate([1.0 - frac, frac]), (np.concatenate([rows, rows]), np.concatenate([j0, j1]))),
            shape=(n_out, n_in),
            dtype=np.float64,
        )
    w = sparse.csr_matrix(w.multiply(1.0 / np.asarray(w.sum(axis=1))), dtype=np.float32)
    return w


def resize_2d(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A 2D float image (h, w) resized to (``rows``, ``cols``), each axis by :func:`resize_weights`
    (area averaging where it shrinks, linear interpolation where it grows); float32. When neither
    axis shrinks, PyTorch's bilinear resize itself runs (the same interpolation; its float32
    arithmetic differs from the weights' by ~4e-6, which moved the hybrid's masks on example_ct,
    whose slices only grow: they stay as they were before the area averaging came in)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"resize_2d needs a 2D image, got shape {image.shape}")
    h, w = image.shape
    if rows >= h and cols >= w:
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(image))[None, None]
        return F.interpolate(t, size=(rows, cols), mode="bilinear", align_corners=False)[0, 0].numpy()
    tmp = resize_weights(h, rows) @ image  # (rows, w)
    return np.ascontiguousarray((resize_weights(w, cols) @ tmp.T).T, dtype=np.float32)


class VolumeSlicer:
    """Slices of one volume in display orientation, and conversions of user prompts.

    Args:
        volume: the CT (any orientation; oblique axes keep their residual rotation).
    """

    def __init__(self, volume: Volume):
        self.volume = volume
        self.canonical, self.plan = reorient(volume, "LPS")
        self.array = self.canonical.array  # (k, j, i) canonical, read-only view
        si, sj, sk = self.canonical.spacing
        # pixel spacing (row_mm, col_mm) of a display slice per view
        self._pixel_mm = {"axial": (sj, si), "coronal": (sk, si), "sagittal": (sk, sj)}

    # -- views and slices ------------------------------------------------------------------
    @staticmethod
    def check_view(view: str) -> str:
        if view not in _CANON_AXIS:
            raise PromptError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")
        return view

    def n_slices(self, view: str) -> int:
        return self.array.shape[_CANON_AXIS[self.check_view(view)]]

    def pixel_mm(self, view: str) -> tuple[float, float]:
        return self._pixel_mm[self.check_view(view)]

    def display_shape(self, view: str) -> tuple[int, int]:
        shape = self.array.shape
        return {"axial": (shape[1], shape[2]), "coronal": (shape[0], shape[2]), "sagittal": (shape[0], shape[1])}[view]

    def slice_mm(self, view: str) -> float:
        """Distance between neighbouring slices of ``view`` in mm."""
        si, sj, sk = self.canonical.spacing
        return {"axial": sk, "coronal": sj, "sagittal": si}[self.check_view(view)]

    def display_slice(self, view: str, c: int, array: np.ndarray | None = None) -> np.ndarray:
        """Canonical slice ``c`` of ``view`` in display orientation (a view, not a copy).

        Args:
            array: a canonical (k, j, i) array (default: the CT in HU).
        """
        a = self.array if array is None else array
        if view == "axial":
            return a[c]  # rows: anterior -> posterior (j); cols: patient right -> left (i)
        if view == "coronal":
            return a[::-1, c, :]  # rows: superior -> inferior; cols: patient right -> left
        return a[::-1, :, c]  # sagittal: rows superior -> inferior, cols anterior -> posterior

    def set_display_slice(self, array: np.ndarray, view: str, c: int, mask: np.ndarray) -> None:
        """Write a display-frame 2D ``mask`` into slice ``c`` of a canonical (k, j, i) ``array``."""
        self.display_slice(view, c, array)[...] = mask

    def display_to_canonical2d(self, view: str, img: np.ndarray) -> np.ndarray:
        """Inverse of the in-plane flips of :meth:`display_slice` (2D arrays, any dtype)."""
        if view == "axial":
            return img
        return img[::-1, :]

    def canonical2d_to_display(self, view: str, img: np.ndarray) -> np.ndarray:
        return self.display_to_canonical2d(view, img)  # the flips are their own inverse

    # -- user <-> canonical slice index ----------------------------------------------------------
    def _orig_axis(self, view: str) -> tuple[int, bool]:
        """Original index axis (0=i, 1=j, 2=k) behind ``view`` and whether it runs flipped."""
        n = 2 - _CANON_AXIS[view]  # canonical index axis: axial -> k (2), coronal -> j (1), sagittal -> i (0)
        return self.plan.perm[n], self.plan.flip[n]

    def user_to_canonical_slice(self, view: str, index: int) -> int:
        axis, flipped = self._orig_axis(self.check_view(view))
        size = self.volume.grid.size_ijk[axis]
        if not 0 <= int(index) < size:
            raise PromptError(f"slice index {index} is out of range for the {view} view (0..{size - 1})")
        return size - 1 - int(index) if flipped else int(index)

    def canonical_to_user_slice(self, view: str, c: int) -> int:
        axis, flipped = self._orig_axis(view)
        size = self.volume.grid.size_ijk[axis]
        return size - 1 - c if flipped else c

    def user_slice_axis(self, view: str) -> int:
        """numpy axis of ``volume.array`` that ``view`` slices (0 = k, 1 = j, 2 = i)."""
        return 2 - self._orig_axis(self.check_view(view))[0]

    # -- masks between frames ------------------------------------------------------------------
    def display_mask_to_user(self, view: str, mask: np.ndarray) -> np.ndarray:
        """A display-frame 2D mask -> the 2D slice of the volume's own array (view axis removed)."""
        canon2d = self.display_to_canonical2d(view, mask)
        axis = _CANON_AXIS[view]
        thin = np.expand_dims(canon2d, axis)
        orig = self.plan.undo_array(thin)
        return np.ascontiguousarray(np.squeeze(orig, axis=self.user_slice_axis(view)))

    def user_mask_to_display(self, view: str, mask2d: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`display_mask_to_user`."""
        uaxis = self.user_slice_axis(view)
        expected = tuple(s for n, s in enumerate(self.volume.shape) if n != uaxis)
        mask2d = np.asarray(mask2d)
        if mask2d.shape != expected:
            raise PromptError(f"mask prior has shape {mask2d.shape}; a {view} slice of this volume is {expected}")
        thin = np.expand_dims(mask2d, uaxis)
        canon = np.squeeze(self.plan.apply_array(thin), axis=_CANON_AXIS[view])
        return np.ascontiguousarray(self.canonical2d_to_display(view, canon))

    def canonical_volume_to_user(self, mask3d: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.plan.undo_array(mask3d))

    def user_volume_to_canonical(self, mask3d: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.plan.apply_array(mask3d))

    # -- prompts -------------------------------------------------------------------------------------
    def user_points_to_canonical_ijk(self, points: np.ndarray, coords: str) -> np.ndarray:
        """(N, 3) voxel (i, j, k) of the volume or RAS mm -> canonical continuous (i', j', k')."""
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim == 1:
            pts = pts.reshape(1, -1)
        if pts.ndim != 2 or pts.shape[1] != 3 or not np.all(np.isfinite(pts)):
            raise PromptError(f"points must be an (N, 3) array of finite numbers, got shape {pts.shape}")
        if coords == "ras":
            ijk = self.volume.grid.ras_to_index(pts)
        elif coords == "voxel":
            ijk = pts
        else:
            raise PromptError(f"coords must be 'voxel' or 'ras', got {coords!r}")
        size = np.asarray(self.volume.grid.size_ijk, dtype=np.float64)
        out = np.empty_like(ijk)
        for n in range(3):
            axis, flipped = self.plan.perm[n], self.plan.flip[n]
            out[:, n] = (size[axis] - 1 - ijk[:, axis]) if flipped else ijk[:, axis]
        return out

    def canonical_ijk_to_display(self, view: str, ijk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (i', j', k') -> (slice coordinate, display (row, col)) for ``view``."""
        nk, _nj, _ni = self.array.shape
        i, j, k = ijk[:, 0], ijk[:, 1], ijk[:, 2]
        if view == "axial":
            return k, np.stack([j, i], axis=1)
        if view == "coronal":
            return j, np.stack([nk - 1 - k, i], axis=1)
        return i, np.stack([nk - 1 - k, j], axis=1)

    def display_to_canonical_ijk(self, view: str, c: int, rc: np.ndarray) -> np.ndarray:
        """Display (row, col) on canonical slice ``c`` -> canonical (i', j', k')."""
        nk, _nj, _ni = self.array.shape
        rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
        r, col = rc[:, 0], rc[:, 1]
        cc = np.full_like(r, float(c))
        if view == "axial":
            return np.stack([col, r, cc], axis=1)
        if view == "coronal":
            return np.stack([col, cc, nk - 1 - r], axis=1)
        return np.stack([cc, col, nk - 1 - r], axis=1)

    def canonical_ijk_to_user(self, ijk: np.ndarray) -> np.ndarray:
        size = np.asarray(self.volume.grid.size_ijk, dtype=np.float64)
        out = np.empty_like(np.asarray(ijk, dtype=np.float64))
        for n in range(3):
            axis, flipped = self.plan.perm[n], self.plan.flip[n]
            out[:, axis] = (size[axis] - 1 - ijk[:, n]) if flipped else ijk[:, n]
        return out
