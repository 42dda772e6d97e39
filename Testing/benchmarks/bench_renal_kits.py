"""Benchmark: R.E.N.A.L. on real kidney tumour shapes (KiTS23 reference segmentations).

KiTS23 (github.com/neheller/kits23, CC BY-NC-SA 4.0: local evaluation only, never commit the
files) labels 1 = kidney, 2 = tumour, 3 = cyst, without a collecting-system segment and with one
label for both kidneys. Each case's kidney label is split into its two largest 26-connected
pieces, named right/left by RAS x (the right kidney has the larger RAS x); smaller pieces are
dropped. No CT is used (only the segmentations are in the repository), so N and L come from the
kidney's shape alone (:mod:`lkseg.planning.sinus`): its medial concavity when the label leaves
the sinus out, else the sinus estimated from the kidney's shape. Prints, per tumour, R, E, N, L,
the sinus source or why N/L are not available, and the distribution of N, L and the sources.

``--filled-check``: for each kidney whose label leaves the sinus out (its medial concavity is
used), the concavity is painted into the kidney label, as in a label that includes its sinus,
and the tumours are scored again: the estimated sinus's N and L against those from the
concavity (agreement on real shapes; the concavity is itself derived, not a truth).

Usage::

    .venv/bin/python Testing/benchmarks/bench_renal_kits.py FOLDER_WITH_case_*.nii.gz
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchutil import environment, print_table  # noqa: E402


def _filled(labels, table) -> tuple[object, list[str]]:
    """``labels`` with the medial concavity of each kidney (its derived sinus) painted into that
    kidney, and the names of the kidneys so filled."""
    from lkseg.planning import LabelIndex
    from lkseg.planning._geometry import spacing_zyx
    from lkseg.planning.renal import _geometric_sinus, _kidney_geometry
    from lkseg.planning.sinus import GEOMETRIC_SOURCE

    index = LabelIndex.build(labels, table)
    sp = spacing_zyx(labels.grid)
    arr = np.array(labels.array)
    filled = []
    for value, name in ((2, "kidney_right"), (3, "kidney_left")):
        if not index.present([name]):
            continue
        sinus, offset, source = _geometric_sinus(index, _kidney_geometry(index, name, sp), sp, None)
        if sinus is None or source != GEOMETRIC_SOURCE:
            continue
        idx = np.argwhere(sinus) + offset
        keep = arr[tuple(idx.T)] == 0  # the concavity is outside every segment
        arr[tuple(idx[keep].T)] = value
        filled.append(name)
    return labels.with_array(arr), filled


def _case(path: Path, filled_check: bool = False) -> list[dict]:
    from scipy import ndimage

    from lkseg.io import read_label_map
    from lkseg.labels import LabelTable
    from lkseg.planning import PlanOptions, run_plan

    seg = read_label_map(path)
    arr = np.asarray(seg.array)
    comps, _ = ndimage.label(arr == 1, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(comps.ravel())[1:]
    keep = np.argsort(sizes)[::-1][:2] + 1
    out = np.zeros(arr.shape, np.uint8)
    out[arr == 2] = 1
    out[arr == 3] = 4
    xs = {int(k): seg.grid.index_to_ras(np.argwhere(comps == k).mean(axis=0)[::-1])[0] for k in keep}
    order = sorted(xs, key=xs.get, reverse=True)  # larger RAS x = patient right
    for value, k in zip((2, 3), order):
        out[comps == k] = value
    table = LabelTable({1: "kidney_tumor", 2: "kidney_right", 3: "kidney_left", 4: "kidney_cyst"})
    labels = seg.with_array(out)
    result = run_plan(labels, table, PlanOptions(surfaces=False))
    rows = []
    if filled_check:
        filled_labels, kidneys = _filled(labels, table)
        again = {r.tumour: r for r in run_plan(filled_labels, table, PlanOptions(surfaces=False)).renal}
        for r in result.renal:
            if r.kidney not in kidneys:
                continue
            e = again[r.tumour]
            rows.append(
                {
                    "case": path.name.split(".")[0],
                    "tumour": r.tumour,
                    "kidney": r.kidney,
                    "N_concavity": r.N,
                    "N_estimated": e.N,
                    "L_concavity": r.L,
                    "L_estimated": e.L,
                    "gap_concavity_mm": r.nearness_mm,
                    "gap_estimated_mm": e.nearness_mm,
                    "polar_concavity": r.polar_lines_ras_s_mm,
                    "polar_estimated": e.polar_lines_ras_s_mm,
                    "source": (e.sinus_source or "not available").split(":")[0],
                }
            )
        return rows
    for r in result.renal:
        rows.append(
            {
                "case": path.name.split(".")[0],
                "tumour": r.tumour,
                "kidney": r.kidney,
                "R": r.R,
                "E": r.E,
                "N": r.N,
                "L": r.L,
                "gap_mm": r.nearness_mm,
                "notation": r.notation,
                "source": (r.sinus_source or "not available").split(":")[0],
                "note": (r.sinus_source or "")[:40]
                if r.N is not None
                else r.notes.get("nearness_mm", "").split(": ")[-1][:110],
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--filled-check", action="store_true", help="estimated vs concavity sinus (see above)")
    args = parser.parse_args()
    print("# bench_renal_kits: R.E.N.A.L. on KiTS23 reference segmentations (no CT)")
    print("environment:", environment())
    print("load average (1, 5, 15 min):", os.getloadavg())
    rows = []
    for path in sorted(Path(args.folder).glob("case_*.nii.gz")):
        rows += _case(path, args.filled_check)
    if args.filled_check:
        for r in rows:
            for key in ("polar_concavity", "polar_estimated"):
                r[key] = None if r[key] is None else "{:.1f}/{:.1f}".format(*r[key])
        print_table(rows, title="estimated sinus (concavity painted into the kidney) vs the concavity")
        n = len(rows)
        print(
            f"tumours {n}: N equal {sum(r['N_concavity'] == r['N_estimated'] for r in rows)}/{n}, "
            f"L equal {sum(r['L_concavity'] == r['L_estimated'] for r in rows)}/{n}, both "
            f"{sum(r['N_concavity'] == r['N_estimated'] and r['L_concavity'] == r['L_estimated'] for r in rows)}/{n}; "
            f"sources {dict(Counter(r['source'] for r in rows))}"
        )
        print("load average after:", os.getloadavg())
        return 0
    print_table(rows, title="per tumour")
    scored = [r for r in rows if r["kidney"] is not None]
    with_nl = [r for r in scored if r["N"] is not None and r["L"] is not None]
    print(f"tumours {len(rows)}, in a kidney {len(scored)}, N and L computed {len(with_nl)}/{len(scored)}")
    for key in ("N", "L", "source"):
        print(f"{key}: {dict(sorted(Counter(str(r[key]) for r in scored).items()))}")
    for source in sorted({r["source"] for r in scored}):
        sub = [r for r in scored if r["source"] == source]
        print(
            f"  {source}: N {dict(sorted(Counter(str(r['N']) for r in sub).items()))}, L {dict(sorted(Counter(str(r['L']) for r in sub).items()))}"
        )
    print("load average after:", os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
