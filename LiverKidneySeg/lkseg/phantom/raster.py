"""Rasterising implicit shapes onto a voxel grid of any orientation (painter's algorithm).

Layers are painted in list order: a later layer overwrites an earlier one wherever its shape is
inside, optionally only over voxels that already carry one of the labels in ``only_over``. Each
layer writes its label into the label map and its HU value (a constant or a function of
position) into the image, so the image is exactly consistent with the labels before blur and
noise.

The grid is processed in slabs of consecutive k (array axis 0), on two threads (numpy releases
the GIL), and each layer is evaluated only in the index box of its physical bounding box. The
voxel coordinates are affine in (i, j, k); they are built as broadcastable arrays with the
smallest shapes possible, so that on an axial grid all cross-section-only arithmetic stays 2D.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from lkseg.phantom.shapes import Shape
from lkseg.progress import CancelToken, ProgressCallback, report
from lkseg.volume import Grid

__all__ = ["HUFunction", "IndexBox", "Layer", "block_coords", "index_box", "paint", "point_coords", "slabs"]

log = logging.getLogger(__name__)
F32 = np.float32

#: ``hu(X, Y, Z, level) -> HU array`` (broadcastable to the block).
HUFunction = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
#: ``(k0, k1, j0, j1, i0, i1)``: half-open index ranges, array (ZYX) order first.
IndexBox = tuple[int, int, int, int, int, int]


@dataclass
class Layer:
    """One painted structure.

    Attributes:
        name: for logs and lesion bookkeeping.
        label: label value written where the shape is inside.
        shape: the implicit shape (level < ``threshold`` is inside).
        hu: HU written there: a number or a :data:`HUFunction`.
        only_over: if given, paint only over voxels whose current label is in this set.
        threshold: level (mm) below which a voxel is inside (0: the shape's surface).
        track: count the voxels this layer paints (lesions: their true volumes).
        hu_depth: depth (mm) below the surface down to which ``hu`` depends on the level
            (a rim or a cortex); deeper voxels may get an approximate level.
    """

    name: str
    label: int
    shape: Shape
    hu: float | HUFunction
    only_over: Sequence[int] | None = None
    threshold: float = 0.0
    track: bool = False
    hu_depth: float = 0.0


def index_box(grid: Grid, bbox: tuple[np.ndarray, np.ndarray], pad: int = 1) -> IndexBox | None:
    """Index box (ZYX order) of the voxels whose centres may lie in the LPS box ``bbox``."""
    lo, hi = (np.asarray(b, dtype=np.float64) for b in bbox)
    if np.any(hi < lo):
        return None
    lo = np.maximum(lo, -1e6)
    hi = np.minimum(hi, 1e6)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = grid.lps_to_index(corners)
    imin = np.floor(ijk.min(axis=0)).astype(np.int64) - pad
    imax = np.ceil(ijk.max(axis=0)).astype(np.int64) + pad + 1
    size = np.array(grid.size_ijk)
    imin = np.clip(imin, 0, size)
    imax = np.clip(imax, 0, size)
    if np.any(imax <= imin):
        return None
    return (int(imin[2]), int(imax[2]), int(imin[1]), int(imax[1]), int(imin[0]), int(imax[0]))


def block_coords(grid: Grid, box: IndexBox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS coordinates (mm, float32) of the voxel centres of ``box`` as broadcastable arrays.

    Returns ``X, Y, Z``; each has shape ``(nk|1, nj|1, ni|1)``: an axis is kept only when the
    coordinate changes along it (so an axial grid gives ``X`` of shape ``(1, 1, ni)`` or
    ``(1, nj, ni)``).
    """
    k0, k1, j0, j1, i0, i1 = box
    mat = grid.direction @ np.diag(grid.spacing)  # column c: LPS step per index c (i, j, k)
    ramps = (
        np.arange(i0, i1, dtype=np.float64).reshape(1, 1, -1),
        np.arange(j0, j1, dtype=np.float64).reshape(1, -1, 1),
        np.arange(k0, k1, dtype=np.float64).reshape(-1, 1, 1),
    )
    out = []
    for axis in range(3):
        acc = None
        for c in range(3):
            coef = mat[axis, c]
            if abs(coef) < 1e-9:
                continue
            term = ramps[c] * coef
            acc = term if acc is None else acc + term
        acc = np.zeros((1, 1, 1)) if acc is None else acc
        out.append((acc + grid.origin[axis]).astype(F32))
    return out[0], out[1], out[2]


def slabs(nk: int, plane_voxels: int, target_voxels: int = 1 << 22) -> list[tuple[int, int]]:
    """Split ``range(nk)`` into slabs of about ``target_voxels`` voxels (deterministic)."""
    step = max(1, min(nk, target_voxels // max(1, plane_voxels)))
    return [(k, min(nk, k + step)) for k in range(0, nk, step)]


def point_coords(
    grid: Grid, kk: np.ndarray, jj: np.ndarray, ii: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS coordinates (float32) of voxels given by index arrays (any broadcastable shapes).

    Computed in float64 like :func:`block_coords`, so both give bit-identical coordinates.
    """
    mat = grid.direction @ np.diag(grid.spacing)
    ramps = (np.asarray(ii, dtype=np.float64), np.asarray(jj, dtype=np.float64), np.asarray(kk, dtype=np.float64))
    out = []
    for axis in range(3):
        acc = None
        for c in range(3):
            coef = mat[axis, c]
            if abs(coef) < 1e-9:
                continue
            term = ramps[c] * coef
            acc = term if acc is None else acc + term
        acc = np.zeros((1,)) if acc is None else acc
        out.append((acc + grid.origin[axis]).astype(F32))
    return out[0], out[1], out[2]


#: Layers whose block has more voxels than this are evaluated by tiles with a narrow band.
NARROW_BAND_MIN_VOXELS = 60_000
#: Lipschitz bound assumed for shape levels (|grad level| <= this) and a safety margin (mm).
LIPSCHITZ, BAND_MARGIN = 2.0, 1.0
_TILE = 64


def _strides(grid: Grid, cell_mm: float = 3.5) -> tuple[int, int, int]:
    """Coarse-node strides in ZYX order: about ``cell_mm`` per cell along each index axis."""
    si, sj, sk = (max(1, round(cell_mm / s)) for s in grid.spacing)
    return sk, sj, si


def _write(layer: Layer, lab: np.ndarray, img: np.ndarray, mask: np.ndarray, X, Y, Z, level) -> None:
    np.copyto(lab, np.uint8(layer.label), where=mask)
    hu = layer.hu if not callable(layer.hu) else layer.hu(X, Y, Z, level)
    np.copyto(img, np.asarray(hu, dtype=F32), where=mask, casting="unsafe")


def _paint_direct(layer: Layer, lut, labels, image, grid: Grid, box: IndexBox) -> int:
    k0, k1, j0, j1, i0, i1 = box
    X, Y, Z = block_coords(grid, box)
    level = layer.shape(X, Y, Z)
    lab = labels[k0:k1, j0:j1, i0:i1]
    img = image[k0:k1, j0:j1, i0:i1]
    mask = np.broadcast_to(level < F32(layer.threshold), lab.shape)
    if lut is not None:
        mask = mask & lut[lab]
    if not mask.any():
        return 0
    _write(layer, lab, img, mask, X, Y, Z, level)
    return int(np.count_nonzero(mask)) if layer.track else 0


def _paint_narrow_band(layer: Layer, lut, labels, image, grid: Grid, box: IndexBox, strides) -> int:
    """Evaluate the shape on coarse nodes; only cells near the surface are evaluated per voxel.

    A cell whose node level is beyond ``LIPSCHITZ * half-diagonal + margin`` (plus ``hu_depth``
    inside) is entirely outside (or deep inside); the result equals the per-voxel evaluation for
    any level with a gradient bounded by ``LIPSCHITZ``.
    """
    k0, k1, j0, j1, i0, i1 = box
    shape = (k1 - k0, j1 - j0, i1 - i0)
    nodes = [np.minimum(np.arange(0, n, s) + s // 2, n - 1) for n, s in zip(shape, strides)]
    Xc, Yc, Zc = point_coords(
        grid, (k0 + nodes[0]).reshape(-1, 1, 1), (j0 + nodes[1]).reshape(1, -1, 1), (i0 + nodes[2]).reshape(1, 1, -1)
    )
    cshape = tuple(len(n) for n in nodes)
    cl = np.broadcast_to(layer.shape(Xc, Yc, Zc), cshape)
    sp = np.asarray(grid.spacing)[::-1] * np.asarray(strides)
    band = LIPSCHITZ * 0.5 * float(np.sqrt((sp**2).sum())) + BAND_MARGIN
    thr = float(layer.threshold)
    deep_c = cl < thr - band - layer.hu_depth
    amb_c = ~deep_c & (cl <= thr + band)
    if not amb_c.any() and not deep_c.any():
        return 0

    def up(a: np.ndarray) -> np.ndarray:
        return a.repeat(strides[0], 0).repeat(strides[1], 1).repeat(strides[2], 2)[: shape[0], : shape[1], : shape[2]]

    inside = up(deep_c)
    amb_idx = np.nonzero(up(amb_c))
    lev = None
    if len(amb_idx[0]):
        Xa, Ya, Za = point_coords(grid, amb_idx[0] + k0, amb_idx[1] + j0, amb_idx[2] + i0)
        lev = np.broadcast_to(layer.shape(Xa, Ya, Za), amb_idx[0].shape)
        inside[amb_idx] = lev < F32(thr)
    if not inside.any():
        return 0
    lab = labels[k0:k1, j0:j1, i0:i1]
    img = image[k0:k1, j0:j1, i0:i1]
    mask = inside if lut is None else inside & lut[lab]
    if not mask.any():
        return 0
    if callable(layer.hu):
        level = up(np.ascontiguousarray(cl, dtype=F32))
        if lev is not None:
            level[amb_idx] = lev
        idx = np.nonzero(mask)
        X, Y, Z = point_coords(grid, idx[0] + k0, idx[1] + j0, idx[2] + i0)
        lab[idx] = np.uint8(layer.label)
        img[idx] = np.broadcast_to(np.asarray(layer.hu(X, Y, Z, level[idx]), dtype=F32), idx[0].shape)
    else:
        np.copyto(lab, np.uint8(layer.label), where=mask)
        np.copyto(img, F32(layer.hu), where=mask)
    return int(np.count_nonzero(mask)) if layer.track else 0


def _axial(grid: Grid) -> bool:
    """True when k runs along the patient z axis (x and y then depend on i and j only)."""
    return abs(abs(float(grid.direction[2, 2])) - 1.0) < 1e-6


def _paint_block(layer: Layer, lut, labels, image, grid: Grid, box: IndexBox, narrow_band: bool = True) -> int:
    """Paint one layer in one index box, by in-plane tiles (so composites skip far children);
    each tile is evaluated directly or with a narrow band, whichever is cheaper."""
    k0, k1, j0, j1, i0, i1 = box
    strides = _strides(grid)
    use_nb = narrow_band and np.prod(strides) >= 2 and not (layer.shape.separable and _axial(grid))
    if (k1 - k0) * (j1 - j0) * (i1 - i0) < NARROW_BAND_MIN_VOXELS:
        return _paint_direct(layer, lut, labels, image, grid, box)
    n = 0
    for j in range(j0, j1, _TILE):
        for i in range(i0, i1, _TILE):
            tile = (k0, k1, j, min(j1, j + _TILE), i, min(i1, i + _TILE))
            if use_nb:
                n += _paint_narrow_band(layer, lut, labels, image, grid, tile, strides)
            else:
                n += _paint_direct(layer, lut, labels, image, grid, tile)
    return n


def paint(
    grid: Grid,
    layers: Sequence[Layer],
    *,
    background_hu: float = -1000.0,
    post_slab: Callable[[np.ndarray, np.ndarray, int, int], None] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    threads: int | None = None,
    narrow_band: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Paint ``layers`` onto ``grid``.

    Args:
        grid: target voxel grid (any direction).
        layers: painted in order; later layers win.
        background_hu: image value where no layer paints (air).
        post_slab: ``f(labels_slab, image_slab, k0, k1)`` run on each finished slab (noise, blur).
        progress, cancel: progress callback and cancel token, polled per slab.
        threads: worker threads (default: up to 2).
        narrow_band: evaluate large layers on coarse nodes first and per voxel only near their
            surface (same result for shapes whose level gradient is at most ``LIPSCHITZ``).

    Returns:
        ``(labels, image, counts)``: uint8 and float32 ZYX arrays of ``grid.shape`` and, for layers
        with ``track=True``, the number of voxels each painted (by layer name).
    """
    nk, nj, ni = grid.shape
    labels = np.zeros(grid.shape, dtype=np.uint8)
    image = np.full(grid.shape, F32(background_hu), dtype=F32)
    boxes = [index_box(grid, layer.shape.bbox) for layer in layers]
    luts = []
    for layer in layers:
        if layer.only_over is None:
            luts.append(None)
        else:
            lut = np.zeros(256, dtype=bool)
            lut[list(layer.only_over)] = True
            luts.append(lut)
    parts = slabs(nk, nj * ni)

    def work(part: tuple[int, int]) -> dict[str, int]:
        if cancel is not None:
            cancel.raise_if_cancelled()
        s0, s1 = part
        counts: dict[str, int] = {}
        for layer, box, lut in zip(layers, boxes, luts):
            if box is None or box[1] <= s0 or box[0] >= s1:
                continue
            sub = (max(box[0], s0), min(box[1], s1), *box[2:])
            n = _paint_block(layer, lut, labels, image, grid, sub, narrow_band)
            if layer.track:
                counts[layer.name] = counts.get(layer.name, 0) + n
        if post_slab is not None:
            post_slab(labels[s0:s1], image[s0:s1], s0, s1)
        return counts

    workers = threads or min(2, os.cpu_count() or 1)
    totals: dict[str, int] = {layer.name: 0 for layer in layers if layer.track}
    if workers <= 1 or len(parts) == 1:
        results = (work(p) for p in parts)
        for done, counts in enumerate(results, 1):
            _merge(totals, counts)
            report(progress, done / len(parts), "painting anatomy")
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(work, p) for p in parts]
            try:
                for done, fut in enumerate(futures, 1):
                    _merge(totals, fut.result())
                    report(progress, done / len(parts), "painting anatomy")
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    return labels, image, totals


def _merge(totals: dict[str, int], counts: dict[str, int]) -> None:
    for key, value in counts.items():
        totals[key] = totals.get(key, 0) + value
