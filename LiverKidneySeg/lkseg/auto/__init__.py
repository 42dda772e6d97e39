"""Automatic segmentation: a load-once predictor with a two-stage cascade and postprocessing.

Example::

    from lkseg.auto import AutoSegmenter
    seg = AutoSegmenter("lkseg-demo-abdomen", device="auto")
    result = seg.predict(volume)             # result.labels lies on volume's exact grid
    print(result.volumes_ml, result.timings)
"""

from __future__ import annotations

from lkseg.auto.checks import check_ct_volume
from lkseg.auto.postprocess import PostprocessConfig, postprocess_labels
from lkseg.auto.predictor import AutoOptions, AutoResult, AutoSegmenter

__all__ = ["AutoOptions", "AutoResult", "AutoSegmenter", "PostprocessConfig", "check_ct_volume", "postprocess_labels"]
