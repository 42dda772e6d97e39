"""Physical-space resampling used by the predictor: image -> model grids, probabilities -> input grid.

The image goes through SimpleITK in LPS physical space and is never copied to float: SimpleITK
reads the stored CT (int16) and writes float32 samples of only the requested sub-grid.
Probabilities come back with :class:`ProbabilityField`: the model grids share the input grid's
direction up to a permutation/flip (they are built on its canonical reorientation), so the map
between the two is separable and trilinear interpolation needs no general resampler; and since
a convex combination cannot change an arg-max that all 8 neighbours share, only voxels near label
boundaries are interpolated. :func:`resample_channels` is the plain SimpleITK reference.
"""

from __future__ import annotations

import numpy as np

from lkseg.resample import sitk_image, sitk_reference
from lkseg.volume import Grid, Volume

__all__ = ["ImageSampler", "ProbabilityField", "axis_maps", "resample_channels"]


class ImageSampler:
    """Holds one CT as a SimpleITK image and samples it (linear, float32) on any grid.

    Args:
        volume: the input CT (any orientation, any numeric dtype).
        outside_hu: value of samples outside the image (air).
    """

    def __init__(self, volume: Volume, outside_hu: float = -1024.0):
        arr = volume.array
        if arr.dtype == np.float64 or arr.dtype.itemsize > 4 or arr.dtype == np.bool_:
            arr = arr.astype(np.float32)
        self.image = sitk_image(arr, volume.grid)
        self.grid = volume.grid
        self.outside = float(outside_hu)

    def sample(self, grid: Grid) -> np.ndarray:
        """ZYX float32 samples of the image at the voxel centres of ``grid``."""
        import SimpleITK as sitk

        out = sitk.Resample(
            self.image, sitk_reference(grid), sitk.Transform(), sitk.sitkLinear, self.outside, sitk.sitkFloat32
        )
        return sitk.GetArrayFromImage(out)


def resample_channels(probs: np.ndarray, source: Grid, target: Grid, channels: list[int]) -> np.ndarray:
    """Linearly resample the listed channels of a (C, Z, Y, X) stack onto ``target``.

    Returns (len(channels), *target.shape) float32; outside ``source`` channels read 0.
    """
    import SimpleITK as sitk

    out = np.empty((len(channels), *target.shape), dtype=np.float32)
    ref = sitk_reference(target)
    for n, c in enumerate(channels):
        img = sitk_image(probs[c], source)
        res = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        out[n] = sitk.GetArrayViewFromImage(res)
    return out


def axis_maps(source: Grid, target: Grid) -> list[tuple[float, float]] | None:
    """Per array axis (Z, Y, X) the affine map ``source index = a * target index + b``, when the
    two grids share their direction (so the map is separable); ``None`` otherwise."""
    if not np.allclose(source.direction, target.direction, atol=1e-6):
        return None
    origin = source.lps_to_index(target.index_to_lps([0.0, 0.0, 0.0]))
    unit = source.lps_to_index(target.index_to_lps(np.eye(3))) - origin  # row n: target axis n (i, j, k)
    if not np.allclose(unit - np.diag(np.diag(unit)), 0.0, atol=1e-6):
        return None
    maps_ijk = [(float(unit[n, n]), float(origin[n])) for n in range(3)]
    return maps_ijk[::-1]


class ProbabilityField:
    """A (C, Z, Y, X) probability stack on a source grid, read by trilinear interpolation at the
    voxels of an axis-aligned target grid (same direction, any spacing and offset).

    Interpolation follows ITK's linear interpolator: within half a voxel outside the source the
    edge value is used, farther out every sample is background (channel 0). The arg-max is
    computed exactly but cheaply: where the 8 source voxels around a target voxel share one
    arg-max, a convex combination cannot change it, so only voxels near label boundaries are
    interpolated. The stack is used in place (not copied).
    """

    def __init__(self, probs: np.ndarray, source: Grid):
        if min(probs.shape[1:]) < 2:
            probs = np.pad(probs, [(0, 0)] + [(0, 1 if n < 2 else 0) for n in probs.shape[1:]], mode="edge")
        self.probs = probs
        self.source = source
        self.labels = probs.argmax(axis=0).astype(np.uint8)
        lab = self.labels
        base = lab[:-1, :-1, :-1]
        uniform = np.ones(base.shape, dtype=bool)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    if dz or dy or dx:
                        uniform &= (
                            base == lab[dz : dz + base.shape[0], dy : dy + base.shape[1], dx : dx + base.shape[2]]
                        )
        self.uniform = uniform

    def _axes(self, target: Grid):
        maps = axis_maps(self.source, target)
        if maps is None:
            raise ValueError("the target grid's direction differs from the source grid's")
        axes = []
        for (a, b), n, n_src in zip(maps, target.shape, self.probs.shape[1:]):
            f = a * np.arange(n, dtype=np.float64) + b
            outside = (f < -0.5) | (f > n_src - 0.5)
            f = np.clip(f, 0.0, n_src - 1 - 1e-6)
            i0 = np.floor(f).astype(np.int64)
            axes.append((i0, (f - i0).astype(np.float32), outside))
        return axes

    @staticmethod
    def _outside(axes) -> np.ndarray:
        oz, oy, ox = (a[2] for a in axes)
        return oz[:, None, None] | oy[None, :, None] | ox[None, None, :]

    def _interpolate(self, axes, flat: np.ndarray, shape, channels: list[int]) -> np.ndarray:
        """Probabilities (len(channels), n) at the flat target indices ``flat`` (inside the source)."""
        iz, iy, ix = np.unravel_index(flat, shape)
        (z0, wz), (y0, wy), (x0, wx) = ((a[0][i], a[1][i]) for a, i in zip(axes, (iz, iy, ix)))
        out = np.zeros((len(channels), flat.size), dtype=np.float32)
        for dz, cz in ((0, 1 - wz), (1, wz)):
            for dy, cy in ((0, 1 - wy), (1, wy)):
                w_zy = cz * cy
                for dx, cx in ((0, 1 - wx), (1, wx)):
                    w = w_zy * cx
                    zi, yi, xi = z0 + dz, y0 + dy, x0 + dx
                    for n, c in enumerate(channels):
                        out[n] += w * self.probs[c, zi, yi, xi]
        return out

    def argmax(self, target: Grid, chunk: int = 1 << 20) -> np.ndarray:
        """Channel index (uint8, ZYX on ``target``) of the largest interpolated probability."""
        axes = self._axes(target)
        grid_ix = np.ix_(axes[0][0], axes[1][0], axes[2][0])
        out = self.labels[grid_ix]
        outside = self._outside(axes)
        out[outside] = 0
        todo = np.flatnonzero(~self.uniform[grid_ix] & ~outside)
        channels = [
            c for c in range(self.probs.shape[0]) if float(self.probs[c].max()) >= 1.0 / self.probs.shape[0] - 1e-6
        ]
        flat_out = out.reshape(-1)
        for start in range(0, todo.size, chunk):
            part = todo[start : start + chunk]
            p = self._interpolate(axes, part, target.shape, channels)
            flat_out[part] = np.asarray(channels, dtype=np.uint8)[p.argmax(axis=0)]
        return out

    def confidence(self, target: Grid, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
        """(winning probability, normalised entropy in [0, 1]) on ``target``, float32 ZYX;
        outside the source: probability 1 (background), entropy 0."""
        axes = self._axes(target)
        n_ch = self.probs.shape[0]
        best = np.ones(target.shape, dtype=np.float32).reshape(-1)
        entropy = np.zeros(target.shape, dtype=np.float32).reshape(-1)
        inside = np.flatnonzero(~self._outside(axes))
        for start in range(0, inside.size, chunk):
            part = inside[start : start + chunk]
            p = np.clip(self._interpolate(axes, part, target.shape, list(range(n_ch))), 1e-8, 1.0)
            best[part] = p.max(axis=0)
            entropy[part] = -(p * np.log(p)).sum(axis=0) / np.log(max(2, n_ch))
        return best.reshape(target.shape), entropy.reshape(target.shape)
