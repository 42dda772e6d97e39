"""``lkseg metrics PRED REF``: Dice, Jaccard/VOE, RVD, ASSD, HD95 and HD per structure."""

from __future__ import annotations

import argparse
import json

__all__ = ["HD95_NOTE", "add_resample_labels_argument", "parse_label_spec", "register"]

#: Printed under every metrics table: which HD95 convention the column holds.
HD95_NOTE = (
    "HD95 = max of the two directed 95th percentiles (DeepMind surface-distance / MONAI convention); "
    "MedPy's pooled HD95 is hd95_pooled_mm in --json"
)


def add_resample_labels_argument(parser: argparse.ArgumentParser) -> None:
    """``--resample-labels``: the opt-in to resample a label map that is not on the image's lattice."""
    parser.add_argument(
        "--resample-labels",
        action="store_true",
        help="resample a label map whose voxel grid does not share the image's lattice with nearest neighbour "
        "(stated in the output) instead of refusing it; masks on the same lattice with other axis directions "
        "are reoriented exactly without this option",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "metrics",
        help="compare a predicted label map with a reference (Dice, VOE, RVD, ASSD, HD95 in mm)",
        description="Per-structure accuracy of PRED against REF. Both must share one voxel lattice (PRED is reoriented "
        "exactly onto REF's grid when only the axis directions differ; otherwise refused unless --resample-labels). "
        "Label maps may be "
        "NIfTI, NRRD, .seg.nrrd or DICOM SEG. Structures are matched by name: give --labels (and --ref-labels when "
        "the reference uses other values, e.g. a TotalSegmentator mask: --ref-labels 5=liver,2=kidney_right).",
    )
    p.add_argument("pred", help="predicted label map")
    p.add_argument("ref", help="reference label map")
    p.add_argument(
        "--labels",
        help="value=name pairs for PRED (and REF), e.g. 1=liver,2=liver_tumor; 'product' for the default map",
    )
    p.add_argument("--ref-labels", help="value=name pairs for REF when its values differ")
    add_resample_labels_argument(p)
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=run)


def parse_label_spec(spec: str | None) -> dict[int, str] | None:
    """Parse ``"1=liver,2=liver_tumor"`` (or ``"product"``) into ``{1: "liver", 2: "liver_tumor"}``."""
    from lkseg.errors import InputError
    from lkseg.labels import PRODUCT_LABELS

    if spec is None:
        return None
    if spec.strip().lower() == "product":
        return dict(PRODUCT_LABELS)
    out: dict[int, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        value, sep, name = part.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise InputError(f"bad label spec {part!r}; expected VALUE=NAME, e.g. 1=liver")
        out[int(value)] = name.strip()
    return out


def _names_from_file(volume) -> dict[int, str] | None:
    table = volume.meta.get("label_table")
    return {int(k): v for k, v in table.items()} if table else None


def run(args: argparse.Namespace) -> int:
    from lkseg.io import atomic_write_text, read_label_map
    from lkseg.metrics import compute_metrics, format_metrics_table

    ref = read_label_map(args.ref)
    pred = read_label_map(args.pred, reference=ref, resample=args.resample_labels)
    placement = pred.meta.get("grid_placement", "same grid")
    labels = parse_label_spec(args.labels) or _names_from_file(pred)
    ref_labels = parse_label_spec(args.ref_labels) or (_names_from_file(ref) if labels else None)
    results = compute_metrics(pred, ref, labels=labels, ref_labels=ref_labels)
    if placement != "same grid":
        print(f"note: the prediction was {placement} onto the reference's grid")
    print(format_metrics_table(results))
    print(HD95_NOTE)
    if args.json_out:
        payload = {
            "prediction": str(args.pred),
            "reference": str(args.ref),
            "spacing_mm": list(ref.spacing),
            "prediction_grid_placement": placement,
            "hd95_convention": "hd95_mm: max of the two directed 95th percentiles (surface-distance/MONAI); "
            "hd95_pooled_mm: 95th percentile of both directions pooled (MedPy)",
            "structures": {name: m.to_dict() for name, m in results.items()},
        }
        atomic_write_text(args.json_out, json.dumps(payload, indent=2))
        print(f"wrote {args.json_out}")
    return 0
