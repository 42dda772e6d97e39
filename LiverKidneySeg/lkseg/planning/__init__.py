"""Surgical planning on a label map: volumetry, lesions and tumour burden, future liver remnant
(FLR, standardised to body surface area), kidney tumour metrics and R.E.N.A.L. nephrometry.

Inputs are a label map :class:`~lkseg.volume.Volume` (ZYX with geometry) and a
:class:`~lkseg.labels.LabelTable`; coordinates given or returned are **RAS mm** (3D Slicer's),
volumes mL, lengths mm. Formulas and thresholds, with their sources, are in the modules:
:mod:`~lkseg.planning.flr` (Mosteller, Vauthey, sFLR thresholds),
:mod:`~lkseg.planning.renal` (Kutikov & Uzzo 2009), :mod:`~lkseg.planning.couinaud` (Couinaud
segments by the plane method, landmarks in :mod:`~lkseg.planning.landmarks`).

Entry point: :func:`run_plan` (everything) or the single steps below.
"""

from __future__ import annotations

from lkseg.planning._index import LabelIndex
from lkseg.planning.couinaud import PRESETS, SEGMENT_NAMES, CouinaudResult, couinaud_segments, parse_segments
from lkseg.planning.flr import (
    SFLR_THRESHOLDS,
    FLRResult,
    Patient,
    Resection,
    ResectionPlane,
    bsa_mosteller,
    compute_flr,
    resection_region,
    standardized_tlv,
)
from lkseg.planning.landmarks import CouinaudLandmarks, propose_landmarks
from lkseg.planning.lesions import Lesion, TumourBurden, find_lesions, tumour_burden
from lkseg.planning.padua import PaduaScore, padua_risk, padua_size
from lkseg.planning.plan import PlanOptions, PlanResult, run_plan
from lkseg.planning.renal import RenalScore, complexity_of, nephrometry, score_e, score_l, score_n, score_r
from lkseg.planning.volumetry import StructureVolume, attach_mesh_volumes, structure_volumes

__all__ = [
    "PRESETS",
    "SEGMENT_NAMES",
    "SFLR_THRESHOLDS",
    "CouinaudLandmarks",
    "CouinaudResult",
    "FLRResult",
    "LabelIndex",
    "Lesion",
    "PaduaScore",
    "Patient",
    "PlanOptions",
    "PlanResult",
    "RenalScore",
    "Resection",
    "ResectionPlane",
    "StructureVolume",
    "TumourBurden",
    "attach_mesh_volumes",
    "bsa_mosteller",
    "complexity_of",
    "compute_flr",
    "couinaud_segments",
    "find_lesions",
    "nephrometry",
    "padua_risk",
    "padua_size",
    "parse_segments",
    "propose_landmarks",
    "resection_region",
    "run_plan",
    "score_e",
    "score_l",
    "score_n",
    "score_r",
    "standardized_tlv",
    "structure_volumes",
    "tumour_burden",
]
