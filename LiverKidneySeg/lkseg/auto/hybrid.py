"""Hybrid automatic segmentation: the U-Net locates each organ, LiteMedSAM draws it slice by slice.

Given the U-Net's label map (:class:`~lkseg.auto.AutoResult`), :func:`hybrid_refine`:

1. takes each organ's 3D connected components (liver, right kidney, left kidney, spleen; a
   component includes the organ's tumours and cysts), in the canonical LPS frame of
   :class:`~lkseg.refine.slices.VolumeSlicer` (numpy axes ``(k, j, i)``; an axial display slice
   is ``canonical[k]``: rows anterior -> posterior, columns patient right -> left);
2. on the key slices (:mod:`lkseg.auto.keyslices`: every slice on 3 mm CT, every
   ``round(sample_mm / slice thickness)``-th on thinner slices, each piece's ends, and every
   slice of an interval where an organ changes fast), boxes each 2D piece of it (plus
   ``box_margin_mm``) and decodes the box with the prompt model; each slice is encoded ONCE for
   all organs (they share the soft-tissue window); the slices in between get the
   signed-distance interpolation of the drawn ones; where the mask reaches along a side of the
   box that cuts the liver or the spleen, that side moves out (``HybridConfig.grow_organs``); in
   a descending pass over the drawn slices, a slice much smaller than the one above, or a kidney
   slice that disagrees with it (``HybridConfig.agree_organs``: drawn around the hilum from a small
   U-Net piece), is decoded again with that slice's box;
3. fuses: the prompt model's mask is kept inside the U-Net piece dilated by ``keep_within_mm``;
   where it is empty or its area is implausible next to the U-Net's (outside
   ``[min_area_ratio, max_area_ratio]``), the U-Net's piece is kept; a pixel claimed by two
   organs goes to the higher logit (no voxel in two organs);
4. extends each component up to ``extend_mm`` beyond the U-Net's first and last slice while the
   prompt model still sees the organ (area, overlap and HU checks against the previous slice);
   from the end of the upward sweep on, pixels held by organ pieces that the final postprocessing
   removes may be taken by another organ (``HybridConfig.free_strays``: a kidney pole the U-Net
   called liver);
5. puts the U-Net's tumours and cysts back: each piece that touches its (new) organ whole, pieces
   apart from it not at all; then runs the usual postprocessing
   (:func:`~lkseg.auto.postprocess.postprocess_labels`). In the corticomedullary
   (late arterial) phase, recognised by the drawn kidneys' cortex being much brighter than their
   core (:func:`corticomedullary_contrast`), the U-Net's kidney tumours are not put back: the
   phantom-trained U-Net calls the renal medulla of that phase tumour (on the real scan with
   arterial enhancement painted on, ~77 mL in two healthy kidneys), and a hypo-enhancing tumour
   looks like medulla then; the drawn kidney keeps those voxels and a warning gives their volume.
   Kidney cysts (their own label) are still put back. In any other phase, a kidney tumour or cyst
   piece isodense with the enhanced kidney around it (``ISO_*``: within 20 HU of parenchyma of at
   least 100 HU) is left out as kidney, with a warning: renal masses are hypo-attenuating to
   enhanced parenchyma in those phases (cysts far more), so a "lesion" CT cannot tell from the
   parenchyma around it is far likelier the phantom-trained model's error than a mass.
6. takes the renal sinus fat out of the drawn kidneys (:func:`carve_renal_sinus`): a box drawn
   across the hilum fills it, and reference kidneys (TotalSegmentator's, most manual ones) are
   parenchyma without the hilar and sinus fat.

Defaults were chosen on ``real-ct/totalsegmentator/example_ct_sm`` (see README "Automatic
segmentation" for which data chose what and which data reports what).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from lkseg.auto.keyslices import interpolate_slices, key_slices, mask_dice, slice_step
from lkseg.auto.postprocess import PostprocessConfig, components, organ_groups, postprocess_labels
from lkseg.labels import LabelTable
from lkseg.progress import CancelToken, ProgressCallback, report
from lkseg.volume import Grid, Volume

__all__ = [
    "HybridConfig",
    "HybridOutcome",
    "OrganPiece",
    "carve_renal_sinus",
    "corticomedullary_contrast",
    "fuse_slice",
    "hybrid_refine",
    "organ_components",
]

log = logging.getLogger(__name__)

ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")
_LESIONS = {"liver": ("liver_tumor",), "kidney": ("kidney_tumor", "kidney_cyst")}
#: Corticomedullary phase: in every kidney of at least ``CM_MIN_ML``, the median HU of its rim (depth
#: ``CM_RIM_SKIP_MM`` to ``CM_RIM_MM`` below its outline) exceeds that of its core (deeper than
#: ``CM_CORE_MM``) by ``CM_CONTRAST_HU`` or more (soft-tissue voxels, HU >= 0, only: the renal sinus
#: fat stays out). Physiology: cortex 150-230 vs medulla 70-110 HU in that phase, cortex ~ medulla in
#: the unenhanced, nephrographic and portal-venous phases. The outer ``CM_RIM_SKIP_MM`` is left out
#: of the rim: a drawn outline reaches a little beyond the kidney, into the partial-volume edge where
#: the cortex blurs into the perirenal fat, and on thin pixels that band is a large share of a rim
#: measured from the outline (at 3 mm voxels the rim is the outer voxel layer either way). A first
#: version measured the rim from the outline (0-4.5 mm) and the core from 7 mm: on the real
#: example_ct with arterial enhancement painted on and resampled to 0.57 mm pixels (1.6 mm slices,
#: ``bench_auto_real.py --speed-geometry 512-0.57``'s grid) the drawn kidneys read +43 / +33 HU
#: instead of +76 / +72 at the scan's own 3 mm, so the rule did not fire and 59 mL of renal medulla
#: stayed "kidney tumour". Measured rim - core with these constants: the real example_ct, reference
#: masks, at 3 / 0.78 / 0.57 mm: unenhanced -2 / 0 / 0 (drawn -1 to -6), portal-venous painted -18 /
#: -4 / -4 (drawn -9 / -12), arterial painted +76 / +54 / +52 (drawn at 0.57 mm +59 / +50); validation
#: phantoms 2000-2011 (exact kidneys incl. the sinus): portal-venous / nephrographic / unenhanced -2 to
#: +21, arterial +74 to +80.
CM_RIM_SKIP_MM = 2.0
CM_RIM_MM = 5.0
CM_CORE_MM = 8.0
CM_CONTRAST_HU = 40.0
CM_MIN_ML = 20.0
#: Kidney lesions isodense with enhanced parenchyma: a kidney tumour or cyst piece of a
#: phantom-trained U-Net whose core (voxels ``ISO_CORE_MM`` or deeper inside it) has a median HU
#: within ``ISO_CONTRAST_HU`` of its drawn kidney's parenchyma (the kidney's median away from every
#: U-Net kidney lesion by more than ``ISO_MARGIN_MM``), where that parenchyma is enhanced (median
#: >= ``ISO_ENHANCED_HU``; unenhanced it is 30-40 HU), is not put back: a renal mass in the
#: nephrographic or portal-venous phase enhances less than the parenchyma (a cyst not at all), so
#: one that CT cannot tell from the parenchyma is far likelier the phantom-trained model's error.
#: The parenchyma is the kidney's, not a ring around the piece: the U-Net often finds only part of a
#: tumour, and a ring around that part lies in the rest of it (a first version measured against a
#: 3 mm ring: true phantom tumours then read -13 to +39 HU, and a true 1.5 mL one was lost).
#: Measured (core - parenchyma) on the U-Net's pieces in hybrid mode: the validation phantoms' true
#: kidney tumours and cysts in enhanced phases (seeds 2000, 2002, 2003, 2006, 2007, 2009, 2010;
#: exact masks) -35 to -170 HU, none left out; their two false pieces that lie in parenchyma +5 and
#: +13 HU (left out), the others -89 to -170 HU; the false "tumours" in the healthy kidneys of the
#: real example_ct with portal-venous enhancement painted on -25 to +10 HU (10.6-12.8 mL of
#: 14.7-16.2 mL left out on the whole scan, its slab and the scan resampled to 1.6 mm).
ISO_CONTRAST_HU = 20.0
ISO_ENHANCED_HU = 100.0
ISO_CORE_MM = 1.5
ISO_MARGIN_MM = 6.0


@dataclass(frozen=True)
class HybridConfig:
    """Rules of the hybrid stage (distances in mm, areas as ratios).

    Attributes:
        box_margin_mm: margin added around the U-Net piece's box on each side.
        keep_within_mm: the prompt model's mask is cut to the U-Net piece dilated by this.
        min_area_ratio, max_area_ratio: the prompt model's area over the U-Net's on the same
            slice outside this range -> the U-Net's piece is kept on that slice.
        min_piece_mm2, min_piece_fraction: U-Net 2D pieces smaller than this (mm², or fraction
            of the organ's largest piece on that slice) get no box (kept as the U-Net drew them).
        extend_mm: how far beyond the U-Net's first/last slice a component may grow.
        extend_min_ratio, extend_max_ratio: area of an extension slice over the previous slice's.
        extend_hu_sd: an extension slice's mean HU must lie within this many standard
            deviations of the organ's HU (from the U-Net's mask).
        regrow: times a box is re-drawn around the mask when the mask runs into its side
            (the U-Net saw only part of the organ on that slice).
        neighbour_ratio: when an organ on a slice has less than this fraction of its area on
            the drawn slice below, that slice's box is tried too (0 = off). 0.9 (0.8 before):
            an organ the U-Net sees less and less of, slice after slice (the top of example_ct's
            spleen with portal-venous enhancement painted on: 498 -> 400 -> 355 -> 345 -> 289
            pixels where TotalSegmentator has ~490), shrinks by less than a fifth a slice and
            escaped the rule at 0.8.
        down_ratio: the same for the descending pass (``follow_down``), which compares with the
            drawn slice above. 0.8: organs taper downwards (the liver's lower tip), and at 0.9
            this pass pulled 1000-4000 pixels a slice of other tissue into the liver's tip on the
            1.6 mm real-size input (liver 0.930 -> 0.921, right kidney 0.851 -> 0.832).
        sample_mm: distance between the key slices that the prompt model draws (the encoder
            is the cost: ~1.5 s a slice on a 2-core CPU); slices in between are interpolated
            (signed distance) from the drawn ones. ``0`` draws every slice.
        change_dice: where an organ's masks on two consecutive key slices agree less than
            this (2D Dice), or the smaller area is under ``change_ratio`` of the larger, the
            slices between are drawn one by one (organ ends, fast-changing outlines, and the
            slice-below rule's chain).
        change_ratio: see ``change_dice`` (0.8; it was ``neighbour_ratio`` until that rose to 0.9,
            which would have drawn more slices on thin-slice CT).
        extend_step_mm: step of the extension beyond the U-Net's ends (slices skipped in
            between are interpolated).
        follow_down: the slice-below rule also runs from above, in a descending pass over the
            drawn slices (lower poles the U-Net saw only partly).
        free_strays: after the upward sweep, pixels held by organ pieces that the final
            postprocessing removes (all but the liver's and the spleen's largest piece, the two
            largest kidney pieces; over the drawn slices) may be taken by another organ in the
            later passes (descending pass, interpolation, extension). On example_ct the U-Net called
            the right kidney's lower pole liver, a piece apart from the liver: its pixels, which
            the prompt model drew for the kidney, were held by that piece and then removed with it
            (right kidney 0.884 -> 0.933 with this on; README, *The right kidney's lower pole*).
        whole_lesions: a U-Net tumour or cyst piece that touches its drawn organ is put back whole,
            also where the prompt model left it out of the organ (a hypodense tumour at the liver's
            edge: LiteMedSAM draws the parenchyma around it); off, only its voxels inside the drawn
            organ are. On the real scan with portal-venous enhancement and a 166 mL hypodense
            tumour painted at the liver's edge, liver + tumour Dice 0.962 -> 0.970 (README,
            *Lesions in the hybrid*).
        grow_organs: organs whose box grows towards a side where the U-Net cut them short. On a
            real scan the U-Net may miss part of the liver or the spleen, and LiteMedSAM draws
            only inside the box it is given, stopping 2-4 pixels short of a side that cuts the
            organ, so the ``regrow`` rule (the mask running into the side) does not fire there.
            When the mask comes within one box margin of a side (it reaches the U-Net's own
            extent; ``grow_reach`` margins for the organs listed there) along at least
            ``grow_fraction`` of that side, the side moves out by ``grow_step`` margins and the
            slice is decoded again, up to ``grow_times`` times
            (~0.03 s a decode; same embedding). The grown answer only adds to the first: the
            box's gained area is the mask's beyond ``keep_within_mm``, it takes nothing within a
            margin of another organ's U-Net piece that the first answer did not hold, and it is
            kept only when it adds at least ``grow_min_gain`` of the first mask's area and the
            pixels it adds have a mean HU within ``extend_hu_sd`` SD of the organ's. Only the
            organ's main 2D piece on the slice (half its area there or more, and at least
            ``grow_min_area`` of the organ's largest U-Net slice: at a tapering end a grown box
            reaches into the bowel) grows. ``grow_fraction``, ``grow_step`` and ``grow_times`` were
            set before measuring; the main-piece, area and gain conditions were added after
            looking at over-growth (a liver fragment on the painted portal-venous slab, the cut
            left lobe's tip into the colon on example_ct). README, *Where the U-Net cut an organ
            short*: what it does on cut versions of the real scan's U-Net output (the same
            patient, not new data).
        grow_reach: (organ, margins) pairs: how near a side the mask must come for it to grow (1
            margin when the organ is not listed). The liver's 2: where the U-Net missed its left
            lobe, anterior or posterior part, LiteMedSAM stopped ~5 pixels short of the cut on
            example_ct_sm (beyond one 2-pixel margin at 3 mm); at 2 the cut-liver Dice there rose
            0.759 -> 0.933 (anterior), 0.759 -> 0.907 (posterior), 0.802 -> 0.831 (left lobe), the
            unmodified scans unchanged; the spleen at 2 lost 0.007 on example_ct_sm and keeps 1.
            Chosen on the same patient's cut U-Net output (README).
        grow_fraction, grow_step, grow_times, grow_min_gain, grow_min_area: see ``grow_organs``.
        carve_sinus: take the renal sinus fat out of the drawn kidneys (:func:`carve_renal_sinus`).
            LiteMedSAM's box draws the kidney across its hilum, so the hilar and sinus fat (and the
            vessels and pelvis among it) become kidney; TotalSegmentator's kidneys, the references of
            ``bench_auto_real.py``, leave it out. Off: the kidneys as drawn.
        mirror_kidney: before the hybrid stage, when the U-Net and the locators found one kidney
            and not the other, look for the missing one at the mirror image of the found one
            (:mod:`lkseg.auto.mirror`; ``AutoOptions.relocate`` off turns it off too).
        fat_free_organs, max_fat_fraction: a drawn mask of these organs with fat (below -50 HU after
            1.5 mm in-plane smoothing, deeper than 2 mm inside it) on more than this share of its
            area is not the organ: the U-Net's piece is kept on that slice (:func:`fuse_slice`).
            Where the U-Net's "liver" ran on below the real liver tip, LiteMedSAM drew the colon
            there, 2-4x larger (its fat and gas: 1-43 % of the drawn area on slab and field-of-view
            cuts of example_ct); the real liver's drawn masks held at most 0.5 % on example_ct,
            its slab, the 1.6 mm input and the painted phases. 0.02 was set from that gap (README,
            *A kidney at the mirror image of the other*).
        sinus_level, sinus_fat_level, sinus_smooth_mm, sinus_max_fraction: see
            :func:`carve_renal_sinus`. Chosen on example_ct_sm (README, *The renal sinus*).
        decode_window: the decoder computes each mask only within ``keep_within_mm`` of its
            box (plus one embedding cell), where every rule reads it; the logits there are the
            whole-slice decode's (README, *Decoding a window*). Off: whole-slice decodes.
        agree_organs, agree_dice, agree_ratio, agree_gain: in the descending pass, a drawn slice of
            these organs whose mask agrees with the drawn slice above less than ``agree_dice``
            (2D Dice), where that slice is at least ``agree_ratio`` times its area (no tapering end),
            is decoded again with that slice's box, and the answer replaces the mask when it agrees
            with the slice above by ``agree_gain`` more (:func:`_realign`). The pass runs downwards
            from the drawn slice above, so a kidney's lower slices drawn around the hilum from a
            small U-Net piece are redrawn one after the other. Empty ``agree_organs``: off.
            README, *Kidney slices that disagree with the slice above*.
        checked_area_ratio, checked_cover: a prompt-model mask more than ``max_area_ratio`` times its
            U-Net piece's area, and at most ``checked_area_ratio`` times (0: off), is kept when it holds
            at least ``checked_cover`` of the piece and the pixels it adds have a mean HU within
            ``extend_hu_sd`` SD of the organ's median (the U-Net's; the fat rule still applies). Where
            the U-Net saw a third or less of an organ on a slice, the 3x bound alone refused the answer
            and kept the U-Net's sliver: on a tight field of view of the painted portal-venous scan
            (0.78 mm, 70 % of the width), a liver slice at the image's edge with 807 U-Net pixels,
            2672 in the reference and a LiteMedSAM answer of 2558 (2491 of them in the reference).
            6 and 0.8 were set before the first run (README, *A drawn organ much larger than the
            U-Net's piece*).
    """

    box_margin_mm: float = 6.0
    keep_within_mm: float = 15.0
    min_area_ratio: float = 0.5
    max_area_ratio: float = 3.0
    min_piece_mm2: float = 40.0
    min_piece_fraction: float = 0.05
    extend_mm: float = 20.0
    extend_min_ratio: float = 0.3
    extend_max_ratio: float = 1.5
    extend_hu_sd: float = 2.0
    regrow: int = 2
    neighbour_ratio: float = 0.9
    sample_mm: float = 4.0
    change_dice: float = 0.85
    change_ratio: float = 0.8
    down_ratio: float = 0.8
    extend_step_mm: float = 3.0
    follow_down: bool = True
    free_strays: bool = True
    whole_lesions: bool = True
    grow_organs: tuple[str, ...] = ("liver", "spleen")
    grow_fraction: float = 0.25
    grow_reach: tuple[tuple[str, float], ...] = (("liver", 2.0),)
    grow_step: float = 2.0
    grow_times: int = 6
    grow_min_gain: float = 0.05
    grow_min_area: float = 0.25
    carve_sinus: bool = True
    mirror_kidney: bool = True
    fat_free_organs: tuple[str, ...] = ("liver",)
    max_fat_fraction: float = 0.02
    sinus_level: float = 0.5
    sinus_fat_level: float = 0.25
    sinus_smooth_mm: float = 1.5
    sinus_max_fraction: float = 0.2
    decode_window: bool = True
    agree_organs: tuple[str, ...] = ("kidney_right", "kidney_left")
    agree_dice: float = 0.7
    agree_ratio: float = 0.8
    agree_gain: float = 0.1
    checked_area_ratio: float = 6.0
    checked_cover: float = 0.8


@dataclass
class OrganPiece:
    """One 3D connected component of an organ in the canonical (k, j, i) frame."""

    organ: str
    value: int
    mask: np.ndarray  # bool, canonical shape
    k_range: tuple[int, int]  # first, last slice (inclusive)


@dataclass
class HybridOutcome:
    """Labels on the input grid and what the hybrid stage did."""

    labels: np.ndarray
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    slices_encoded: int = 0
    fallback_slices: dict[str, int] = field(default_factory=dict)
    extended_slices: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def corticomedullary_contrast(
    hu: np.ndarray, kidney: np.ndarray, spacing_zyx: tuple[float, float, float]
) -> float | None:
    """Median HU of ``kidney``'s rim (``CM_RIM_SKIP_MM`` to ``CM_RIM_MM`` deep) minus the median HU of
    its core (deeper than ``CM_CORE_MM``), soft-tissue voxels (HU >= 0) only; ``None`` when the kidney is under
    ``CM_MIN_ML`` or either part is empty.

    ``hu`` and ``kidney`` are (k, j, i) arrays of one grid (numpy ZYX order), ``spacing_zyx`` its
    voxel size in that order (mm). The distance map is computed on the kidney's bounding box.
    """
    if float(kidney.sum()) * float(np.prod(spacing_zyx)) / 1000.0 < CM_MIN_ML:
        return None
    sl = _bbox(kidney)
    k, h = kidney[sl], hu[sl]
    depth = ndimage.distance_transform_edt(np.pad(k, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]  # background all round
    soft = k & (h >= 0)
    rim, core = h[soft & (depth > CM_RIM_SKIP_MM) & (depth <= CM_RIM_MM)], h[soft & (depth >= CM_CORE_MM)]
    if rim.size == 0 or core.size == 0:
        return None
    return float(np.median(rim)) - float(np.median(core))


def _bbox(mask: np.ndarray, pad=0) -> tuple[slice, ...] | None:
    """The bounding box of ``mask`` (None when empty), without a full-size label array, widened by
    ``pad`` voxels on each side (one number, or one per axis) within the array."""
    found = ndimage.find_objects(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    pads = [pad] * mask.ndim if isinstance(pad, int) else list(pad)
    return tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(found[0], pads, mask.shape))


def _kidneys(hu: np.ndarray, fused: np.ndarray, table: LabelTable) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(hu, mask)`` crops of the largest drawn piece of each kidney (right, left) in ``fused``."""
    value_of = {n: v for v, n in table.items()}
    out = []
    for side in ("kidney_right", "kidney_left"):
        if side not in value_of:
            continue
        box = _bbox(fused == value_of[side])
        if box is None:
            continue
        lab, _ = ndimage.label(fused[box] == value_of[side])
        out.append((hu[box], lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))))
    return out


def _corticomedullary(hu, fused, table: LabelTable, spacing_zyx) -> list[float] | None:
    """Rim-minus-core contrast of every drawn kidney (largest piece per side) when each is at least
    ``CM_CONTRAST_HU`` (the scan is in the corticomedullary phase); None otherwise, or when no
    kidney is large enough to tell."""
    contrasts = [corticomedullary_contrast(h, k, spacing_zyx) for h, k in _kidneys(hu, fused, table)]
    contrasts = [c for c in contrasts if c is not None]
    if not contrasts or min(contrasts) < CM_CONTRAST_HU:
        return None
    return contrasts


def organ_components(canon: np.ndarray, table: LabelTable, min_voxels: int = 1) -> list[OrganPiece]:
    """The organs' 3D components (organ plus its lesions) in a canonical label array.

    A kidney component goes to the side most of its kidney voxels carry.
    """
    names = dict(table.items())
    value_of = {n: v for v, n in names.items()}
    pieces: list[OrganPiece] = []
    groups = {
        "liver": ["liver", *_LESIONS["liver"]],
        "kidney": ["kidney_right", "kidney_left", *_LESIONS["kidney"]],
        "spleen": ["spleen"],
    }
    for members in groups.values():
        values = [value_of[m] for m in members if m in value_of]
        organ_values = [value_of[m] for m in members if m in value_of and m in ORGANS]
        if not organ_values:
            continue
        for sl, mask in components(np.isin(canon, values)):
            if int(mask.sum()) < min_voxels:
                continue
            votes = [int(np.count_nonzero(canon[sl][mask[sl]] == v)) for v in organ_values]
            if max(votes) == 0:
                continue  # lesion without any organ voxel: left to postprocessing
            value = organ_values[int(np.argmax(votes))]
            pieces.append(OrganPiece(names[value], value, mask, (sl[0].start, sl[0].stop - 1)))
    return pieces


def _dilate(mask: np.ndarray, radius_px: tuple[float, float]) -> np.ndarray:
    """``mask`` dilated by an ellipse of ``radius_px`` (rows, cols), computed only around the
    mask's bounding box (a Euclidean distance map: a 39-pixel disk on a 512x512 slice is otherwise slow)."""
    ry, rx = max(0, round(radius_px[0])), max(0, round(radius_px[1]))
    if (ry == 0 and rx == 0) or not mask.any():
        return mask.copy()
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(0, rows[0] - ry - 1), min(mask.shape[0], rows[-1] + ry + 2)
    c0, c1 = max(0, cols[0] - rx - 1), min(mask.shape[1], cols[-1] + rx + 2)
    sampling = (1.0 / max(ry, 1e-6), 1.0 / max(rx, 1e-6))  # distances in units of the radius
    out = np.zeros_like(mask, dtype=bool)
    out[r0:r1, c0:c1] = ndimage.distance_transform_edt(~mask[r0:r1, c0:c1], sampling=sampling) <= 1.0
    return out


def _box(mask: np.ndarray, margin_px: tuple[float, float]) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    my, mx = round(margin_px[0]), round(margin_px[1])
    return (max(0, rows[0] - my), max(0, cols[0] - mx), min(h - 1, rows[-1] + my), min(w - 1, cols[-1] + mx))


def fuse_slice(
    candidates: dict[int, list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]],
    config: HybridConfig,
    pixel_mm: tuple[float, float],
    hu: np.ndarray | None = None,
    fat_free: frozenset[int] = frozenset(),
    organ_hu: dict[int, tuple[float, float]] | None = None,
) -> tuple[np.ndarray, dict[int, int]]:
    """Fuse one slice: organ value -> list of ``(unet_piece, logits or None, gained or None)``.

    For each piece: the prompt model's mask (``logits > 0``) cut to the piece dilated by
    ``keep_within_mm``, plus ``gained`` (the area its box gained by growing, see
    ``HybridConfig.grow_organs``); if it is empty or its area ratio to the piece lies outside
    ``[min_area_ratio, max_area_ratio]`` (or ``logits`` is None), the U-Net piece is used, except for
    a mask up to ``checked_area_ratio`` times the piece that holds ``checked_cover`` of it and adds
    pixels of the organ's HU (``hu`` and ``organ_hu``, organ value -> (median, SD)). So it is
    for an organ value in ``fat_free`` whose mask holds fat (``hu``, the slice's HU, smoothed in-plane
    by 1.5 mm, below -50 HU) on more than ``HybridConfig.max_fat_fraction`` of its area, deeper than
    2 mm inside it (``HybridConfig.fat_free_organs``).
    A pixel claimed by several organs goes to the highest score (logit; U-Net fallback pixels
    score 0.5). Returns the fused 2D label slice and the number of fallback pieces per organ.
    """
    shape = next(iter(candidates.values()))[0][0].shape
    best = np.full(shape, -np.inf, dtype=np.float32)
    out = np.zeros(shape, dtype=np.uint8)
    fallbacks: dict[int, int] = {}
    radius = (config.keep_within_mm / pixel_mm[0], config.keep_within_mm / pixel_mm[1])
    for value, items in candidates.items():
        for piece, logits, gained in items:
            area = int(piece.sum())
            use_unet = logits is None
            if not use_unet:
                allowed = _dilate(piece, radius)
                if gained is not None:
                    allowed |= gained
                sam = (logits > 0) & allowed
                ratio = float(sam.sum()) / max(area, 1)
                use_unet = not (config.min_area_ratio <= ratio <= config.max_area_ratio)
                if (
                    use_unet
                    and config.max_area_ratio < ratio <= config.checked_area_ratio
                    and hu is not None
                    and organ_hu is not None
                    and value in organ_hu
                ):
                    use_unet = np.count_nonzero(sam & piece) < config.checked_cover * area or _adds_other_tissue(
                        sam, piece, (hu, *organ_hu[value]), config
                    )
                if not use_unet and value in fat_free and hu is not None:
                    use_unet = _fatty(sam, hu, pixel_mm, config)
            if use_unet:
                fallbacks[value] = fallbacks.get(value, 0) + (logits is not None)
                mask, score = piece, np.full(shape, 0.5, dtype=np.float32)
            else:
                mask, score = sam, logits.astype(np.float32)
            take = mask & (score > best)
            out[take] = value
            best[take] = score[take]
    return out, fallbacks


def _fatty(mask: np.ndarray, image: np.ndarray, pixel_mm: tuple[float, float], config: HybridConfig) -> bool:
    """``mask`` (a drawn organ on one slice of HU ``image``) holds fat (below -50 HU after 1.5 mm
    in-plane smoothing, deeper than 2 mm inside it) on more than ``max_fat_fraction`` of its area.
    Computed on the mask's box, padded by the smoothing's reach."""
    area = int(np.count_nonzero(mask))
    if area == 0:
        return False
    sigma = (1.5 / pixel_mm[0], 1.5 / pixel_mm[1])
    box = _bbox(mask, [int(np.ceil(4 * sg)) + 1 for sg in sigma])
    smooth = ndimage.gaussian_filter(np.asarray(image[box], np.float32), sigma)
    inner = ndimage.binary_erosion(mask[box], iterations=max(1, round(2.0 / min(pixel_mm))))
    return np.count_nonzero(inner & (smooth < -50.0)) > config.max_fat_fraction * area


def hybrid_refine(
    predictor,
    volume: Volume,
    unet_labels: np.ndarray,
    table: LabelTable,
    config: HybridConfig | None = None,
    post: PostprocessConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    phantom_lesions: bool = True,
) -> HybridOutcome:
    """Redraw the U-Net's organs with the prompt model; see the module docstring.

    Args:
        predictor: a :class:`lkseg.refine.PromptPredictor` (its volume is set here).
        volume: the CT (any orientation).
        unet_labels: the U-Net's labels on ``volume``'s grid (ZYX), values of ``table``.
        table: label value -> structure name.
        config, post: hybrid rules and the final postprocessing.
        progress, cancel: callback and token (checked before every slice: ~1 s on a CPU).
        phantom_lesions: the U-Net's lesions come from a phantom-trained model: in the
            corticomedullary phase its kidney tumours are left out (module docstring). False for
            a model trained on real CT, whose lesions are always put back.

    Returns:
        :class:`HybridOutcome` whose ``labels`` lie on ``volume``'s grid.
    """
    config = config or HybridConfig()
    t0 = time.perf_counter()
    engine = getattr(predictor, "engine", None)
    calls0 = dict(getattr(engine, "calls", {}))
    secs0 = dict(getattr(engine, "seconds", {}))
    if getattr(predictor, "_slicer", None) is None or predictor.volume is not volume:
        predictor.set_volume(volume, check_ct_values=False)  # same volume: reuse its embeddings
    slicer = predictor.slicer
    canon = slicer.user_volume_to_canonical(np.asarray(unet_labels))
    pixel_mm = slicer.pixel_mm("axial")
    slice_mm = slicer.slice_mm("axial")
    margin = (config.box_margin_mm / pixel_mm[0], config.box_margin_mm / pixel_mm[1])
    min_piece_px = config.min_piece_mm2 / (pixel_mm[0] * pixel_mm[1])
    pieces = organ_components(canon, table)
    outcome = HybridOutcome(labels=np.asarray(unet_labels))
    if not pieces:
        outcome.notes.append("hybrid: no organ to redraw")
        return outcome
    organ_values = {p.value for p in pieces}
    fused = np.where(np.isin(canon, list(organ_values)), 0, canon).astype(np.uint8)  # keep non-organ labels
    lesion_canon = canon.copy()
    for p in pieces:
        fused[p.mask] = 0
    per_slice: dict[int, list[OrganPiece]] = {}
    for p in pieces:
        for k in range(p.k_range[0], p.k_range[1] + 1):
            per_slice.setdefault(k, []).append(p)
    step = slice_step(config.sample_mm, slice_mm)
    ext_n = int(config.extend_mm // slice_mm) if config.extend_mm > 0 else 0
    ext_step = slice_step(config.extend_step_mm, slice_mm)
    keys = key_slices([p.k_range for p in pieces], step)
    total = len(keys) + 2 * max(1, ext_n // ext_step) * len(pieces)
    stats = {o: [0, 0] for o in {p.organ for p in pieces}}  # organ -> [slices, fallbacks]
    drawn: list[int] = []  # sorted
    seen: set[int] = set()  # slices encoded
    state = {"t_enc": 0.0, "done": 0}
    hu_stats = _organ_hu(slicer.array, canon, organ_values)
    # each organ with its own lesions, grouped as the postprocessing groups them
    lesions_of = {v: les for members, les in organ_groups(table).values() for v in members}
    own_values = {v: [v, *lesions_of.get(v, [])] for v in organ_values}
    largest = {v: int((canon == v).sum(axis=(1, 2)).max()) for v in organ_values if table[v] in config.grow_organs}
    reach_of = dict(config.grow_reach)
    fat_free = frozenset(v for v in organ_values if table[v] in config.fat_free_organs)

    def hu_of(k: int, value: int):
        return (slicer.array[k], *hu_stats[value]) if value in hu_stats else None

    def follow(ctx, k: int, value: int, beside: int, **more) -> None:
        """The slice-below rule (:func:`_follow_neighbour`) on slice ``k`` from drawn slice ``beside``."""
        hu = hu_of(k, value)
        _follow_neighbour(
            ctx, fused, k, value, config, margin, pixel_mm, below=beside, hu=hu, fat_free=value in fat_free, **more
        )

    def draw(k: int) -> dict[str, list[int]]:
        """Draw slice ``k`` (following the drawn slice below); returns organ -> [slices, fallbacks]."""
        if cancel is not None:
            cancel.raise_if_cancelled()
        report(progress, state["done"] / max(total, 1), f"drawing organs, slice {state['done'] + 1}")
        state["done"] += 1
        below = drawn[bisect.bisect_left(drawn, k) - 1] if drawn and drawn[0] < k else None
        bisect.insort(drawn, k)
        ctx = None
        counts: dict[str, list[int]] = {}
        candidates: dict[int, list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]] = {}
        for p in per_slice[k]:
            m2 = p.mask[k]
            if not m2.any():
                continue
            lab, n = ndimage.label(m2)
            sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
            floor = max(min_piece_px, config.min_piece_fraction * float(sizes.max()))
            for idx in range(1, n + 1):
                piece = lab == idx
                logits = gained = None
                if sizes[idx - 1] >= floor:
                    if ctx is None:
                        s = time.perf_counter()
                        ctx = predictor.slice_context("axial", k, p.organ)
                        state["t_enc"] += time.perf_counter() - s
                        seen.add(k)
                    if p.organ in config.grow_organs and _may_grow(sizes[idx - 1], canon[k], p.value, largest, config):
                        others = (canon[k] > 0) & ~np.isin(canon[k], own_values[p.value])
                        near = reach_of.get(p.organ, 1.0)
                        logits, gained = _decode_grow(ctx, piece, margin, config, others, hu_of(k, p.value), near)
                    else:
                        logits, gained = _decode_regrow(ctx, piece, margin, config.regrow, _within(config)), None
                candidates.setdefault(p.value, []).append((piece, logits, gained))
            counts.setdefault(p.organ, [0, 0])[0] += 1
        if candidates:
            out2d, fb = fuse_slice(candidates, config, pixel_mm, slicer.array[k], fat_free, hu_stats)
            free = fused[k] == 0
            fused[k][free & (out2d > 0)] = out2d[free & (out2d > 0)]
            for p in per_slice[k]:
                counts.setdefault(p.organ, [0, 0])[1] += fb.get(p.value, 0)
            if config.neighbour_ratio > 0 and below is not None and k - below <= step and ctx is not None:
                for value in candidates:
                    follow(ctx, k, value, below)
        return counts

    def keep(counts: dict[str, list[int]]) -> None:
        for organ, (n_sl, n_fb) in counts.items():
            stats[organ][0] += n_sl
            stats[organ][1] += n_fb

    # one ascending sweep over the key slices; where an organ changes too much between two
    # consecutive keys (or the U-Net does not follow their interpolation), the slices in between
    # are drawn one by one and the upper key is drawn again from the slice below it
    prev_key = None
    for kb in keys:
        saved = fused[kb].copy()
        counts = draw(kb)
        if prev_key is not None and kb - prev_key > 1 and _changes(pieces, prev_key, kb, fused, config):
            fused[kb] = saved
            drawn.remove(kb)
            total += kb - prev_key  # the slices between and the key again
            for k in range(prev_key + 1, kb + 1):
                keep(draw(k))
        else:
            keep(counts)
        prev_key = kb
    # pixels of organ pieces that the final postprocessing will remove (a kidney pole the U-Net
    # called liver) may go to another organ from here on
    stray = _stray_pixels(fused, drawn, table, post) if config.free_strays else None
    # the same rule from above, in one descending pass over the drawn slices: the sweep follows an
    # organ upwards only, so a lower pole that the U-Net saw only partly (while it saw the slice
    # above whole) was left as the U-Net's part; each slice is compared with the drawn one above
    # it, already corrected, so a partly seen pole is followed down slice by slice
    realigned: dict[str, int] = {}  # organ -> slices redrawn with the box of the slice above
    if config.neighbour_ratio > 0 and config.follow_down:
        organ_of = {p.value: p.organ for p in pieces}
        for pos in range(len(drawn) - 2, -1, -1):
            k, above = drawn[pos], drawn[pos + 1]
            if above - k > step or k not in seen:
                continue
            for value in sorted({p.value for p in per_slice.get(k, [])}):
                cur, ref = fused[k] == value, fused[above] == value
                smaller = _much_smaller(cur, ref, config, pixel_mm, config.down_ratio)
                apart = not smaller and organ_of[value] in config.agree_organs and _apart(cur, ref, config, pixel_mm)
                if not (smaller or apart):
                    continue  # checked before asking for the slice's embedding
                if cancel is not None:
                    cancel.raise_if_cancelled()
                ctx = predictor.slice_context("axial", k, organ_of[value])
                if smaller:
                    follow(ctx, k, value, above, ratio=config.down_ratio, stray=stray)
                elif _realign(ctx, fused, k, value, cur, ref, config, margin, pixel_mm, hu_of(k, value), stray):
                    realigned[organ_of[value]] = realigned.get(organ_of[value], 0) + 1
    log.debug("hybrid: key step %d, drawn slices %s", step, drawn)
    if step > 1:
        _fill_between(fused, pieces, drawn, config, pixel_mm, stray)
    t_enc = state["t_enc"]
    done = state["done"]
    for p in pieces:
        for direction in (1, -1):
            added = _extend(
                predictor,
                slicer,
                fused,
                p,
                direction,
                (ext_n, ext_step),
                config,
                margin,
                pixel_mm,
                hu_stats,
                cancel,
                stray,
            )
            seen.update(added[1])
            if added[0]:
                outcome.extended_slices[p.organ] = outcome.extended_slices.get(p.organ, 0) + added[0]
            done += max(1, ext_n // ext_step)
            report(progress, done / max(total, 1), f"extending {p.organ}")
    _put_lesions_back(slicer, fused, lesion_canon, table, config, phantom_lesions, outcome)
    grid = slicer.canonical.grid
    outcome.notes.extend(postprocess_labels(fused, grid, table, post or PostprocessConfig()))
    if config.carve_sinus:
        spacing_zyx = tuple(float(v) for v in reversed(slicer.canonical.spacing))
        value_of = {n: v for v, n in table.items()}
        for side in ("kidney_right", "kidney_left"):
            if side in value_of:
                note = carve_renal_sinus(slicer.array, fused, value_of[side], spacing_zyx, config)
                if note:
                    outcome.notes.append(f"hybrid {side}: {note}")
    outcome.labels = slicer.canonical_volume_to_user(fused)
    outcome.fallback_slices = {o: s[1] for o, s in stats.items()}
    outcome.timings = {"sam": time.perf_counter() - t0, "sam_first_encodes": t_enc}
    outcome.slices_encoded = len(seen)
    if engine is not None and hasattr(engine, "describe"):
        calls = {k: v - calls0.get(k, 0) for k, v in getattr(engine, "calls", {}).items()}
        secs = {k: v - secs0.get(k, 0.0) for k, v in getattr(engine, "seconds", {}).items()}
        outcome.timings.update({f"sam_{k}_calls": v for k, v in secs.items()})
        outcome.notes.append(
            f"hybrid: prompt model {engine.describe()}; {calls.get('encode', 0)} encoder run(s) "
            f"({secs.get('encode', 0.0):.1f} s), {calls.get('decode', 0)} decoder run(s) ({secs.get('decode', 0.0):.1f} s)"
        )
    outcome.notes.append(
        f"hybrid: {outcome.slices_encoded} slice(s) encoded for {len(per_slice)} slice(s) holding an organ "
        f"(key slices every {step}, {len(drawn)} drawn, the rest interpolated)"
    )
    for organ, (n_sl, n_fb) in stats.items():
        ext = outcome.extended_slices.get(organ, 0)
        again = f", redrawn with the box of the slice above on {realigned[organ]}" if organ in realigned else ""
        outcome.notes.append(
            f"hybrid {organ}: drawn on {n_sl} slice(s), U-Net kept on {n_fb}, extended by {ext} slice(s){again}"
        )
    return outcome


def carve_renal_sinus(
    hu: np.ndarray, labels: np.ndarray, value: int, spacing_zyx: tuple[float, float, float], config: HybridConfig
) -> str | None:
    """Take the renal sinus fat out of kidney ``value`` of ``labels`` (in place); return a note.

    ``hu`` and ``labels`` are arrays of one grid in numpy ZYX order (the hybrid passes its canonical
    ``(k, j, i)`` arrays), ``spacing_zyx`` their voxel size in mm in the same order. Only voxels of
    ``value`` change (to 0); tumours and cysts, which have their own labels, never do.

    1. Levels: parenchyma P = median HU of the kidney deeper than 3 mm; fat F = median HU of the
       voxels under -30 HU within 6 mm outside it (the perirenal fat).
    2. Candidates: kidney voxels whose CT, smoothed in the slice plane over the kidney's voxels only
       (a Gaussian of ``sinus_smooth_mm`` normalised by the kidney's share of it, so the fat outside
       does not bleed in), is below ``F + sinus_level * (P - F)`` (closer to fat than to parenchyma).
    3. A 3D-connected piece of candidates is removed when it reaches the kidney's outline (the hilum
       opens there) and is fat: a smoothed value deeper than 3 mm inside the kidney (fat at the
       outline itself may be partial volume), or the piece's median, below
       ``F + sinus_fat_level * (P - F)``. Partial-volume rims, cysts and hypodense tumours (water
       to soft tissue, no fat) stay kidney; a fat-containing tumour (angiomyolipoma) at the hilum
       would be carved with the sinus.

    Nothing is carved when the kidney does not stand out from the fat (P - F < 60 HU), when there is
    too little perirenal fat to measure F (under 0.5 mL), or when the pieces would take more than
    ``sinus_max_fraction`` of the kidney (then it is not a sinus; a note says so).
    """
    kidney_all = labels == value
    reach = [int(np.ceil(6.0 / s)) + 1 for s in spacing_zyx]
    box = _bbox(kidney_all, reach)
    if box is None:
        return None
    kidney = kidney_all[box]
    ct = np.asarray(hu[box], dtype=np.float32)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    depth = ndimage.distance_transform_edt(np.pad(kidney, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    core = ct[depth > 3.0]
    if core.size == 0:
        return None
    outside = ndimage.distance_transform_edt(~kidney, sampling=spacing_zyx)
    fat = ct[(outside > 0) & (outside <= 6.0) & (ct < -30.0)]
    if fat.size * voxel_ml < 0.5:
        return "renal sinus not carved: too little fat around the kidney to measure"
    parenchyma, fat_hu = float(np.median(core)), float(np.median(fat))
    if parenchyma - fat_hu < 60.0:
        return f"renal sinus not carved: kidney {parenchyma:.0f} HU too close to fat {fat_hu:.0f} HU"
    sigma = [0.0, *(config.sinus_smooth_mm / s for s in spacing_zyx[1:])]
    weight = ndimage.gaussian_filter(kidney.astype(np.float32), sigma=sigma)
    smooth = ndimage.gaussian_filter(np.where(kidney, ct, 0.0), sigma=sigma) / np.maximum(weight, 1e-6)
    candidates = kidney & (smooth < fat_hu + config.sinus_level * (parenchyma - fat_hu))
    pieces, n = ndimage.label(candidates)
    if n == 0:
        return None
    rim = kidney & ~ndimage.binary_erosion(kidney, np.ones((3, 3, 3), bool), border_value=0)
    touches = np.zeros(n + 1, bool)
    touches[np.unique(pieces[rim])] = True
    fat_level = fat_hu + config.sinus_fat_level * (parenchyma - fat_hu)
    deep = np.where(depth > 3.0, pieces, 0)  # fat at the outline may be partial volume
    lowest = np.r_[np.inf, ndimage.minimum(smooth, deep, np.arange(1, n + 1))]
    lowest[np.bincount(deep.ravel(), minlength=n + 1) == 0] = np.inf  # scipy reports 0 for a piece not there
    middle = np.r_[np.inf, ndimage.median(smooth, pieces, np.arange(1, n + 1))]
    chosen = touches & ((lowest < fat_level) | (middle < fat_level))
    chosen[0] = False
    carve = chosen[pieces]
    ml, total = float(carve.sum()) * voxel_ml, float(kidney.sum()) * voxel_ml
    if not carve.any():
        return None
    if ml > config.sinus_max_fraction * total:
        return (
            f"renal sinus not carved: the fat pieces ({ml:.1f} mL) exceed {config.sinus_max_fraction:.0%} of the kidney"
        )
    labels[box][carve] = 0
    return (
        f"renal sinus fat carved out, {ml:.1f} mL of {total:.1f} mL (parenchyma {parenchyma:.0f} HU, "
        f"perirenal fat {fat_hu:.0f} HU)"
    )


def _put_lesions_back(
    slicer, fused, lesion_canon, table: LabelTable, config: HybridConfig, phantom_lesions, outcome
) -> None:
    """Put the U-Net's tumours and cysts (``lesion_canon``, canonical) back into the drawn organs of
    ``fused``, leaving out, for a phantom-trained U-Net, its kidney tumours in the corticomedullary
    phase and its kidney lesions isodense with the enhanced kidney around them (module docstring);
    notes and warnings go to ``outcome``."""
    spacing_zyx = tuple(float(v) for v in reversed(slicer.canonical.spacing))
    contrasts = _corticomedullary(slicer.array, fused, table, spacing_zyx) if phantom_lesions else None
    withhold = ()
    value_of = {n: v for v, n in table.items()}
    if contrasts is not None and "kidney_tumor" in value_of:
        withhold = ("kidney_tumor",)
        kidneys = [value_of[o] for o in ("kidney_right", "kidney_left") if o in value_of]
        left_out = (lesion_canon == value_of["kidney_tumor"]) & np.isin(fused, kidneys)
        held = int(np.count_nonzero(left_out))
        voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
        ml = held * voxel_ml
        box = _bbox(left_out)
        pieces = ndimage.label(left_out[box])[0] if box is not None else np.zeros(1, np.int32)
        sizes = np.sort(np.bincount(pieces.ravel())[1:])[::-1] * voxel_ml
        shown = " / ".join(f"{c:+.0f}" for c in contrasts)
        outcome.notes.append(
            f"hybrid: corticomedullary phase (kidney rim minus core {shown} HU): the U-Net's kidney tumour "
            f"output ({ml:.1f} mL) left out as kidney"
        )
        if held:
            outcome.warnings.append(
                f"corticomedullary (arterial) phase: the kidneys' cortex is {shown} HU brighter than their core; "
                f"in this phase the phantom-trained model calls renal medulla tumour, so its {ml:.1f} mL of kidney "
                f"tumour ({len(sizes)} piece(s), the largest {sizes[0]:.1f} mL) were left out as kidney, a real "
                "tumour among them if there is one. Check the kidneys and mark a lesion with a box (lkseg refine)"
            )
    if phantom_lesions and contrasts is None:
        _withhold_isodense(slicer.array, fused, lesion_canon, table, spacing_zyx, outcome)
    _restore_lesions(fused, lesion_canon, table, skip=withhold, whole=config.whole_lesions)


def _withhold_isodense(hu, fused, lesion_canon, table: LabelTable, spacing_zyx, outcome) -> None:
    """Clear from ``lesion_canon`` the kidney tumour / cyst pieces that are isodense with the enhanced
    parenchyma of their drawn kidney (``ISO_*`` above); they stay kidney. A warning gives their volume.
    All arrays are canonical (k, j, i); ``spacing_zyx`` in that order (mm)."""
    value_of = {n: v for v, n in table.items()}
    kidneys = [value_of[o] for o in ("kidney_right", "kidney_left") if o in value_of]
    lesion_vals = [value_of[n] for n in ("kidney_tumor", "kidney_cyst") if n in value_of]
    lesions = np.isin(lesion_canon, lesion_vals)
    box = _bbox(lesions) if kidneys else None
    if box is None:
        return
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    reach = [int(np.ceil(ISO_MARGIN_MM / s)) + 1 for s in spacing_zyx]
    region = _bbox(lesions | np.isin(fused, kidneys), reach)  # the kidneys and their lesions, plus the margin
    near = ndimage.distance_transform_edt(~lesions[region], sampling=spacing_zyx) <= ISO_MARGIN_MM
    parenchyma = {}
    for v in kidneys:
        tissue = hu[region][(fused[region] == v) & ~near]
        if tissue.size:
            parenchyma[v] = float(np.median(tissue))
    held: list[tuple[str, float, float]] = []
    for lesion, value in zip(("kidney_tumor", "kidney_cyst"), lesion_vals):
        pieces, _ = ndimage.label(lesion_canon[box] == value)
        for i, sl in enumerate(ndimage.find_objects(pieces), 1):
            piece = pieces[sl] == i
            owner = np.bincount(fused[box][sl][piece], minlength=max(kidneys) + 1)[kidneys]
            side = kidneys[int(np.argmax(owner))] if owner.any() else None
            if side not in parenchyma or parenchyma[side] < ISO_ENHANCED_HU:
                continue
            depth = ndimage.distance_transform_edt(np.pad(piece, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
            core = hu[box][sl][depth >= ISO_CORE_MM] if (depth >= ISO_CORE_MM).any() else hu[box][sl][piece]
            contrast = float(np.median(core)) - parenchyma[side]
            if abs(contrast) < ISO_CONTRAST_HU:
                lesion_canon[box][sl][piece] = 0
                held.append((lesion, float(piece.sum()) * voxel_ml, contrast))
    if held:
        ml = sum(h[1] for h in held)
        shown = ", ".join(f"{name.replace('_', ' ')} {v:.1f} mL ({d:+.0f} HU)" for name, v, d in held)
        outcome.notes.append(
            f"hybrid: kidney lesion output isodense with the enhanced kidney left out as kidney: {shown}"
        )
        outcome.warnings.append(
            f"{len(held)} kidney lesion piece(s) of the phantom-trained model ({ml:.1f} mL) lie within "
            f"{ISO_CONTRAST_HU:.0f} HU of their kidney's enhanced parenchyma, where renal masses are darker than the "
            "parenchyma and cysts far darker; they were left out as kidney. Check the kidneys and mark any real "
            "lesion with a box (lkseg refine)"
        )


def _stray_pixels(fused: np.ndarray, drawn: list[int], table: LabelTable, post: PostprocessConfig | None) -> np.ndarray:
    """Pixels of the drawn slices held by organ pieces that the final postprocessing removes (all but
    the largest piece of the liver and of the spleen, the two largest kidney pieces; connectivity
    over the drawn slices, consecutive ones counting as adjacent), as a bool (k, j, i) array. Another
    organ may take them in the passes after the sweep (:func:`_free`); the organ holding them keeps
    them until the final postprocessing."""
    out = np.zeros(fused.shape, dtype=bool)
    if not drawn:
        return out
    stack = fused[drawn]
    before = stack.copy()
    config = replace(
        post or PostprocessConfig(), min_organ_ml=0.0, fill_holes=False, laterality=False, min_lesion_mm=0.0
    )
    postprocess_labels(stack, Grid(stack.shape, (1.0, 1.0, 1.0)), table, config)
    out[drawn] = stack != before
    return out


def _free(fused: np.ndarray, k: int, value: int, stray: np.ndarray | None) -> np.ndarray:
    """Pixels of slice ``k`` that organ ``value`` may take: background, and (with ``stray``) pixels
    of another organ's stray piece."""
    free = fused[k] == 0
    if stray is not None:
        free |= stray[k] & (fused[k] != value)
    return free


def _take(fused: np.ndarray, k: int, mask: np.ndarray, value: int, stray: np.ndarray | None) -> None:
    fused[k][mask] = value
    if stray is not None:
        stray[k][mask] = False


def _much_smaller(cur: np.ndarray, ref: np.ndarray, config: HybridConfig, pixel_mm, ratio: float | None = None) -> bool:
    """Whether the organ's mask ``cur`` is under ``ratio`` (default ``neighbour_ratio``) of ``ref``
    (a neighbouring drawn slice's), ``ref`` being at least a ``min_piece_mm2`` piece."""
    n_ref = int(ref.sum())
    floor = config.min_piece_mm2 / (pixel_mm[0] * pixel_mm[1])
    return n_ref >= floor and int(cur.sum()) < (config.neighbour_ratio if ratio is None else ratio) * n_ref


def _follow_neighbour(
    ctx,
    fused,
    k,
    value,
    config,
    margin,
    pixel_mm,
    below: int | None = None,
    hu=None,
    ratio: float | None = None,
    stray: np.ndarray | None = None,
    fat_free: bool = False,
) -> None:
    """Where the organ on slice ``k`` is much smaller than on the drawn slice ``below`` (default
    ``k - 1``; the name is the upward sweep's, the descending pass gives the slice above; the U-Net
    saw only part of it here), decode that slice's box on this slice (same
    embedding; from a slice further below than the next, the box is redrawn while the mask runs
    into its side, as the organ moves between them) and keep the larger mask when it mostly
    overlaps that slice's and, with ``hu = (slice HU, organ median, organ SD)``, when the pixels it
    adds look like the organ (mean HU within ``extend_hu_sd`` SD: a liver box from the slice above
    its tapering tip otherwise pulls in bowel, fat and kidney, slice after slice)."""
    prev, cur = fused[k - 1 if below is None else below] == value, fused[k] == value
    if not _much_smaller(cur, prev, config, pixel_mm, ratio):
        return
    n_prev, n_cur = int(prev.sum()), int(cur.sum())
    below = k - 1 if below is None else below
    regrow = config.regrow if abs(k - below) > 1 else 0
    cand = _redraw(ctx, fused, k, value, prev | cur, cur, regrow, config, margin, pixel_mm, stray)
    area = int(cand.sum())
    if n_cur < area <= config.extend_max_ratio * n_prev and (cand & prev).sum() >= 0.5 * area:
        if hu is not None:
            if _adds_other_tissue(cand, cur, hu, config):
                return
            if fat_free and _fatty(cand, hu[0], pixel_mm, config):
                return
        _take(fused, k, cand, value, stray)


def _redraw(ctx, fused, k, value, box_mask, cur, regrow: int, config: HybridConfig, margin, pixel_mm, stray=None):
    """Organ ``value``'s answer on slice ``k`` to the box of ``box_mask`` (regrown ``regrow`` times,
    :func:`_decode_regrow`), cut to ``keep_within_mm`` of ``box_mask`` and to what the organ may
    hold there: free pixels (:func:`_free`) and its current mask ``cur``."""
    logits = _decode_regrow(ctx, box_mask, margin, regrow, _within(config))
    radius = (config.keep_within_mm / pixel_mm[0], config.keep_within_mm / pixel_mm[1])
    return (logits > 0) & _dilate(box_mask, radius) & (_free(fused, k, value, stray) | cur)


def _adds_other_tissue(cand: np.ndarray, cur: np.ndarray, hu, config: HybridConfig) -> bool:
    """Whether the pixels ``cand`` adds to ``cur`` do not look like the organ (:func:`_unlike_organ`)."""
    return _unlike_organ(cand & ~cur, hu, config)


def _unlike_organ(pixels: np.ndarray, hu, config: HybridConfig) -> bool:
    """Whether ``pixels`` (any) do not look like the organ: their mean HU lies more than
    ``extend_hu_sd`` SD from its median (``hu = (slice HU, organ median, organ SD)``)."""
    image, mu, sd = hu
    return bool(pixels.any()) and abs(float(np.mean(image[pixels])) - mu) > config.extend_hu_sd * sd


def _apart(cur: np.ndarray, ref: np.ndarray, config: HybridConfig, pixel_mm) -> bool:
    """Whether an organ's drawn mask ``cur`` disagrees with ``ref``, the drawn slice above it (2D
    Dice under ``agree_dice``) where that slice is no tapering end: ``ref`` is a ``min_piece_mm2``
    piece at least ``agree_ratio`` times ``cur``'s area."""
    n_ref, n_cur = int(ref.sum()), int(cur.sum())
    floor = config.min_piece_mm2 / (pixel_mm[0] * pixel_mm[1])
    return (
        n_cur > 0 and n_ref >= floor and n_ref >= config.agree_ratio * n_cur and mask_dice(cur, ref) < config.agree_dice
    )


def _realign(ctx, fused, k, value, cur, ref, config: HybridConfig, margin, pixel_mm, hu=None, stray=None) -> bool:
    """Slice ``k``'s mask ``cur`` of organ ``value`` disagrees with ``ref``, its mask on the drawn slice
    above (:func:`_apart`): the box of ``ref`` is decoded on this slice (same embedding), and its answer replaces
    the mask when it agrees with the slice above by ``agree_gain`` (2D Dice) more than the mask did,
    its area is ``extend_min_ratio``-``extend_max_ratio`` times that slice's and at least
    ``agree_ratio`` times the mask's, and, with ``hu = (slice HU, organ median, organ SD)``, the pixels
    it adds look like the organ (``extend_hu_sd``). A box around the U-Net's piece at a kidney's end,
    where the U-Net saw only the part beside the hilum, has LiteMedSAM draw the hilum's vessels and
    pelvis instead of the kidney; the slice above, drawn whole, knows better. Returns whether the
    mask was replaced."""
    cand = _redraw(ctx, fused, k, value, ref, cur, config.regrow, config, margin, pixel_mm, stray)
    area, n_ref = int(cand.sum()), int(ref.sum())
    if not config.extend_min_ratio * n_ref <= area <= config.extend_max_ratio * n_ref:
        return False
    if area < config.agree_ratio * int(cur.sum()) or mask_dice(cand, ref) < mask_dice(cur, ref) + config.agree_gain:
        return False
    if hu is not None and _adds_other_tissue(cand, cur, hu, config):
        return False
    fused[k][cur & ~cand] = 0
    _take(fused, k, cand, value, stray)
    return True


def _touches(mask: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Whether ``mask`` reaches a side of ``box`` that is not the image border."""
    r0, c0, r1, c1 = box
    h, w = mask.shape
    sides = []
    if r0 > 0:
        sides.append(mask[r0, c0 : c1 + 1])
    if r1 < h - 1:
        sides.append(mask[r1, c0 : c1 + 1])
    if c0 > 0:
        sides.append(mask[r0 : r1 + 1, c0])
    if c1 < w - 1:
        sides.append(mask[r0 : r1 + 1, c1])
    return any(bool(s.any()) for s in sides)


def _within(config: HybridConfig) -> float | None:
    """How far from a box the hybrid reads the prompt model's mask (``within_mm`` of the slice
    context's decode): every rule cuts the mask to ``keep_within_mm`` of the piece that gave the
    box (the growing box's gain lies inside the grown box), so the decoder computes nothing
    beyond (``HybridConfig.decode_window``)."""
    return config.keep_within_mm if config.decode_window else None


def _decode_regrow(ctx, piece: np.ndarray, margin, regrow: int, within: float | None = None) -> np.ndarray:
    """Decode the piece's box; while the mask runs into the box's side (the U-Net saw only part
    of the organ), decode again with the box of mask and piece (same embedding, ~0.1 s)."""
    return _regrow_box(ctx, piece, margin, regrow, within)[0]


def _regrow_box(
    ctx, piece: np.ndarray, margin, regrow: int, within: float | None = None
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """:func:`_decode_regrow`'s logits and the box they were decoded with."""
    box = _box(piece, margin)
    logits, _ = ctx.decode(box_rc=box, within_mm=within)
    for _ in range(regrow):
        mask = logits > 0
        if not mask.any() or not _touches(mask, box):
            break
        grown = _box(mask | piece, margin)
        if grown == box:
            break
        box = grown
        logits, _ = ctx.decode(box_rc=box, within_mm=within)
    return logits, box


def _sides_reached(mask: np.ndarray, box, reach_px: tuple[int, int], fraction: float) -> list[str]:
    """The sides of ``box`` (not on the image border) that ``mask`` comes within ``reach_px``
    (rows, cols) of along at least ``fraction`` of the side's length."""
    r0, c0, r1, c1 = box
    h, w = mask.shape
    ry, rx = reach_px
    out = []
    if r0 > 0 and mask[r0 : r0 + ry + 1, c0 : c1 + 1].any(axis=0).mean() >= fraction:
        out.append("top")
    if r1 < h - 1 and mask[max(r1 - ry, r0) : r1 + 1, c0 : c1 + 1].any(axis=0).mean() >= fraction:
        out.append("bottom")
    if c0 > 0 and mask[r0 : r1 + 1, c0 : c0 + rx + 1].any(axis=1).mean() >= fraction:
        out.append("left")
    if c1 < w - 1 and mask[r0 : r1 + 1, max(c1 - rx, c0) : c1 + 1].any(axis=1).mean() >= fraction:
        out.append("right")
    return out


def _may_grow(area: int, unet_slice: np.ndarray, value: int, largest: dict[int, int], config: HybridConfig) -> bool:
    """Whether a 2D U-Net piece of ``area`` pixels may have its box grown: it is the organ's main
    piece on the slice (half its area there or more) and at least ``grow_min_area`` of the organ's
    largest slice (not a tapering end, where a grown box reaches into the bowel)."""
    return 2 * area >= np.count_nonzero(unet_slice == value) and area >= config.grow_min_area * largest.get(value, 0)


def _decode_grow(
    ctx, piece: np.ndarray, margin, config: HybridConfig, others: np.ndarray, hu=None, reach_margins: float = 1.0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode the piece's box; while the mask comes within ``reach_margins`` box margins of a
    side along ``grow_fraction`` of it (one margin: it reaches the U-Net piece's own extent), that
    side moves out by ``grow_step`` margins and the box is decoded again (the U-Net saw only part
    of the organ). Returns the logits and the area the box gained (None when it did not grow),
    where the mask may reach beyond ``keep_within_mm``; the guards are ``HybridConfig.grow_organs``'s."""
    logits, box = _regrow_box(ctx, piece, margin, config.regrow, _within(config))
    box0, first = box, logits
    h, w = piece.shape
    reach = (max(1, round(reach_margins * margin[0])), max(1, round(reach_margins * margin[1])))
    for _ in range(config.grow_times):
        mask = logits > 0
        if not mask.any():
            break
        sides = _sides_reached(mask, box, reach, config.grow_fraction)
        if not sides:
            break
        r0, c0, r1, c1 = box
        gy, gx = round(config.grow_step * margin[0]), round(config.grow_step * margin[1])
        r0 = max(0, r0 - gy) if "top" in sides else r0
        r1 = min(h - 1, r1 + gy) if "bottom" in sides else r1
        c0 = max(0, c0 - gx) if "left" in sides else c0
        c1 = min(w - 1, c1 + gx) if "right" in sides else c1
        if (r0, c0, r1, c1) == box:
            break
        box = (r0, c0, r1, c1)
        logits, _ = ctx.decode(box_rc=box, within_mm=_within(config))
    if box == box0:
        return logits, None
    gained = np.zeros(piece.shape, dtype=bool)
    gained[box[0] : box[2] + 1, box[1] : box[3] + 1] = True
    gained[box0[0] : box0[2] + 1, box0[1] : box0[3] + 1] = False
    near_others = _dilate(others, margin) & ~(first > 0)
    gained &= ~near_others
    # the grown answer only adds to the first one: it keeps all that one drew and adds nothing near another organ
    logits = np.where(near_others, first, np.maximum(logits, first))
    new = (logits > 0) & gained
    if int(new.sum()) < config.grow_min_gain * int((first > 0).sum()):
        return first, None  # a sliver beyond the first box: not an organ the U-Net cut short
    if hu is not None and _unlike_organ(new, hu, config):
        return first, None
    log.debug("grow accepted: %d new px (first %d), box %s -> %s", int(new.sum()), int((first > 0).sum()), box0, box)
    return logits, gained


def _organ_hu(hu: np.ndarray, canon: np.ndarray, values: set[int]) -> dict[int, tuple[float, float]]:
    out = {}
    for v in values:
        sample = hu[canon == v]
        if sample.size:
            sample = sample[:: max(1, sample.size // 200000)].astype(np.float32)
            out[v] = (float(np.median(sample)), float(max(np.std(sample), 15.0)))
    return out


def _extend(
    predictor,
    slicer,
    fused,
    piece: OrganPiece,
    direction,
    n_max,
    config,
    margin,
    pixel_mm,
    hu_stats,
    cancel,
    stray=None,
):
    """Grow ``piece`` towards its end in ``direction`` and up to ``n_max = (slices, step)`` slices
    beyond it, ``step`` slices at a time (skipped slices get the interpolation of the two drawn
    ones; where a step fails, the slices it skipped are tried one by one; a step past the scan's
    first or last slice stops on it), starting from its last slice with a box-sized mask (the U-Net's
    end slices are often slivers); only free voxels are added. Returns (slices grown beyond the
    U-Net, encodes)."""
    n_max, step = n_max
    floor = config.min_piece_mm2 / (pixel_mm[0] * pixel_mm[1])
    end = piece.k_range[1] if direction > 0 else piece.k_range[0]
    k = end
    while (fused[k] == piece.value).sum() < floor and k != (piece.k_range[0] if direction > 0 else piece.k_range[1]):
        k -= direction
    prev = fused[k] == piece.value
    added, encoded = 0, set()
    radius = (config.keep_within_mm / pixel_mm[0], config.keep_within_mm / pixel_mm[1])
    mu, sd = hu_stats.get(piece.value, (None, None))
    while True:
        k_prev = k
        k += direction * step
        if (k - end) * direction > n_max and (k_prev - end) * direction < n_max:
            k = end + direction * n_max  # the last step stops at the limit
        edge = fused.shape[0] - 1 if direction > 0 else 0
        if (k - edge) * direction > 0 and k_prev != edge:
            k = edge  # and at the scan's first or last slice, where an organ cut by the scan range ends
        beyond = (k - end) * direction
        if beyond > n_max or not 0 <= k < fused.shape[0] or prev.sum() < floor:
            break
        if cancel is not None:
            cancel.raise_if_cancelled()
        ctx = predictor.slice_context("axial", k, piece.organ)
        encoded.add(k)
        logits, _ = ctx.decode(box_rc=_box(prev, margin), within_mm=_within(config))
        current = fused[k] == piece.value
        sam = ((logits > 0) & _dilate(prev, radius) & _free(fused, k, piece.value, stray)) | current
        area, before = int(sam.sum()), int(prev.sum())
        ok = config.extend_min_ratio * before <= area <= config.extend_max_ratio * before
        ok = ok and float((sam & prev).sum()) >= 0.5 * area
        ok = ok and (mu is None or abs(float(np.mean(slicer.array[k][sam])) - mu) <= config.extend_hu_sd * sd)
        ok = ok and not (piece.organ in config.fat_free_organs and _fatty(sam, slicer.array[k], pixel_mm, config))
        if not ok:
            if step == 1:
                break
            k, step = k_prev, 1  # the organ ends within the step: walk the skipped slices
            continue
        _take(fused, k, sam, piece.value, stray)
        gap = abs(k - k_prev)
        if gap > 1:
            weights = [d / gap for d in range(1, gap)]
            for d, (m, _) in zip(range(1, gap), interpolate_slices(prev, sam, weights, pixel_mm)):
                kk = k_prev + direction * d
                _take(fused, kk, m & _free(fused, kk, piece.value, stray), piece.value, stray)
                added += (kk - end) * direction > 0
        prev = sam
        added += beyond > 0
    return added, encoded


def _changes(pieces, ka: int, kb: int, fused: np.ndarray, config: HybridConfig) -> bool:
    """Whether some piece present on both drawn slices ``ka < kb`` changes too much in between:
    its drawn masks agree less than ``change_dice`` (2D Dice) or the smaller area is under
    ``change_ratio`` of the larger (with the slice-below rule on)."""
    for p in pieces:
        if not p.k_range[0] <= ka < kb <= p.k_range[1]:
            continue
        a, b = fused[ka] == p.value, fused[kb] == p.value
        if mask_dice(a, b) < config.change_dice:
            return True
        n_a, n_b = int(a.sum()), int(b.sum())
        if config.neighbour_ratio > 0 and min(n_a, n_b) < config.change_ratio * max(n_a, n_b):
            return True  # a shrinking outline: drawn slice by slice, the slice-below rule runs
    return False


def _fill_between(fused: np.ndarray, pieces, drawn: list[int], config: HybridConfig, pixel_mm, stray=None) -> None:
    """Every slice of a piece between two drawn slices gets the signed-distance interpolation of
    the organ on those two slices (the U-Net piece there when both ends hold none of the
    organ); free voxels only, a pixel two organs claim goes to the one it lies deeper in."""
    claims: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    drawn_set = set(drawn)
    for p in pieces:
        ks = [k for k in drawn if p.k_range[0] <= k <= p.k_range[1]]
        for ka, kb in itertools.pairwise(ks):
            if kb - ka < 2:
                continue
            a, b = fused[ka] == p.value, fused[kb] == p.value
            todo = [k for k in range(ka + 1, kb) if k not in drawn_set]
            shapes = interpolate_slices(a, b, [(k - ka) / (kb - ka) for k in todo], pixel_mm)
            for k, (m, dist) in zip(todo, shapes):
                unet = p.mask[k]
                if not m.any():
                    m, dist = unet, np.zeros(unet.shape, np.float32)
                claims.setdefault(k, []).append((p.value, m, dist))
    for k, items in claims.items():
        free = fused[k] == 0 if stray is None else (fused[k] == 0) | stray[k]
        best = np.full(free.shape, np.inf, dtype=np.float32)
        out = np.zeros(free.shape, dtype=np.uint8)
        for value, m, dist in items:
            take = m & (dist < best)
            out[take] = value
            best[take] = dist[take]
        won = free & (out > 0) & (out != fused[k])
        fused[k][won] = out[won]
        if stray is not None:
            stray[k][won] = False


def _restore_lesions(
    fused: np.ndarray, unet: np.ndarray, table: LabelTable, skip: tuple[str, ...] = (), whole: bool = False
) -> None:
    """U-Net tumours/cysts put back where the fused map holds their organ (lesions in ``skip`` not
    at all). With ``whole``, a lesion's 3D piece that touches its drawn organ is put back whole,
    also on background voxels (a tumour at the organ's edge that the prompt model left out of the
    organ); pieces that touch no voxel of their organ are dropped either way."""
    value_of = {n: v for v, n in table.items()}
    for organ_group, lesions in _LESIONS.items():
        organ_vals = [value_of[o] for o in ORGANS if o.startswith(organ_group) and o in value_of]
        for lesion in lesions:
            if lesion not in value_of or lesion in skip:
                continue
            lesion_mask = unet == value_of[lesion]
            put = lesion_mask & np.isin(fused, organ_vals)
            box = _bbox(lesion_mask, 1) if whole else None  # one voxel of room for the organ's touch
            if box is not None:
                pieces, _ = ndimage.label(lesion_mask[box])
                organ_near = ndimage.binary_dilation(np.isin(fused[box], organ_vals))
                touching = np.unique(pieces[organ_near])
                put[box] |= np.isin(pieces, touching[touching > 0]) & (fused[box] == 0)
            fused[put] = value_of[lesion]
