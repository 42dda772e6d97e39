"""The lesion path on real CT: one box on a lesion gives its 3D mask.

The real scans here have no tumours, so a lesion of known extent is inserted into the real liver of
``example_ct_sm`` (12 slices of :func:`refine_ct`): a sphere of 12 mm radius, 40 HU darker than the
scan's own voxels (an unenhanced liver of ~47 HU -> a water-like cyst), its real noise kept. The
truth is the sphere's own formula; LiteMedSAM (ONNX, the session's engine) draws it from one box on
its widest slice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lkseg.metrics import dice
from lkseg.volume import Volume


def _insert_sphere(image: Volume, liver: np.ndarray, radius_mm: float, delta_hu: float):
    sp = np.asarray(image.spacing[::-1], float)  # (k, j, i) mm
    dist = ndimage.distance_transform_edt(liver, sampling=sp)
    mid = liver.shape[0] // 2  # centre slice in the middle of the slab, deep in the liver
    candidates = np.argwhere(dist[mid] > radius_mm + 3.0)
    j, i = candidates[len(candidates) // 2]
    kk, jj, ii = np.indices(liver.shape)
    r = np.sqrt(((kk - mid) * sp[0]) ** 2 + ((jj - j) * sp[1]) ** 2 + ((ii - i) * sp[2]) ** 2)
    sphere = r <= radius_mm
    array = image.array.astype(np.float32)
    array[sphere] += delta_hu
    return Volume(array.astype(image.array.dtype), image.grid, dict(image.meta)), sphere, mid


def test_one_box_on_a_cyst_in_a_real_liver_gives_its_3d_mask(refine_engine, refine_ct):
    from lkseg.refine import PredictorConfig, PromptPredictor

    image, labels = refine_ct
    liver = labels.array == 5
    with_cyst, sphere, k = _insert_sphere(image, liver, radius_mm=12.0, delta_hu=-40.0)
    assert sphere.any(axis=(1, 2)).sum() <= image.shape[0] - 2  # the cyst ends inside the slab
    predictor = PromptPredictor.with_engine(refine_engine, PredictorConfig(prefetch=0, cache_slices=16))
    try:
        predictor.set_volume(with_cyst)
        jj, ii = np.nonzero(sphere[k])
        box = [[ii.min() - 1, jj.min() - 1, k], [ii.max() + 1, jj.max() + 1, k]]
        mask = predictor.propagate(
            "axial", k, predictor.predict("axial", k, box=box, structure="liver_tumor"), structure="liver_tumor"
        )
    finally:
        predictor.close()
    assert dice(mask, sphere) > 0.8, dice(mask, sphere)  # 0.90 when written
    got = np.flatnonzero(mask.any(axis=(1, 2)))
    own = np.flatnonzero(sphere.any(axis=(1, 2)))
    assert got.min() >= own.min() - 1 and got.max() <= own.max() + 1, (got, own)  # not along the liver
