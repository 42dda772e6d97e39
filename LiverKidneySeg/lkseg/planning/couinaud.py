"""Couinaud liver segments 1-8 by the classical plane method, from landmarks in RAS mm.

Convention (Couinaud 1957 as described by Bismuth, World J Surg 1982), operationalised:

* **Hepatic-vein planes** (curved): around the IVC axis (its points interpolated by height),
  each hepatic vein gives an azimuth that may change with distance from the IVC: at a distance
  r the vein's azimuth is interpolated between its landmark points ordered by their own
  distance (constant beyond the first/last one). The surface is the vertical ruled surface
  through the vein, so a curving vein gives a curved plane. Seen from above in RAS
  (x patient right, y anterior), counter-clockwise from the patient's right:
  right of the right hepatic vein -> right posterior section (6, 7); between the right and
  middle vein (Cantlie's plane) -> right anterior section (5, 8); between the middle and left
  vein -> segment 4; beyond the left vein (umbilical fissure side) -> left lateral section
  (2, 3).
* **Portal plane**: the transverse (axial) plane through the portal bifurcation: above it
  segments 7, 8, 2 (and 4a), below it 6, 5, 3 (and 4b). Segment 4 is one label (4a/4b are
  reported as its parts above/below the plane).
* **Caudate (1)**: liver voxels posterior to the coronal plane through the portal
  bifurcation, no farther from the IVC axis (horizontally) than the bifurcation is, between
  15 mm below the bifurcation and the hepatic veins' confluence (the mean height of the three
  veins where they are 10 mm from the IVC axis), and not on the right-posterior side of the right vein's plane.

Voxels count by their centres; the liver region is ``liver`` + liver lesions + intrahepatic
vessels when they are separate segments, so tumours get the segment they lie in. Landmarks are
checked first (clear errors, never a silent mis-labelling): each vein must have a point at
>= 10 mm from the IVC axis and lie within 15 mm of the liver, the veins must run right ->
middle -> left around the IVC at every distance, the portal bifurcation within 20 mm of the
liver, the IVC within 30 mm; a liver in several large pieces is refused; a vein plane that
leaves one of the four sections empty, or a portal plane above/below the whole liver, is an
error.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from lkseg.errors import InputError
from lkseg.planning._geometry import boundary_voxels
from lkseg.planning._index import LIVER_LESION_NAMES, LIVER_VESSEL_NAMES, Box, LabelIndex
from lkseg.planning.landmarks import VEIN_KEYS, CouinaudLandmarks
from lkseg.volume import Volume

__all__ = [
    "PRESETS",
    "SEGMENT_NAMES",
    "CouinaudResult",
    "couinaud_segments",
    "label_points",
    "parse_segments",
]

log = logging.getLogger(__name__)

SEGMENT_NAMES = {
    1: "caudate lobe",
    2: "left lateral superior",
    3: "left lateral inferior",
    4: "left medial (4a + 4b)",
    5: "right anterior inferior",
    6: "right posterior inferior",
    7: "right posterior superior",
    8: "right anterior superior",
}
#: Named resections (Brisbane 2000 terminology; Strasberg, HPB 2000) -> resected segments.
PRESETS: dict[str, tuple[int, ...]] = {
    "right_hepatectomy": (5, 6, 7, 8),
    "left_hepatectomy": (2, 3, 4),
    "extended_right_hepatectomy": (4, 5, 6, 7, 8),
    "extended_left_hepatectomy": (2, 3, 4, 5, 8),
    "left_lateral_sectionectomy": (2, 3),
    "right_posterior_sectionectomy": (6, 7),
    "right_anterior_sectionectomy": (5, 8),
}
_MIN_VEIN_R = 10.0  # mm from the IVC axis: nearer, a vein's direction is undefined
_TOL_MM = {"vein": 15.0, "portal_bifurcation": 20.0, "ivc": 30.0}
_CAUDATE_BELOW_MM = 15.0
_PIECE_FRACTION = 0.01  # a second liver piece >= 1% of the largest is refused


def parse_segments(text: str) -> tuple[int, ...]:
    """``"5,6,7,8"``, a preset name (:data:`PRESETS`, ``-`` or ``_``) or ``"segmentectomy N"`` /
    ``"segmentectomy:N"`` -> sorted segment numbers.

    Raises:
        InputError: unknown preset, or numbers outside 1-8.
    """
    t = str(text).strip().lower().replace("-", "_").replace(" ", "_")
    if t in PRESETS:
        return PRESETS[t]
    if t.startswith("segmentectomy"):
        t = t[len("segmentectomy") :].lstrip(":_")
    try:
        segs = sorted({int(v) for v in t.replace("_", ",").split(",") if v.strip()})
    except ValueError:
        raise InputError(
            f"resection {text!r}: expected segment numbers like 5,6,7,8, 'segmentectomy 7' or one of {sorted(PRESETS)}"
        ) from None
    if not segs or any(s < 1 or s > 8 for s in segs):
        raise InputError(f"resection {text!r}: Couinaud segments are numbered 1 to 8")
    return tuple(segs)


def _wrap(a: np.ndarray | float) -> np.ndarray:
    return (np.asarray(a) + math.pi) % (2 * math.pi) - math.pi


class _Frame:
    """The IVC axis and the three veins' azimuth profiles (RAS)."""

    def __init__(self, lm: CouinaudLandmarks):
        ivc = np.asarray(lm.ivc)
        self.ivc = ivc[np.argsort(ivc[:, 2])]
        self.pb = np.asarray(lm.portal_bifurcation)
        self.profiles = {}
        for key in VEIN_KEYS:
            pts = lm.vein(key)
            r, phi = self.polar(pts)
            far = r >= _MIN_VEIN_R
            if not far.any():
                raise InputError(
                    f"the {key.replace('_', ' ')} landmarks all lie within {_MIN_VEIN_R:g} mm of the IVC axis: "
                    "its plane is undefined; add a point farther along the vein"
                )
            order = np.argsort(r[far])
            self.profiles[key] = (r[far][order], np.unwrap(phi[far][order]))
        # the veins' confluence: each vein's height where it is 10 mm from the IVC axis
        # (interpolated along its landmarks by distance, constant beyond them)
        heights = []
        for k in VEIN_KEYS:
            r, _ = self.polar(lm.vein(k))
            order = np.argsort(r)
            heights.append(float(np.interp(_MIN_VEIN_R, r[order], lm.vein(k)[order, 2])))
        self.confluence_z = float(np.mean(heights))
        self._check_order()

    def axis_xy(self, z: np.ndarray) -> np.ndarray:
        a = self.ivc
        return np.stack([np.interp(z, a[:, 2], a[:, 0]), np.interp(z, a[:, 2], a[:, 1])], axis=-1)

    def polar(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rel = pts[:, :2] - self.axis_xy(pts[:, 2])
        return np.hypot(rel[:, 0], rel[:, 1]), np.arctan2(rel[:, 1], rel[:, 0])

    def azimuth(self, key: str, r: np.ndarray) -> np.ndarray:
        rr, th = self.profiles[key]
        return np.interp(r, rr, th)

    def relative(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Middle-vein azimuth and the right/left veins' azimuths relative to it, at ``r``."""
        mid = self.azimuth("middle_hepatic_vein", r)
        right = _wrap(self.azimuth("right_hepatic_vein", r) - mid)
        left = _wrap(self.azimuth("left_hepatic_vein", r) - mid)
        return mid, right, left

    def _check_order(self) -> None:
        r_max = max(float(p[0].max()) for p in self.profiles.values())
        r = np.linspace(0.0, r_max + 1.0, 64)
        _, right, left = self.relative(r)
        if np.any(right >= 0) or np.any(left <= 0):
            where = r[(right >= 0) | (left <= 0)][0]
            raise InputError(
                "contradictory hepatic vein landmarks: seen from above, the right, middle and left hepatic veins "
                f"must run in that order counter-clockwise around the IVC (patient right -> anterior -> left); at "
                f"{where:.0f} mm from the IVC the right vein is {math.degrees(float(np.interp(where, r, right))):+.0f} "
                f"and the left vein {math.degrees(float(np.interp(where, r, left))):+.0f} degrees from the middle one "
                "(swapped labels, or LPS points given as RAS?)"
            )


def label_points(frame_or_landmarks: CouinaudLandmarks | _Frame, ras: np.ndarray) -> np.ndarray:
    """Couinaud segment (1-8, uint8) of each RAS point (N, 3) by the rules in the module text."""
    frame = frame_or_landmarks if isinstance(frame_or_landmarks, _Frame) else _Frame(frame_or_landmarks)
    ras = np.asarray(ras, dtype=np.float64).reshape(-1, 3)
    r, phi = frame.polar(ras)
    mid, right, left = frame.relative(r)
    delta = _wrap(phi - mid)
    superior = ras[:, 2] > frame.pb[2]
    out = np.empty(len(ras), dtype=np.uint8)
    posterior_right = delta < right
    anterior_right = ~posterior_right & (delta < 0)
    medial = (delta >= 0) & (delta < left)
    lateral = delta >= left
    out[posterior_right] = np.where(superior[posterior_right], 7, 6)
    out[anterior_right] = np.where(superior[anterior_right], 8, 5)
    out[medial] = 4
    out[lateral] = np.where(superior[lateral], 2, 3)
    r_pb = float(frame.polar(frame.pb[None])[0][0])
    caudate = (
        (ras[:, 1] < frame.pb[1])  # RAS +y is anterior: posterior to the bifurcation
        & (r <= r_pb)
        & (ras[:, 2] >= frame.pb[2] - _CAUDATE_BELOW_MM)
        & (ras[:, 2] <= frame.confluence_z)
        & ~posterior_right
    )
    out[caudate] = 1
    return out


@dataclass
class CouinaudResult:
    """Couinaud segments of one liver.

    Attributes:
        labels: uint8 ZYX label map on the label map's grid (0 outside the liver, 1-8).
        landmarks: the landmarks used (save them to reproduce every assignment).
        volumes_ml: segment -> volume (mL) of its liver region (parenchyma + lesions + vessels).
        parts_4_ml: segment 4's volume above (4a) and below (4b) the portal plane (mL).
        warnings: empty segments, small liver pieces, ...
    """

    labels: Volume
    landmarks: CouinaudLandmarks
    volumes_ml: dict[int, float]
    parts_4_ml: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    def mask(self, segments, box: Box | None = None) -> np.ndarray:
        """Boolean ZYX mask of the given segments (inside ``box``)."""
        arr = self.labels.array if box is None else self.labels.array[box]
        lut = np.zeros(256, dtype=bool)
        lut[list(segments)] = True
        return lut[arr]

    def segments_of(self, mask: np.ndarray, offset: np.ndarray) -> dict[int, float]:
        """Share (0-1) of a crop's voxels (``mask`` at ZYX ``offset``) in each segment."""
        box = tuple(slice(int(o), int(o) + n) for o, n in zip(offset, mask.shape))
        seg = self.labels.array[box][mask]
        if seg.size == 0:
            return {}
        counts = np.bincount(seg, minlength=9)
        return {s: float(counts[s] / seg.size) for s in range(1, 9) if counts[s]}

    def to_dict(self) -> dict:
        return {
            "method": "Couinaud plane method (hepatic-vein planes curved along the veins, transverse portal plane, caudate around the IVC)",
            "landmarks": self.landmarks.to_dict(),
            "segments": [
                {"segment": s, "name": SEGMENT_NAMES[s], "volume_ml": round(self.volumes_ml.get(s, 0.0), 3)}
                for s in range(1, 9)
            ],
            "segment_4_parts_ml": {k: round(v, 3) for k, v in self.parts_4_ml.items()},
            "warnings": list(self.warnings),
        }


def _liver_region(index: LabelIndex) -> tuple[list[int], Box, np.ndarray]:
    values = index.present(["liver"])
    if not values:
        raise InputError("the label map has no liver segment: Couinaud segments cannot be computed")
    values += index.present(LIVER_LESION_NAMES) + index.present(LIVER_VESSEL_NAMES)
    box = index.bbox(values)
    return values, box, index.lut(values)[index.labels.array[box]]  # type: ignore[index, return-value]


def _pieces(region: np.ndarray, voxel_ml: float, warnings: list[str]) -> None:
    comps, n = ndimage.label(region, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return
    sizes = np.sort(np.bincount(comps.ravel())[1:])[::-1]
    big = sizes[sizes >= _PIECE_FRACTION * sizes[0]]
    if len(big) > 1:
        raise InputError(
            f"the liver segment has {len(big)} separate pieces of "
            + ", ".join(f"{s * voxel_ml:.1f}" for s in big)
            + " mL: Couinaud segments need one connected liver (fix the segmentation, or remove the extra pieces)"
        )
    warnings.append(
        f"the liver segment has {n - 1} small detached piece(s) ({sizes[1:].sum() * voxel_ml:.2f} mL in all); "
        "they are labelled by the same planes"
    )


def _check_near(frame: _Frame, lm: CouinaudLandmarks, index: LabelIndex, region: np.ndarray, box: Box) -> None:
    grid = index.labels.grid
    offset = np.array([s.start for s in box])
    surface = (np.argwhere(boundary_voxels(region)) + offset)[:, ::-1].astype(np.float64)
    tree = cKDTree(grid.index_to_ras(surface))

    def inside(p: np.ndarray) -> bool:
        ijk = np.rint(grid.ras_to_index(p)).astype(int)[::-1] - offset
        return bool(np.all(ijk >= 0) and np.all(ijk < region.shape) and region[tuple(ijk)])

    checks = [("portal_bifurcation", np.asarray(lm.portal_bifurcation)[None], "portal_bifurcation")]
    checks += [(k, lm.vein(k), "vein") for k in VEIN_KEYS]
    for key, pts, kind in checks:
        for p in pts:
            if inside(p):
                continue
            d = float(tree.query(p)[0])
            if d > _TOL_MM[kind]:
                raise InputError(
                    f"the {key.replace('_', ' ')} landmark at RAS ({p[0]:.1f}, {p[1]:.1f}, {p[2]:.1f}) lies {d:.0f} mm "
                    f"outside the liver (allowed {_TOL_MM[kind]:g} mm): wrong point, or LPS given as RAS?"
                )
    d_ivc = min(0.0 if inside(p) else float(tree.query(p)[0]) for p in np.asarray(lm.ivc))
    if d_ivc > _TOL_MM["ivc"]:
        raise InputError(f"the IVC landmarks lie {d_ivc:.0f} mm or more from the liver (allowed {_TOL_MM['ivc']:g} mm)")


def couinaud_segments(index: LabelIndex, landmarks: CouinaudLandmarks) -> CouinaudResult:
    """Label every voxel of the liver region with its Couinaud segment.

    Args:
        index: the scanned label map (needs ``liver``).
        landmarks: RAS mm landmarks (:class:`CouinaudLandmarks`).

    Raises:
        InputError: no liver, a liver in several large pieces, landmarks outside the liver,
            contradictory vein order, a vein plane or the portal plane that misses the liver.
    """
    warnings: list[str] = []
    grid = index.labels.grid
    _values, box, region = _liver_region(index)
    _pieces(region, grid.voxel_volume_ml, warnings)
    frame = _Frame(landmarks)
    _check_near(frame, landmarks, index, region, box)
    offset = np.array([s.start for s in box])
    idx = np.nonzero(region)
    m = grid.ijk_to_ras  # RAS = m[:3, :3] @ (i, j, k) + m[:3, 3], applied to the (k, j, i) indices
    ras = np.stack(idx, axis=1).astype(np.float64) @ m[:3, 2::-1].T + (m[:3, 3] + m[:3, 2::-1] @ offset)
    seg = label_points(frame, ras)
    counts = np.bincount(seg, minlength=9)
    sections = {
        "right posterior (6, 7)": (6, 7),
        "right anterior (5, 8)": (5, 8),
        "4": (4,),
        "left lateral (2, 3)": (2, 3),
    }
    for name, segs in sections.items():
        if not counts[list(segs)].sum():
            raise InputError(
                f"no liver voxel falls in the {name} section: a hepatic vein plane misses the liver "
                "(check the hepatic vein landmarks)"
            )
    above = ras[:, 2] > frame.pb[2]
    if above.all() or not above.any():
        raise InputError(
            f"the portal plane through the bifurcation (S = {frame.pb[2]:.1f} mm) lies "
            f"{'below' if above.all() else 'above'} the whole liver: check the portal bifurcation landmark"
        )
    vml = grid.voxel_volume_ml
    for s in range(1, 9):
        if counts[s] == 0:
            warnings.append(f"Couinaud segment {s} ({SEGMENT_NAMES[s]}) is empty with these landmarks")
    full = np.zeros(index.labels.shape, dtype=np.uint8)
    crop = np.zeros(region.shape, dtype=np.uint8)
    crop[idx] = seg
    full[box] = crop
    in4 = seg == 4
    return CouinaudResult(
        labels=index.labels.with_array(full, meta={"label_table": {str(s): f"couinaud_{s}" for s in range(1, 9)}}),
        landmarks=landmarks,
        volumes_ml={s: float(counts[s] * vml) for s in range(1, 9)},
        parts_4_ml={"4a": float((in4 & above).sum() * vml), "4b": float((in4 & ~above).sum() * vml)},
        warnings=warnings,
    )
