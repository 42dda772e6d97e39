"""Position checks of automatic organs: refuse components that cannot be the organ they are called.

A phantom-trained network can call the aorta a kidney or the bladder a kidney on real CT. Each
organ component (organ plus its lesions) is checked against the body's midline (RAS x of the
centroid of the voxels above -500 HU) and against the liver:

* a kidney whose centre lies within ``kidney_midline_mm`` of the midline (spine, aorta, IVC);
* a kidney whose centre lies more than ``kidney_below_liver_mm`` below the liver's centre
  (pelvis: bladder, bowel) or more than ``kidney_above_liver_mm`` above it (chest);
* a kidney whose centre lies less than ``kidney_front_of_spine_mm`` in front of the back of the
  spine (the 10th percentile of RAS y, i.e. the posterior tenth - vertebral arches and spinous
  processes -, of the voxels above ``spine_hu`` within ``spine_half_width_mm`` of the midline, over
  the kidney's head-foot range; a percentile from the back, so an enhanced aorta in front of the
  spine does not move it): kidneys lie beside the vertebral bodies, never among the back muscles (a
  phantom-trained network called the right erector spinae a kidney on real slabs: one centre lay
  10 mm behind that line, another, 73 mL on slab3-62, 1 mm in front of it). Measured centres:
  example_ct's kidneys 36-46 mm in front (whole scan and four 20-slice slabs), the validation and
  held-out phantoms' (seeds 2000-2011, 1000-1011, exact masks) 12-55 mm; the limit is half the
  smallest normal distance (6 mm; 0 mm, i.e. "behind the line", until the slab3-62 piece was seen);
* a spleen whose centre lies on the patient's right of the midline (more than ``spleen_side_mm``),
  or less than ``spleen_front_of_spine_mm`` in front of the back of the spine (the same line as for
  the kidneys): the spleen lies against the diaphragm in the left upper quadrant, its centre level
  with the vertebral bodies, never among the back muscles. Measured centres: example_ct's spleen
  40-44 mm in front of that line (whole scan and three 20-slice slabs), the validation and held-out
  phantoms' (seeds 2000-2011, 1000-1011) 30-75 mm, the left erector spinae's 11 mm behind it; a
  19 mL "spleen" that the phantom-trained network drew over the left back muscles of a real slab
  below the spleen lay 6 mm in front of it. The limit (15 mm, half the smallest normal distance)
  was set after looking at that slab. Both limits are anatomy read on one real patient and the
  phantoms: a kidney or spleen pressed far back (e.g. a very thin patient) would be refused and
  must then be drawn with a box;
* any organ (liver, kidney, spleen) whose centre lies less than ``hip_clearance_mm`` above the top of
  the hip joints, or at a level where air fills at least ``chest_air_fraction`` of the body's
  cross-section (lungs), read by :func:`lkseg.auto.levels.body_levels`: a pelvis-only or chest-only
  scan holds none of the four organs (a phantom-trained network drew all four on a real pelvis-only
  cut; their centres lay 22-70 mm above the hip joints, the real organs' 197-246 mm). A
  transplanted or pelvic kidney is refused too and must be drawn by hand (a box: ``lkseg refine``).

When every piece of an organ of at least ``fragment_ml`` was refused, its smaller pieces go too (a
scan shorter than the networks' context is extended for them and its labels cropped back, which
can cut an organ into a piece and fragments).

Then each kidney that is left is named by the side of the midline it lies on (a right kidney on the
patient's left is a mirrored organ, a clinical error; a phantom-trained network named the real left
kidney "right" and a piece of the spleen "left" on a real 20-slice slab): one kidney a side, the
larger piece kept where two lie on the same side (the other is refused and reported), and every
renaming reported.

Refused components are set to background; each refusal is reported. RAS uses the grid's full
direction, so any storage orientation works. The label array is ZYX on ``grid``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

from lkseg.auto.levels import BodyLevels, body_levels
from lkseg.auto.postprocess import values_box
from lkseg.labels import LabelTable
from lkseg.volume import Grid

__all__ = ["BodyFacts", "PositionConfig", "refuse_implausible_positions"]


@dataclass(frozen=True)
class PositionConfig:
    """Thresholds (mm) of :func:`refuse_implausible_positions`."""

    kidney_midline_mm: float = 25.0
    kidney_below_liver_mm: float = 160.0
    kidney_above_liver_mm: float = 80.0
    spleen_side_mm: float = 20.0
    spleen_front_of_spine_mm: float = 15.0
    kidney_front_of_spine_mm: float = 6.0
    spine_hu: float = 200.0
    spine_half_width_mm: float = 25.0
    hip_clearance_mm: float = 110.0
    chest_air_fraction: float = 0.4
    fragment_ml: float = 1.0


def _centre_ras(mask: np.ndarray, grid: Grid, offset=(0, 0, 0)) -> np.ndarray:
    """RAS centre of ``mask``, a (k, j, i) crop whose first voxel is ``offset`` of ``grid``."""
    kji = np.argwhere(mask) + np.asarray(offset)
    step = max(1, len(kji) // 50000)
    return grid.index_to_ras(kji[::step, ::-1].astype(np.float64)).mean(axis=0)


def _midline_bone(image: np.ndarray, grid: Grid, mid_x: float, config: PositionConfig) -> np.ndarray:
    """RAS (N, 3) of the voxels above ``spine_hu`` within ``spine_half_width_mm`` of the midline."""
    kji = np.argwhere(image > config.spine_hu)
    if len(kji) > 400_000:
        kji = kji[:: len(kji) // 400_000 + 1]
    ras = grid.index_to_ras(kji[:, ::-1].astype(np.float64))
    return ras[np.abs(ras[:, 0] - mid_x) < config.spine_half_width_mm]


def _behind_spine(piece: np.ndarray, offset, centre: np.ndarray, bone: np.ndarray, grid: Grid) -> float | None:
    """How far (mm) the piece's centre lies behind the back of the spine (the posterior tenth of the
    midline bone) over its head-foot range (RAS y: anterior positive); None without enough spine
    there (1 mL). ``piece`` is a (k, j, i) crop whose first voxel is ``offset``."""
    kji = np.argwhere(piece) + np.asarray(offset)
    z = grid.index_to_ras(kji[:: max(1, len(kji) // 20000), ::-1].astype(np.float64))[:, 2]
    spine = bone[(bone[:, 2] >= z.min()) & (bone[:, 2] <= z.max())]
    if len(spine) * grid.voxel_volume_ml < 1.0:
        return None
    return float(np.percentile(spine[:, 1], 10) - centre[1])


def _from_spine(behind: float) -> str:
    return f"{-behind:.0f} mm in front of" if behind <= 0 else f"{behind:.0f} mm behind"


class BodyFacts:
    """What the position checks read from the image alone, each computed on first use: the body's
    midline (RAS x), its levels (:func:`~lkseg.auto.levels.body_levels`) and the midline bone.
    One instance can serve several calls of :func:`refuse_implausible_positions` on the same image
    (the U-Net's two passes), which then read the image once.

    Args:
        image: ZYX HU array on ``grid``.
        grid: its grid.
        config: thresholds (the bone's HU and half-width).
    """

    def __init__(self, image: np.ndarray, grid: Grid, config: PositionConfig | None = None):
        self.image, self.grid, self.config = image, grid, config or PositionConfig()

    @cached_property
    def mid_x(self) -> float | None:
        """RAS x of the centroid of the voxels above -500 HU (every 4th row and column); None
        without any."""
        if not (self.image > -500).any():
            return None
        kji = np.argwhere(self.image[:, ::4, ::4] > -500) * np.array([1, 4, 4])
        return float(self.grid.index_to_ras(kji[:: max(1, len(kji) // 50000), ::-1].astype(np.float64)).mean(axis=0)[0])

    @cached_property
    def levels(self) -> BodyLevels:
        return body_levels(self.image, self.grid)

    @cached_property
    def bone(self) -> np.ndarray:
        return _midline_bone(self.image, self.grid, self.mid_x, self.config)


@dataclass
class _Piece:
    """A connected component: ``where`` its box in the label array, ``mask`` the component inside it."""

    where: tuple[slice, ...]
    mask: np.ndarray

    @property
    def offset(self) -> tuple[int, int, int]:
        return tuple(s.start for s in self.where)  # type: ignore[return-value]


def _pieces(labels: np.ndarray, values: list[int], objects: list) -> list[_Piece]:
    """Face-connected components of the voxels holding ``values``, in the order
    :func:`scipy.ndimage.label` numbers them over the whole array (labelled inside the values'
    bounding box, from ``objects = ndimage.find_objects(labels)``, not over the whole scan)."""
    box = values_box(objects, values, labels.shape)
    if box is None:
        return []
    comp, _ = ndimage.label(np.isin(labels[box], values))
    out = []
    for idx, sl in enumerate(ndimage.find_objects(comp), start=1):
        if sl is not None:
            where = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, sl))
            out.append(_Piece(where, comp[sl] == idx))
    return out


def refuse_implausible_positions(
    labels: np.ndarray,
    image: np.ndarray,
    grid: Grid,
    table: LabelTable,
    config: PositionConfig | None = None,
    body: BodyFacts | None = None,
) -> list[str]:
    """Remove (in place) organ components at impossible positions; returns one note per refusal.

    ``labels`` and ``image`` are ZYX arrays on ``grid``; ``body`` (optional) holds what was already
    read from ``image`` by an earlier call (same image and config)."""
    config = config or PositionConfig()
    body = body if body is not None else BodyFacts(image, grid, config)
    mid_x = body.mid_x
    if mid_x is None:
        return []
    value_of = {n: v for v, n in table.items()}
    notes: list[str] = []
    groups = {
        "liver": ("liver", "liver_tumor"),
        "kidney": ("kidney_right", "kidney_left", "kidney_tumor", "kidney_cyst"),
        "spleen": ("spleen",),
    }
    objects = ndimage.find_objects(labels) if labels.dtype.kind in "ui" and labels.any() else []
    liver_z = None  # the liver's centre, once its pieces are checked
    front_of_spine = {"kidney": config.kidney_front_of_spine_mm, "spleen": config.spleen_front_of_spine_mm}
    kidneys: list[tuple[_Piece, float, int]] = []  # (piece, RAS x - midline, organ voxels)
    organ_kidney = [value_of[n] for n in ("kidney_right", "kidney_left") if n in value_of]
    for organ, names in groups.items():
        values = [value_of[n] for n in names if n in value_of]
        refused, kept_large, kept_small = False, False, []
        for piece in _pieces(labels, values, objects) if values else ():
            centre = _centre_ras(piece.mask, grid, piece.offset)
            x, _, z = centre
            reason = _level_reason(organ, float(z), body.levels, config)
            if reason is None and organ == "kidney":
                if abs(x - mid_x) < config.kidney_midline_mm:
                    reason = f"its centre is {abs(x - mid_x):.0f} mm from the body's midline (spine/aorta?)"
                elif liver_z is not None and z < liver_z - config.kidney_below_liver_mm:
                    reason = f"its centre is {liver_z - z:.0f} mm below the liver's (pelvis?)"
                elif liver_z is not None and z > liver_z + config.kidney_above_liver_mm:
                    reason = f"its centre is {z - liver_z:.0f} mm above the liver's (chest?)"
            elif reason is None and organ == "spleen" and x - mid_x > config.spleen_side_mm:
                reason = f"its centre lies {x - mid_x:.0f} mm to the patient's right of the midline"
            if reason is None and organ in front_of_spine:
                behind = _behind_spine(piece.mask, piece.offset, centre, body.bone, grid)
                if behind is not None and -behind < front_of_spine[organ]:
                    reason = f"its centre lies {_from_spine(behind)} the back of the spine (back muscles?)"
            ml = float(piece.mask.sum()) * grid.voxel_volume_ml
            if reason:
                labels[piece.where][piece.mask] = 0
                refused = True
                notes.append(f"position check: refused a {ml:.0f} mL {organ} component: {reason}")
                continue
            if ml >= config.fragment_ml:
                kept_large = True
            else:
                kept_small.append(piece)
            if organ == "kidney":
                kidneys.append((piece, x - mid_x, int(np.isin(labels[piece.where][piece.mask], organ_kidney).sum())))
        if refused and not kept_large and kept_small:
            # fragments of a refused organ (e.g. pieces that joined it only in the slices a short scan
            # was extended by for the networks) do not stand for the organ on their own
            gone_ml = 0.0
            for piece in kept_small:
                labels[piece.where][piece.mask] = 0
                gone_ml += float(piece.mask.sum()) * grid.voxel_volume_ml
            kidneys = [k for k in kidneys if not any(k[0] is g for g in kept_small)]
            notes.append(
                f"position check: removed {gone_ml:.2f} mL of {organ} fragments "
                f"under {config.fragment_ml:g} mL left after the refusal"
            )
        if organ == "liver" and "liver" in value_of:
            box = values_box(objects, [value_of["liver"]], labels.shape)  # refusals only removed voxels
            if box is not None and (left := labels[box] == value_of["liver"]).any():
                liver_z = float(_centre_ras(left, grid, [b.start for b in box])[2])
    if len(organ_kidney) == 2:
        notes.extend(_name_kidneys_by_side(labels, kidneys, value_of, grid))
    return notes


def _level_reason(organ: str, z: float, levels: BodyLevels, config: PositionConfig) -> str | None:
    if levels.hip_top_z is not None and z - levels.hip_top_z < config.hip_clearance_mm:
        where = z - levels.hip_top_z
        hand = "; a transplanted or pelvic kidney must be drawn by hand" if organ == "kidney" else ""
        return (
            f"its centre lies {abs(where):.0f} mm {'above' if where >= 0 else 'below'} the top of the hip joints "
            f"(pelvis{hand})"
        )
    air = levels.air_fraction_at(z)
    if air >= config.chest_air_fraction:
        return f"air fills {100 * air:.0f} % of the body's cross-section at its centre (chest: lungs)"
    return None


def _name_kidneys_by_side(
    labels: np.ndarray, kidneys: list[tuple[_Piece, float, int]], value_of: dict, grid: Grid
) -> list[str]:
    """One kidney a side of the midline (RAS x > midline: the patient's right), renamed in place."""
    notes: list[str] = []
    for side, sign in (("right", 1.0), ("left", -1.0)):
        here = sorted((k for k in kidneys if k[1] * sign > 0), key=lambda k: -k[2])
        if not here:
            continue
        piece, offset, _ = here[0]
        own, other = value_of[f"kidney_{side}"], value_of[f"kidney_{'left' if side == 'right' else 'right'}"]
        view = labels[piece.where]
        wrong = piece.mask & (view == other)
        if wrong.any():
            view[wrong] = own
            notes.append(
                f"position check: {int(wrong.sum()) * grid.voxel_volume_ml:.0f} mL called the "
                f"{'left' if side == 'right' else 'right'} kidney lie {abs(offset):.0f} mm to the patient's {side} "
                f"of the midline: renamed the {side} kidney"
            )
        for extra, _, _ in here[1:]:
            ml = float(extra.mask.sum()) * grid.voxel_volume_ml
            labels[extra.where][extra.mask] = 0
            notes.append(
                f"position check: refused a {ml:.0f} mL kidney component: a second piece on the patient's {side} "
                f"(the {side} kidney is the larger one)"
            )
    return notes
