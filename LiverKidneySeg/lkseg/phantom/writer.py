"""Writing a phantom to disk: NIfTI image and label maps, JSON facts, optional .seg.nrrd and DICOM.

Every file is written atomically (a temporary name renamed at the end), so an interrupted run
never leaves a half-written file under a final name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from lkseg import __version__
from lkseg.io import atomic_write_text, write_image, write_label_map
from lkseg.labels import PRODUCT_LABELS
from lkseg.phantom.generator import Phantom

__all__ = ["phantom_facts", "write_phantom"]

log = logging.getLogger(__name__)


def phantom_facts(phantom: Phantom) -> dict:
    """The JSON-ready description of a phantom: config, geometry, label tables, true volumes
    (mL), lesions, HU values drawn and patient facts."""
    grid = phantom.grid
    return {
        "generator": f"lkseg.phantom {__version__}",
        "config": phantom.config.to_dict(),
        "geometry": {
            **grid.to_dict(),
            "orientation": grid.orientation,
            "ijk_to_ras": np.round(grid.ijk_to_ras, 9).tolist(),
            "axis_order_note": "arrays are ZYX (array[k, j, i]); spacing and size are (i, j, k); origin/direction are LPS",
        },
        "labels": PRODUCT_LABELS.to_json(),
        "labels_detailed": phantom.label_table.to_json(),
        "volumes_ml": phantom.volumes_ml,
        "lesions": phantom.lesions,
        "hu": phantom.hu,
        "patient": {k: phantom.meta[k] for k in ("height_cm", "weight_kg", "bsa_m2") if k in phantom.meta},
        "meta": {k: v for k, v in phantom.meta.items() if k not in ("height_cm", "weight_kg", "bsa_m2")},
    }


def write_phantom(phantom: Phantom, out_dir: str | Path, dicom: bool = False, seg_nrrd: bool = True) -> dict[str, Path]:
    """Write ``phantom`` into ``out_dir``.

    Files: ``ct.nii.gz`` (int16 HU), ``labels.nii.gz`` (product labels, values of
    :data:`lkseg.labels.PRODUCT_LABELS`), ``labels_detailed.nii.gz`` (the detailed map),
    ``phantom.json`` (:func:`phantom_facts`), optionally ``labels.seg.nrrd`` (product segments
    with names, colours and terminology, for 3D Slicer) and a DICOM CT series in ``dicom/``
    (patient height and weight in the header).

    Returns:
        ``{"ct", "labels", "labels_detailed", "json"[, "seg_nrrd"][, "dicom"]} -> path``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    product = phantom.product_labels()
    paths["ct"] = write_image(phantom.image, out / "ct.nii.gz")
    paths["labels"] = write_label_map(product, out / "labels.nii.gz")
    paths["labels_detailed"] = write_label_map(phantom.labels, out / "labels_detailed.nii.gz")
    if seg_nrrd:
        from lkseg.io.segnrrd import write_seg_nrrd
        from lkseg.segmentation import Segmentation

        seg = Segmentation.from_label_volume(product, PRODUCT_LABELS)
        paths["seg_nrrd"] = write_seg_nrrd(seg, out / "labels.seg.nrrd")
    if dicom:
        from lkseg.io.dicom import write_dicom_series

        patient = {
            "name": f"Phantom^Seed{phantom.config.seed}",
            "id": f"LKSEG-PHANTOM-{phantom.config.seed}",
            "height_cm": phantom.meta.get("height_cm"),
            "weight_kg": phantom.meta.get("weight_kg"),
        }
        folder = out / "dicom"
        write_dicom_series(
            phantom.image,
            folder,
            patient=patient,
            series_description=phantom.image.meta.get("series_description", "phantom"),
        )
        paths["dicom"] = folder
    facts = phantom_facts(phantom)
    facts["files"] = {k: p.name for k, p in paths.items()}
    paths["json"] = atomic_write_text(out / "phantom.json", json.dumps(facts, indent=2))
    log.info("phantom written to %s", out)
    return {k: paths[k] for k in ("ct", "labels", "labels_detailed", "json", "seg_nrrd", "dicom") if k in paths}
