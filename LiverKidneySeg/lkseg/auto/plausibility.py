"""Position checks of automatic organs: refuse components that cannot be the organ they are called.

A phantom-trained network can call the aorta a kidney or the bladder a kidney on real CT. Each
organ component (organ plus its lesions) is checked against the body's midline (RAS x of the
centroid of the voxels above -500 HU) and against the liver:

* a kidney whose centre lies within ``kidney_midline_mm`` of the midline (spine, aorta, IVC);
* a kidney whose centre lies more than ``kidney_below_liver_mm`` below the liver's centre
  (pelvis: bladder, bowel) or more than ``kidney_above_liver_mm`` above it (chest);
* a spleen whose centre lies on the patient's right of the midline (more than ``spleen_side_mm``).

Refused components are set to background; each refusal is reported. RAS uses the grid's full
direction, so any storage orientation works. The label array is ZYX on ``grid``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lkseg.auto.postprocess import components
from lkseg.labels import LabelTable
from lkseg.volume import Grid

__all__ = ["PositionConfig", "refuse_implausible_positions"]


@dataclass(frozen=True)
class PositionConfig:
    """Thresholds (mm) of :func:`refuse_implausible_positions`."""

    kidney_midline_mm: float = 25.0
    kidney_below_liver_mm: float = 160.0
    kidney_above_liver_mm: float = 80.0
    spleen_side_mm: float = 20.0


def _centre_ras(mask: np.ndarray, grid: Grid) -> np.ndarray:
    kji = np.argwhere(mask)
    step = max(1, len(kji) // 50000)
    return grid.index_to_ras(kji[::step, ::-1].astype(np.float64)).mean(axis=0)


def refuse_implausible_positions(
    labels: np.ndarray, image: np.ndarray, grid: Grid, table: LabelTable, config: PositionConfig | None = None
) -> list[str]:
    """Remove (in place) organ components at impossible positions; returns one note per refusal."""
    config = config or PositionConfig()
    value_of = {n: v for v, n in table.items()}
    body = image > -500
    if not body.any():
        return []
    kji = np.argwhere(body[:, ::4, ::4]) * np.array([1, 4, 4])
    mid_x = float(grid.index_to_ras(kji[:: max(1, len(kji) // 50000), ::-1].astype(np.float64)).mean(axis=0)[0])
    notes: list[str] = []
    liver_z = None
    if "liver" in value_of and (labels == value_of["liver"]).any():
        liver_z = float(_centre_ras(labels == value_of["liver"], grid)[2])
    kidney_group = [
        value_of[n] for n in ("kidney_right", "kidney_left", "kidney_tumor", "kidney_cyst") if n in value_of
    ]
    checks = []
    if kidney_group:
        checks.append(("kidney", kidney_group))
    if "spleen" in value_of:
        checks.append(("spleen", [value_of["spleen"]]))
    for organ, values in checks:
        for _, piece in components(np.isin(labels, values)):
            x, _, z = _centre_ras(piece, grid)
            reason = None
            if organ == "kidney" and abs(x - mid_x) < config.kidney_midline_mm:
                reason = f"its centre is {abs(x - mid_x):.0f} mm from the body's midline (spine/aorta?)"
            elif organ == "kidney" and liver_z is not None and z < liver_z - config.kidney_below_liver_mm:
                reason = f"its centre is {liver_z - z:.0f} mm below the liver's (pelvis?)"
            elif organ == "kidney" and liver_z is not None and z > liver_z + config.kidney_above_liver_mm:
                reason = f"its centre is {z - liver_z:.0f} mm above the liver's (chest?)"
            elif organ == "spleen" and x - mid_x > config.spleen_side_mm:
                reason = f"its centre lies {x - mid_x:.0f} mm to the patient's right of the midline"
            if reason:
                ml = float(piece.sum()) * grid.voxel_volume_ml
                labels[piece] = 0
                notes.append(f"position check: refused a {ml:.0f} mL {organ} component: {reason}")
    return notes
