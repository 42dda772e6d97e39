"""``lkseg metrics PRED REF``: Dice, Jaccard/VOE, RVD, ASSD, HD95 and HD per structure."""

from __future__ import annotations

import argparse
import json

__all__ = ["parse_label_spec", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "metrics",
        help="compare a predicted label map with a reference (Dice, VOE, RVD, ASSD, HD95 in mm)",
        description="Per-structure accuracy of PRED against REF. Both must share one voxel grid. Label maps may be "
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
    pred = read_label_map(args.pred, reference=ref)
    labels = parse_label_spec(args.labels) or _names_from_file(pred)
    ref_labels = parse_label_spec(args.ref_labels) or (_names_from_file(ref) if labels else None)
    results = compute_metrics(pred, ref, labels=labels, ref_labels=ref_labels)
    print(format_metrics_table(results))
    if args.json_out:
        payload = {
            "prediction": str(args.pred),
            "reference": str(args.ref),
            "spacing_mm": list(ref.spacing),
            "structures": {name: m.to_dict() for name, m in results.items()},
        }
        atomic_write_text(args.json_out, json.dumps(payload, indent=2))
        print(f"wrote {args.json_out}")
    return 0
