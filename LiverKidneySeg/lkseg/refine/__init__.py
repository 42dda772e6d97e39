"""Interactive refinement: a SAM-family prompt predictor with boxes, clicks and 3D propagation.

* :class:`PromptPredictor` - ``set_volume(volume)`` once, then ``predict(view, slice_index,
  points, labels, box, mask_prior)`` (2D mask on the volume's grid) and ``propagate(...)``
  (3D mask). LiteMedSAM is the default model; Meta SAM / MedSAM checkpoints are accepted after a
  SHA-256 check.
* :class:`InteractiveSegment` - one 3D segment edited by a box and clicks (click follow-up
  into neighbouring slices, undo).
* :func:`combine` - add / subtract / replace a mask into a label map, confined to one label.
* :func:`simulate_structure` - the simulated-user protocol of ``lkseg refine-eval``.

Heavy dependencies (torch, onnxruntime, segment-anything) are imported when a predictor is built.
"""

from __future__ import annotations

from lkseg.refine.clicks import ClickConfig
from lkseg.refine.combine import CombineMode, combine
from lkseg.refine.evaluation import StepResult, StructureResult, format_results, simulate_structure
from lkseg.refine.predictor import PredictorConfig, PromptPredictor, SliceResult, check_ct
from lkseg.refine.propagation import PropagationConfig
from lkseg.refine.session import FollowConfig, InteractiveSegment

__all__ = [
    "ClickConfig",
    "CombineMode",
    "FollowConfig",
    "InteractiveSegment",
    "PredictorConfig",
    "PromptPredictor",
    "PropagationConfig",
    "SliceResult",
    "StepResult",
    "StructureResult",
    "check_ct",
    "combine",
    "format_results",
    "simulate_structure",
]
