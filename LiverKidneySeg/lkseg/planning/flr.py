"""Future liver remnant (FLR): resection by planes or a painted label, standardised to body size.

Formulas (``../shared/docs/clinical.md``, "Volumetry and future liver remnant"):

* Total liver volume TLV = liver + liver lesions (tumours and cysts) in mL. Intrahepatic vessels
  count when they are labelled as liver (as the automatic engine does); separate ``portal_vein`` /
  ``hepatic_vein`` segments are not added (a warning says so).
* Functional liver volume = TLV - tumour volume - cyst volume, and
  **measured FLR% = FLR / (TLV - tumours - cysts) x 100**, where FLR is the liver parenchyma left
  after the resection (tumours and cysts in the remnant excluded). clinical.md writes the
  denominator as "TLV - tumour volume"; a cyst is non-functional tissue like a tumour, and the
  numerator (FLR) excludes cysts, so the denominator excludes them too: without a resection the
  FLR is then 100%, and a large cyst can neither count as remnant nor shrink the FLR%.
  Both subtracted volumes are returned (``tumour_ml``, ``cyst_ml``; the denominator is
  ``functional_liver_ml``) and printed in the report beside the FLR%.
* Body surface area, Mosteller: BSA (m^2) = sqrt(height_cm x weight_kg / 3600)
  (Mosteller RD, N Engl J Med 1987;317:1098).
* Standardised TLV, Vauthey: sTLV (mL) = -794.41 + 1267.28 x BSA (Vauthey JN et al., Liver
  Transpl 2002;8:233-240). Standardised FLR: sFLR = FLR / sTLV x 100.
* Minimum safe sFLR by liver quality: 20% normal liver, 30% after extensive chemotherapy or
  with steatosis, 40% with cirrhosis (clinical.md; expert consensus, Abdalla EK et al., Ann
  Surg Oncol 2006;13:1271-1280).

The resected part is what the surgeon defines:

* one plane (point + normal in RAS mm, e.g. a Slicer markups plane) and the side to resect:
  ``"positive"`` removes the liver on the side the normal points to, ``"negative"`` the other;
* several planes, combined as ``"intersection"`` (a convex wedge: a voxel is resected when it
  lies on the resected side of *every* plane) or ``"union"`` (resected when on the resected
  side of *any* plane);
* Couinaud segments (``segments=(5, 6, 7, 8)``, presets in
  :data:`lkseg.planning.couinaud.PRESETS`), alone or together with planes (their union);
* a resection mask (a boolean/label Volume on the label map's grid, or a label such as
  ``"resection"`` in the label map's table): the liver inside it is resected.

A voxel belongs to a side by its centre (a voxel whose centre lies exactly on a plane stays in
the remnant), so volumes are exact to within half a voxel layer along the cut.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from lkseg.errors import InputError
from lkseg.planning._index import LIVER_LESION_NAMES, LIVER_VESSEL_NAMES, Box, LabelIndex
from lkseg.volume import Grid, Volume

if TYPE_CHECKING:  # pragma: no cover
    from lkseg.planning.couinaud import CouinaudResult

__all__ = [
    "BSA_RANGE",
    "HEIGHT_RANGE_CM",
    "SFLR_THRESHOLDS",
    "WEIGHT_RANGE_KG",
    "FLRResult",
    "Patient",
    "Resection",
    "ResectionPlane",
    "bsa_mosteller",
    "compute_flr",
    "resection_region",
    "standardized_tlv",
]

log = logging.getLogger(__name__)

LiverQuality = Literal["normal", "chemotherapy", "steatosis", "cirrhosis"]

#: Minimum safe standardised FLR (fraction of sTLV) by liver quality. Source: clinical.md;
#: Abdalla EK et al., Ann Surg Oncol 2006;13:1271-1280 (20% normal, 30% after extensive
#: chemotherapy / steatosis, 40% cirrhosis).
SFLR_THRESHOLDS: dict[str, float] = {"normal": 0.20, "chemotherapy": 0.30, "steatosis": 0.30, "cirrhosis": 0.40}

#: Plausible adult ranges. Values outside are refused as typing/unit errors (30 cm, 900 kg).
HEIGHT_RANGE_CM = (100.0, 250.0)
WEIGHT_RANGE_KG = (25.0, 350.0)
#: BSA range over which the Vauthey formula gives a positive sTLV (sTLV > 0 needs BSA > 0.63).
BSA_RANGE = (0.8, 3.5)

# Vauthey JN et al., Liver Transpl 2002;8:233-240: TLV (mL) = -794.41 + 1267.28 x BSA (m^2).
_VAUTHEY_INTERCEPT_ML = -794.41
_VAUTHEY_SLOPE_ML_PER_M2 = 1267.28


def bsa_mosteller(height_cm: float, weight_kg: float) -> float:
    """Body surface area (m^2) by Mosteller: sqrt(height_cm x weight_kg / 3600).

    Raises:
        InputError: height or weight missing, not finite, or outside the plausible adult range
            (:data:`HEIGHT_RANGE_CM`, :data:`WEIGHT_RANGE_KG`).
    """
    h = _plausible(height_cm, HEIGHT_RANGE_CM, "height", "cm")
    w = _plausible(weight_kg, WEIGHT_RANGE_KG, "weight", "kg")
    return math.sqrt(h * w / 3600.0)  # Mosteller RD, N Engl J Med 1987;317:1098


def standardized_tlv(bsa_m2: float) -> float:
    """Standardised total liver volume (mL) from BSA (m^2): -794.41 + 1267.28 x BSA (Vauthey 2002)."""
    bsa = float(bsa_m2)
    if not math.isfinite(bsa) or not BSA_RANGE[0] <= bsa <= BSA_RANGE[1]:
        raise InputError(
            f"body surface area {bsa_m2!r} m^2 is outside the plausible adult range {BSA_RANGE[0]}-{BSA_RANGE[1]} m^2"
        )
    return _VAUTHEY_INTERCEPT_ML + _VAUTHEY_SLOPE_ML_PER_M2 * bsa


def _plausible(value: float | None, bounds: tuple[float, float], what: str, unit: str) -> float:
    if value is None:
        raise InputError(f"patient {what} is missing; it is needed for the body surface area")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"patient {what} {value!r} is not a number ({unit})") from None
    if not math.isfinite(v) or not bounds[0] <= v <= bounds[1]:
        raise InputError(
            f"patient {what} {value!r} {unit} is implausible (expected {bounds[0]:g}-{bounds[1]:g} {unit} for an adult)"
        )
    return v


@dataclass(frozen=True)
class Patient:
    """Body size and liver quality for the standardised FLR.

    Attributes:
        height_cm / weight_kg: None when unknown (then BSA, sTLV and sFLR are "not available").
        liver_quality: ``"normal"``, ``"chemotherapy"``, ``"steatosis"`` or ``"cirrhosis"``.
    """

    height_cm: float | None = None
    weight_kg: float | None = None
    liver_quality: str = "normal"

    def __post_init__(self) -> None:
        if self.liver_quality not in SFLR_THRESHOLDS:
            raise InputError(f"liver quality {self.liver_quality!r} is not one of {sorted(SFLR_THRESHOLDS)}")


@dataclass(frozen=True)
class ResectionPlane:
    """A cutting plane in RAS mm (Slicer markups plane: its centre and normal).

    Attributes:
        point_ras: a point on the plane (mm).
        normal_ras: plane normal (any length > 0; normalised here).
        side: ``"positive"`` resects the side the normal points to, ``"negative"`` the other.
    """

    point_ras: tuple[float, float, float]
    normal_ras: tuple[float, float, float]
    side: Literal["positive", "negative"] = "positive"

    def __post_init__(self) -> None:
        p = np.asarray(self.point_ras, dtype=float).reshape(-1)
        n = np.asarray(self.normal_ras, dtype=float).reshape(-1)
        if p.shape != (3,) or n.shape != (3,) or not (np.all(np.isfinite(p)) and np.all(np.isfinite(n))):
            raise InputError(
                f"a resection plane needs a 3D point and normal, got {self.point_ras!r}, {self.normal_ras!r}"
            )
        norm = float(np.linalg.norm(n))
        if norm < 1e-9:
            raise InputError(f"the resection plane normal {self.normal_ras!r} has zero length")
        if self.side not in ("positive", "negative"):
            raise InputError(f"resection side must be 'positive' or 'negative', got {self.side!r}")
        object.__setattr__(self, "point_ras", tuple(float(v) for v in p))
        object.__setattr__(self, "normal_ras", tuple(float(v) for v in n / norm))

    def to_dict(self) -> dict:
        return {"point_ras_mm": list(self.point_ras), "normal_ras": list(self.normal_ras), "side": self.side}

    @classmethod
    def parse(cls, text: str) -> ResectionPlane:
        """``"R,A,S:nR,nA,nS[:positive|negative]"`` (RAS mm; the side defaults to positive). The
        numbers may be separated by spaces instead of commas (``"-20 10 30:1 0 0"``, handy in CSV).

        Raises:
            InputError: the text does not have that form.
        """
        form = "expected 'R,A,S:nR,nA,nS' or 'R,A,S:nR,nA,nS:positive|negative'"
        parts = str(text).strip().split(":")
        if len(parts) not in (2, 3):
            raise InputError(f"resection plane {text!r}: {form}")
        try:
            point = [float(v) for v in re.split(r"[,\s]+", parts[0].strip())]
            normal = [float(v) for v in re.split(r"[,\s]+", parts[1].strip())]
        except ValueError:
            raise InputError(
                f"resection plane {text!r}: point and normal must be 3 comma-separated numbers each"
            ) from None
        if len(point) != 3 or len(normal) != 3:
            raise InputError(f"resection plane {text!r}: point and normal must have 3 numbers each")
        side = parts[2].strip().lower() if len(parts) == 3 else "positive"
        return cls(tuple(point), tuple(normal), side)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Resection:
    """What is resected: planes and/or Couinaud segments, a mask, or a label of the label map.

    Attributes:
        planes: cutting planes; combine: ``"intersection"`` (convex wedge) or ``"union"``.
        segments: Couinaud segments (1-8) to resect (needs Couinaud landmarks); with planes,
            the resected part is the segments **plus** the planes' region (e.g. segments 2-3
            and a non-anatomical wedge of segment 4).
        mask: a Volume on the label map's grid; non-zero voxels are resected.
        label: structure name in the label map's table whose voxels are resected.
    """

    planes: tuple[ResectionPlane, ...] = ()
    combine: Literal["intersection", "union"] = "intersection"
    mask: Volume | None = None
    label: str | None = None
    segments: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        given = sum([bool(self.planes) or bool(self.segments), self.mask is not None, self.label is not None])
        if given != 1:
            raise InputError(
                "a resection needs exactly one of: planes and/or Couinaud segments, a resection mask, or a resection label"
            )
        if self.combine not in ("intersection", "union"):
            raise InputError(f"planes combine as 'intersection' or 'union', got {self.combine!r}")
        segs = tuple(sorted({int(v) for v in self.segments}))
        if any(v < 1 or v > 8 for v in segs):
            raise InputError(f"Couinaud segments are numbered 1 to 8, got {list(self.segments)}")
        object.__setattr__(self, "planes", tuple(self.planes))
        object.__setattr__(self, "segments", segs)

    def describe(self) -> dict:
        if self.segments:
            out: dict = {"kind": "segments", "segments": list(self.segments)}
            if self.planes:
                out.update(kind="segments+planes", combine=self.combine, planes=[p.to_dict() for p in self.planes])
            return out
        if self.planes:
            return {"kind": "planes", "combine": self.combine, "planes": [p.to_dict() for p in self.planes]}
        if self.mask is not None:
            return {"kind": "mask", "source": self.mask.meta.get("source")}
        return {"kind": "label", "label": self.label}


def resection_region(
    grid: Grid, planes: Sequence[ResectionPlane], combine: str = "intersection", box: Box | None = None
) -> np.ndarray:
    """Boolean ZYX mask of voxels (inside ``box``, default the whole grid) on the resected side.

    A voxel is on the resected side of a plane when the signed distance of its centre,
    ``(x - point) . normal`` in RAS mm, is > 0 for ``side="positive"`` (< 0 for "negative").
    """
    if not planes:
        raise InputError("no resection plane given")
    if box is None:
        box = tuple(slice(0, n) for n in grid.shape)  # type: ignore[assignment]
    ks, js, is_ = (np.arange(b.start, b.stop, dtype=np.float64) for b in box)
    m = grid.ijk_to_ras  # RAS = m[:3,:3] @ (i, j, k) + m[:3, 3]
    out = np.zeros((len(ks), len(js), len(is_)), dtype=bool)
    for n_plane, plane in enumerate(planes):
        n = np.asarray(plane.normal_ras)
        coef = n @ m[:3, :3]  # the signed distance is linear in (i, j, k)
        const = float(n @ (m[:3, 3] - np.asarray(plane.point_ras)))
        in_plane = (coef[1] * js)[:, None] + (coef[0] * is_)[None, :] + const
        for z, k in enumerate(ks):  # slice by slice: no float volume in memory
            dist = in_plane + coef[2] * k
            side = dist > 0 if plane.side == "positive" else dist < 0
            if n_plane == 0:
                out[z] = side
            elif combine == "union":
                out[z] |= side
            else:
                out[z] &= side
    return out


@dataclass
class FLRResult:
    """Result of a virtual resection. Volumes in mL, percentages in %.

    ``None`` means "not available" and ``notes`` says why (e.g. height/weight unknown).
    """

    tlv_ml: float
    lesion_ml: float
    tumour_ml: float
    cyst_ml: float
    functional_liver_ml: float
    resected_ml: float
    resected_parenchyma_ml: float
    remnant_ml: float
    flr_ml: float
    flr_percent: float
    tumour_in_remnant_ml: float
    resection: dict
    liver_quality: str
    threshold_percent: float
    height_cm: float | None = None
    weight_kg: float | None = None
    bsa_m2: float | None = None
    stlv_ml: float | None = None
    sflr_percent: float | None = None
    verdict: str = "not available"
    margin_percent_points: float | None = None
    notes: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: resected liver (parenchyma + lesions) as a boolean ZYX crop and its box in the label map
    resected_mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    resected_box: Box | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("resected_mask", "resected_box")}
        out["not_available"] = out.pop("notes")
        return out


def compute_flr(
    index: LabelIndex, resection: Resection, patient: Patient | None = None, couinaud: CouinaudResult | None = None
) -> FLRResult:
    """Resect virtually and compute remnant volumes, measured and standardised FLR, verdict.

    Args:
        index: the scanned label map (needs a ``liver`` segment).
        resection: planes, mask or label defining the resected part.
        patient: height, weight and liver quality; None = unknown body size, normal liver.
        couinaud: the Couinaud segments (needed when the resection names segments).

    Raises:
        InputError: no liver; the resection misses the liver (nothing resected); the resection
            removes the whole functional liver; implausible height/weight; bad mask/label.
        GeometryMismatchError: a resection mask on another voxel grid.
    """
    patient = patient or Patient()
    grid = index.labels.grid
    liver_values = index.present(["liver"])
    if not liver_values:
        raise InputError("the label map has no liver segment: the future liver remnant cannot be computed")
    lesion_values = index.present(LIVER_LESION_NAMES)
    tumour_values = index.present(["liver_tumor"])
    painted = _resection_label_values(index, resection)
    box = index.bbox(liver_values + lesion_values + painted)
    crop = index.labels.array[box]
    # A resection label painted into a flat label map replaces the liver label there, so its
    # voxels are resected liver parenchyma (paint it inside the liver, as Slicer's editor does
    # with "masking: inside liver"; use a separate mask when it overlaps other segments).
    parenchyma = index.lut(liver_values + painted)[crop]
    lesion = index.lut(lesion_values)[crop]
    cut = index.lut(painted)[crop] if painted else _resected(index, resection, box, couinaud)
    lesion = _attached(parenchyma, lesion)
    tumour = lesion & index.lut(tumour_values)[crop]
    vml = grid.voxel_volume_ml
    tlv = float((parenchyma.sum() + lesion.sum()) * vml)
    lesion_ml = float(lesion.sum() * vml)
    tumour_ml = float(tumour.sum() * vml)
    functional = tlv - lesion_ml
    resected_par = float((parenchyma & cut).sum() * vml)
    resected = resected_par + float((lesion & cut).sum() * vml)
    flr = float((parenchyma & ~cut).sum() * vml)
    tumour_left = float((tumour & ~cut).sum() * vml)
    cyst_ml = lesion_ml - tumour_ml  # every liver lesion that is not a tumour is a cyst
    if resected <= 0:
        raise InputError(f"the resection {_describe(resection)} does not cut the liver: nothing would be resected")
    if flr <= 0:
        raise InputError(
            f"the resection {_describe(resection)} removes the whole liver parenchyma: no remnant would be left"
        )
    threshold = SFLR_THRESHOLDS[patient.liver_quality]
    result = FLRResult(
        tlv_ml=tlv,
        lesion_ml=lesion_ml,
        tumour_ml=tumour_ml,
        cyst_ml=cyst_ml,
        functional_liver_ml=functional,
        resected_ml=resected,
        resected_parenchyma_ml=resected_par,
        remnant_ml=tlv - resected,
        flr_ml=flr,
        flr_percent=100.0 * flr / functional,
        tumour_in_remnant_ml=tumour_left,
        resection=resection.describe(),
        liver_quality=patient.liver_quality,
        threshold_percent=100.0 * threshold,
        height_cm=patient.height_cm,
        weight_kg=patient.weight_kg,
        resected_mask=cut & (parenchyma | lesion),
        resected_box=box,
    )
    if tumour_left > 0:
        result.warnings.append(f"{tumour_left:.1f} mL of liver tumour remains in the remnant")
    for name in LIVER_VESSEL_NAMES:
        values = index.present([name])
        if values:
            result.warnings.append(
                f"{name} is a separate segment ({index.volume_ml(values):.1f} mL) and is not counted in the TLV "
                "(label intrahepatic vessels as liver to include them)"
            )
    if patient.height_cm is None or patient.weight_kg is None:
        missing = " and ".join(
            w for w, v in (("height", patient.height_cm), ("weight", patient.weight_kg)) if v is None
        )
        reason = f"not available: patient {missing} unknown"
        for key in ("bsa_m2", "stlv_ml", "sflr_percent", "verdict"):
            result.notes[key] = reason
        return result
    result.bsa_m2 = bsa_mosteller(patient.height_cm, patient.weight_kg)
    result.stlv_ml = standardized_tlv(result.bsa_m2)
    result.sflr_percent = 100.0 * flr / result.stlv_ml
    result.margin_percent_points = result.sflr_percent - result.threshold_percent
    result.verdict = "sufficient" if result.sflr_percent >= result.threshold_percent else "insufficient"
    return result


def _attached(parenchyma: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """Lesion voxels whose component touches the liver parenchyma (26-connectivity)."""
    if not lesion.any():
        return lesion
    from scipy import ndimage

    comps, _ = ndimage.label(lesion | parenchyma, structure=np.ones((3, 3, 3), dtype=bool))
    keep = np.zeros(int(comps.max()) + 1, dtype=bool)
    keep[np.unique(comps[parenchyma])] = True
    keep[0] = False
    attached = lesion & keep[comps]
    if attached.sum() < lesion.sum():
        log.warning(
            "%d liver-lesion voxels do not touch the liver and are left out of the TLV",
            int(lesion.sum() - attached.sum()),
        )
    return attached


def _resection_label_values(index: LabelIndex, resection: Resection) -> list[int]:
    if resection.label is None:
        return []
    values = index.values([resection.label])
    if not values:
        raise InputError(
            f"the label map's table has no resection label {resection.label!r} (labels: {sorted(index.table.values())})"
        )
    present = index.present([resection.label])
    if not present:
        raise InputError(f"the resection label {resection.label!r} has no voxel in the label map")
    return present


def _resected(index: LabelIndex, resection: Resection, box: Box, couinaud: CouinaudResult | None) -> np.ndarray:
    grid = index.labels.grid
    if resection.segments:
        if couinaud is None:
            raise InputError(
                f"a resection of Couinaud segments {list(resection.segments)} needs the segments: give Couinaud "
                "landmarks (or vessel segments to propose them)"
            )
        grid.require_same(couinaud.labels.grid, "Couinaud segment map")
        cut = couinaud.mask(resection.segments, box)
        if resection.planes:
            cut |= resection_region(grid, resection.planes, resection.combine, box)
        return cut
    if resection.planes:
        return resection_region(grid, resection.planes, resection.combine, box)
    if resection.mask is None:
        raise InputError("a resection needs planes, a mask or a label")
    grid.require_same(resection.mask.grid, "resection mask")
    return np.asarray(resection.mask.array[box]) != 0


def _describe(resection: Resection) -> str:
    if resection.segments:
        return f"of Couinaud segments {','.join(map(str, resection.segments))}" + (
            " and planes" if resection.planes else ""
        )
    if resection.planes:
        parts = [
            f"point {tuple(round(v, 1) for v in p.point_ras)} normal {tuple(round(v, 3) for v in p.normal_ras)} ({p.side})"
            for p in resection.planes
        ]
        return f"by plane{'s' if len(parts) > 1 else ''} " + "; ".join(parts)
    if resection.mask is not None:
        return "by mask"
    return f"by label {resection.label!r}"
