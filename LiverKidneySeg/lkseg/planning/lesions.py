"""Per-lesion analysis: connected components of a lesion label with their size and position.

For every lesion (26-connected component of, e.g., ``liver_tumor``) this computes:

* volume (mL) from the voxel count;
* the longest axial diameter and the longest extent perpendicular to it (mm), on the axial
  slice where the lesion is longest (RECIST-style; measured on the outline through the pixel-edge
  midpoints, within one voxel of the true diameter of a round lesion; voxel-sharp corners are
  cut by half a voxel, see :func:`lkseg.planning._geometry.boundary_face_points`);
* the largest 3D diameter (mm) — R of R.E.N.A.L. for kidney tumours;
* the centroid in RAS mm;
* the organ segment it belongs to: the organ it touches over the most voxel faces (a lesion
  that touches no organ of its kind is reported as *outside its organ* and gets no organ
  measurements, never a guessed one);
* the distance (mm) from the lesion to the organ's outer surface: the smallest distance
  between the lesion's boundary voxels and the boundary voxels of the organ region (organ +
  its lesions (+ intrahepatic vessels for the liver), internal holes filled); 0 when the
  lesion reaches the capsule. Accurate to about one voxel.

Tumour burden per organ is the summed tumour volume and its share of the organ volume (organ
including its lesions).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from lkseg.planning._geometry import (
    axial_axis,
    boundary_face_points,
    boundary_voxels,
    feret_2d,
    max_diameter,
    spacing_zyx,
    zyx_to_ras,
)
from lkseg.planning._index import (
    KIDNEY_NAMES,
    LIVER_LESION_NAMES,
    LIVER_VESSEL_NAMES,
    LabelIndex,
    grow_box,
    union_box,
)
from lkseg.progress import CancelToken

__all__ = ["Lesion", "TumourBurden", "find_lesions", "organ_names_for", "tumour_burden"]

log = logging.getLogger(__name__)

_FULL = np.ones((3, 3, 3), dtype=bool)

#: A lesion of at least ``SHAPE_MIN_ML`` that fills less than ``SHAPE_MIN_FILL`` of the sphere whose
#: diameter is its largest 3D diameter is flagged as elongated (``Lesion.notes["shape"]``, a planning
#: warning): a prolate shape 4 times longer than wide fills 1/16 of that sphere, and tumours and cysts
#: are rounder than that. What fills less is more often a vessel, the renal pelvis, bowel or a
#: partial-volume rim that an automatic model called lesion (the phantom-trained demo model on real
#: CT: a 5.1 mL "kidney tumour" 59 mm long in the renal sinus of a kidney without one).
SHAPE_MIN_FILL = 1.0 / 16.0
SHAPE_MIN_ML = 0.5


@dataclass
class Lesion:
    """One connected lesion.

    Attributes:
        structure: lesion structure name (``"liver_tumor"``).
        index: 1-based number within its structure, largest first.
        voxels / volume_ml: size.
        centroid_ras: centre of mass, RAS mm.
        axial_long_mm / axial_short_mm: longest axial diameter and the perpendicular extent (mm).
        axial_slice: numpy index (along :func:`axial_axis`) of the slice where they were measured.
        axial_long_ends_ras: the two ends of the longest axial diameter, RAS mm.
        max_diameter_mm: largest 3D diameter (mm).
        organ: the organ segment it belongs to, or None when it touches none (outside its organ).
        organ_contact_faces: voxel faces shared with that organ.
        distance_to_surface_mm: lesion to organ capsule (mm), 0 when it reaches the capsule.
        notes: reasons for unavailable fields, warnings.
    """

    structure: str
    index: int
    voxels: int
    volume_ml: float
    centroid_ras: tuple[float, float, float]
    axial_long_mm: float
    axial_short_mm: float
    axial_slice: int
    axial_long_ends_ras: tuple[tuple[float, float, float], tuple[float, float, float]]
    max_diameter_mm: float
    organ: str | None = None
    organ_contact_faces: int = 0
    distance_to_surface_mm: float | None = None
    notes: dict[str, str] = field(default_factory=dict)
    # the lesion's voxels: a boolean ZYX crop and the index of its [0, 0, 0] in the label map
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    offset: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.structure} {self.index}"

    def to_dict(self) -> dict:
        return {
            "structure": self.structure,
            "index": self.index,
            "voxels": self.voxels,
            "volume_ml": self.volume_ml,
            "centroid_ras_mm": list(self.centroid_ras),
            "axial_long_diameter_mm": self.axial_long_mm,
            "axial_short_diameter_mm": self.axial_short_mm,
            "axial_slice_index": self.axial_slice,
            "axial_long_axis_ends_ras_mm": [list(p) for p in self.axial_long_ends_ras],
            "max_3d_diameter_mm": self.max_diameter_mm,
            "organ": self.organ,
            "organ_contact_faces": self.organ_contact_faces,
            "distance_to_organ_surface_mm": self.distance_to_surface_mm,
            "not_available": dict(self.notes),
        }


@dataclass
class TumourBurden:
    """Tumour burden of one organ: count, summed volume and share of the organ volume.

    ``organ_volume_ml`` includes the organ's lesions (e.g. TLV for the liver).
    """

    organ: str
    tumour_structure: str
    count: int
    tumour_volume_ml: float
    organ_volume_ml: float
    percent_of_organ: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def organ_names_for(structure: str) -> tuple[str, ...]:
    """Organ segments a lesion structure may belong to."""
    if structure.startswith("kidney"):
        return KIDNEY_NAMES
    if structure.startswith("liver"):
        return ("liver",)
    return ()


def _region_names(organ_names: Sequence[str]) -> tuple[str, ...]:
    """Segments that make up an organ's region (organ, its lesions, intrahepatic vessels)."""
    if "liver" in organ_names:
        return (*LIVER_LESION_NAMES, *LIVER_VESSEL_NAMES)
    if any(n.startswith("kidney") for n in organ_names):
        return ("kidney_tumor", "kidney_cyst")
    return ()


def _organ_region(crop: np.ndarray, organ_value: int, extra: np.ndarray | None) -> np.ndarray:
    """The organ plus the extra segments (``extra``: boolean LUT of their label values; its
    lesions, vessels) attached to it, internal holes filled."""
    organ = crop == organ_value
    if extra is not None:
        union = organ | extra[crop]
        comps, n = ndimage.label(union, structure=_FULL)
        keep = np.zeros(n + 1, dtype=bool)
        keep[np.unique(comps[organ])] = True
        keep[0] = False
        region = keep[comps]
    else:
        region = organ
    # fill holes: background components that do not touch the crop border
    bg, n = ndimage.label(~region)
    if n > 1:
        faces = [bg[0], bg[-1], bg[:, 0], bg[:, -1], bg[:, :, 0], bg[:, :, -1]]
        border = np.unique(np.concatenate([f.ravel() for f in faces]))
        inner = np.ones(n + 1, dtype=bool)
        inner[border] = False
        inner[0] = False
        region |= inner[bg]
    return region


def find_lesions(
    index: LabelIndex,
    structure: str,
    *,
    min_volume_ml: float = 0.0,
    cancel: CancelToken | None = None,
) -> list[Lesion]:
    """Connected components (26-connectivity) of ``structure`` with their measurements.

    Args:
        index: the scanned label map.
        structure: lesion structure name (``"liver_tumor"``, ``"kidney_tumor"``, ...).
        min_volume_ml: components smaller than this are reported in the log and skipped
            (default 0: every component is kept).
        cancel: polled between lesions.

    Returns:
        Lesions ordered by volume, largest first (``index`` 1, 2, ...).
    """
    values = index.present([structure])
    if not values:
        return []
    grid = index.labels.grid
    shape = index.labels.shape
    organ_names = organ_names_for(structure)
    organ_values = index.present(organ_names)
    box = grow_box(index.bbox(values), 1, shape)  # type: ignore[arg-type]
    offset = np.array([s.start for s in box])
    crop = index.labels.array[box]
    comps, _n = ndimage.label(index.lut(values)[crop], structure=_FULL)
    sp = spacing_zyx(grid)
    voxel_ml = grid.voxel_volume_ml

    lesions: list[Lesion] = []
    organ_of: dict[int, int] = {}  # id(lesion) -> organ value
    for lab, obj in enumerate(ndimage.find_objects(comps), start=1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        if obj is None:
            continue
        sub_box = grow_box(obj, 1, crop.shape)
        comp = comps[sub_box] == lab
        count = int(comp.sum())
        if count * voxel_ml < min_volume_ml:
            log.info("%s component of %d voxels is below %.3f mL and is skipped", structure, count, min_volume_ml)
            continue
        lesion = _measure(grid, structure, comp, offset + np.array([s.start for s in sub_box]), sp, voxel_ml)
        _check_shape(lesion)
        organ_value, faces = _contact(crop[sub_box], comp, organ_values)
        if organ_value is None:
            lesion.notes["organ"] = f"touches no {'/'.join(organ_names) or 'organ'} segment: outside its organ"
            lesion.notes["distance_to_surface_mm"] = "not available: the lesion lies outside its organ"
            log.warning(
                "%s component at RAS %s touches no %s: outside its organ",
                structure,
                _fmt(lesion.centroid_ras),
                organ_names,
            )
        else:
            lesion.organ = index.name_of(organ_value)
            lesion.organ_contact_faces = faces
            organ_of[id(lesion)] = organ_value
        lesions.append(lesion)
    _surface_distances(index, [les for les in lesions if id(les) in organ_of], organ_of, sp, cancel)
    lesions.sort(key=lambda les: -les.voxels)
    for i, lesion in enumerate(lesions, start=1):
        lesion.index = i
    return lesions


def _surface_distances(
    index: LabelIndex, lesions: list[Lesion], organ_of: dict[int, int], sp: np.ndarray, cancel
) -> None:
    """Distance from each lesion to the outer surface of its organ region (one region per organ)."""
    shape = index.labels.shape
    for organ_value in sorted(set(organ_of.values())):
        if cancel is not None:
            cancel.raise_if_cancelled()
        mine = [les for les in lesions if organ_of[id(les)] == organ_value]
        organ_name = index.name_of(organ_value)
        extra_values = index.present(_region_names(organ_names_for(organ_name) or (organ_name,)))
        extra = index.lut(extra_values) if extra_values else None
        box = index.bbox([organ_value])
        for les in mine:  # exophytic lesions may reach beyond the organ's box
            box = union_box(box, tuple(slice(int(o), int(o) + n) for o, n in zip(les.offset, les.mask.shape)))  # type: ignore[union-attr]
        box = grow_box(box, 2, shape)  # type: ignore[arg-type]
        start = np.array([s.start for s in box])
        region = _organ_region(index.labels.array[box], organ_value, extra)
        tree = cKDTree((np.argwhere(boundary_voxels(region)) + start) * sp)
        for les in mine:
            pts = (np.argwhere(boundary_voxels(les.mask)) + les.offset) * sp
            dist, _ = tree.query(pts, k=1)
            les.distance_to_surface_mm = float(dist.min())


def _contact(crop: np.ndarray, comp: np.ndarray, organ_values: list[int]) -> tuple[int | None, int]:
    """The organ value sharing the most voxel faces with ``comp`` (6-neighbourhood)."""
    if not organ_values:
        return None, 0
    shell = ndimage.binary_dilation(comp) & ~comp
    values, counts = np.unique(crop[shell], return_counts=True)
    best, best_count = None, 0
    for v, c in zip(values.tolist(), counts.tolist()):
        if v in organ_values and c > best_count:
            best, best_count = int(v), int(c)
    return best, best_count


def _check_shape(lesion: Lesion) -> None:
    """Flag an elongated lesion (:data:`SHAPE_MIN_FILL`) in ``lesion.notes["shape"]``."""
    d = lesion.max_diameter_mm
    if lesion.volume_ml < SHAPE_MIN_ML or d <= 0:
        return
    fill = lesion.volume_ml * 1000.0 / (np.pi / 6.0 * d**3)
    if fill < SHAPE_MIN_FILL:
        lesion.notes["shape"] = (
            f"elongated: {lesion.volume_ml:.1f} mL over {d:.0f} mm fills {100 * fill:.1f} % of the sphere of that "
            f"diameter (a mass 4 times longer than wide fills {100 * SHAPE_MIN_FILL:.1f} %); more likely a vessel, duct, "
            "bowel or partial-volume rim than a mass: check it before planning on it"
        )


def _measure(grid, structure: str, comp: np.ndarray, offset: np.ndarray, sp: np.ndarray, voxel_ml: float) -> Lesion:
    idx = np.argwhere(comp)
    centroid = zyx_to_ras(grid, idx.mean(axis=0) + offset)[0]
    face_pts = boundary_face_points(comp)
    max_d, _, _ = max_diameter(face_pts * sp)
    axis = axial_axis(grid)
    others = [a for a in range(3) if a != axis]
    best = (0.0, 0.0, 0, np.zeros(2), np.zeros(2))
    for s in np.unique(idx[:, axis]):
        plane = np.take(comp, s, axis=axis)
        pts2 = boundary_face_points(plane) * sp[others]
        long_, short, a, b = feret_2d(pts2)
        if long_ > best[0]:
            best = (long_, short, int(s), a, b)
    long_, short, s, a, b = best
    ends = []
    for p in (a, b):
        zyx = np.zeros(3)
        zyx[axis] = s
        zyx[others] = p / sp[others]
        ends.append(tuple(float(v) for v in zyx_to_ras(grid, zyx + offset)[0]))
    return Lesion(
        structure=structure,
        index=0,
        voxels=len(idx),
        volume_ml=len(idx) * voxel_ml,
        centroid_ras=tuple(float(v) for v in centroid),  # type: ignore[arg-type]
        axial_long_mm=float(long_),
        axial_short_mm=float(short),
        axial_slice=int(s + offset[axis]),
        axial_long_ends_ras=(ends[0], ends[1]),
        max_diameter_mm=float(max_d),
        mask=comp,
        offset=offset,
    )


def tumour_burden(index: LabelIndex, lesions: Sequence[Lesion], tumour_structure: str) -> list[TumourBurden]:
    """Tumour burden per organ from the lesions of ``tumour_structure`` that lie in an organ.

    The organ volume includes all of its lesions (tumours and cysts) that touch it.
    """
    organ_names = organ_names_for(tumour_structure)
    out = []
    for organ in organ_names:
        organ_values = index.present([organ])
        if not organ_values:
            continue
        mine = [les for les in lesions if les.structure == tumour_structure and les.organ == organ]
        tumour_ml = float(sum(les.volume_ml for les in mine))
        organ_ml = index.volume_ml(organ_values) + _attached_lesion_ml(organ, lesions)
        pct = 100.0 * tumour_ml / organ_ml if organ_ml > 0 else None
        out.append(TumourBurden(organ, tumour_structure, len(mine), tumour_ml, organ_ml, pct))
    return out


def _attached_lesion_ml(organ: str, lesions: Sequence[Lesion]) -> float:
    return float(sum(les.volume_ml for les in lesions if les.organ == organ))


def _fmt(p) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in p) + ")"
