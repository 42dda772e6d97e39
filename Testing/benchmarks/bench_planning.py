"""Benchmark: planning + surfaces + report on a 512x512x200 phantom with all structures.

Target (issue 6): <= 15 s wall and <= 3 GB peak RSS on the 2-core CPU.

What one run does (in a fresh process, after loading the label map and CT from a cache file):
``run_plan`` (volumes, lesions, burden, FLR with a resection plane and body size, R.E.N.A.L.,
surfaces of every structure), ``export_surfaces`` (STL per structure + one GLB scene) and
``write_report`` (JSON, CSV, HTML with axial/coronal overlays and the offscreen 3D picture).

The phantom's detailed labels are mapped to a planning label map with every structure the
planning uses: liver (parenchyma + intrahepatic vessels), liver tumours, both kidneys, kidney
tumour and cyst, spleen, renal pelvis/sinus (so N and L of R.E.N.A.L. are measured), renal vein
(hilar "h"), aorta, inferior vena cava and the extrahepatic portal vein.

Usage::

    .venv/bin/python Testing/benchmarks/bench_planning.py [--runs 3] [--seed 1] [--keep OUT_DIR] [--couinaud]

``--couinaud`` adds the Couinaud segments (exact landmarks of the phantom), their 8 surfaces,
and resects segments 5-8 (right hepatectomy) instead of the plane (issue 13 target: <= 10 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchutil import environment, measure_in_subprocess, median, print_table  # noqa: E402

SIZE = (512, 512, 200)
SPACING = (0.8, 0.8, 1.25)  # same field of view as the default phantom (410 x 410 x 250 mm)

#: planning label value -> (structure name, detailed phantom structures)
PLANNING = {
    1: ("liver", ("liver_parenchyma", "portal_vein", "hepatic_vein")),
    2: ("liver_tumor", ("liver_tumor",)),
    3: ("kidney_right", ("kidney_right_cortex", "kidney_right_medulla")),
    4: ("kidney_left", ("kidney_left_cortex", "kidney_left_medulla")),
    5: ("kidney_tumor", ("kidney_tumor",)),
    6: ("kidney_cyst", ("kidney_cyst",)),
    7: ("spleen", ("spleen",)),
    8: ("renal_pelvis", ("kidney_right_pelvis", "kidney_left_pelvis")),
    9: ("aorta", ("aorta",)),
    10: ("renal_vein", ("renal_vein",)),
    11: ("portal_vein", ("portal_vein_extrahepatic",)),
    12: ("inferior_vena_cava", ("inferior_vena_cava",)),
}


def make_case(seed: int, cache: Path) -> tuple[Path, dict]:
    """Generate (or reuse) the phantom and save the planning label map + CT as one .npz."""
    from lkseg.phantom import DETAILED, PhantomConfig, generate_phantom
    from lkseg.phantom.couinaud import exact_landmarks

    path = cache / f"plan_phantom_{SIZE[0]}x{SIZE[1]}x{SIZE[2]}_seed{seed}.npz"
    truth_path = path.with_suffix(".truth.npy")
    if path.exists() and truth_path.exists():
        truth = np.load(truth_path, allow_pickle=True).item()
        if "landmarks" in truth:
            return path, truth
    t = time.perf_counter()
    ph = generate_phantom(PhantomConfig(seed=seed, size_ijk=SIZE, spacing=SPACING))
    print(f"phantom generated in {time.perf_counter() - t:.1f} s (not part of the benchmark)")
    lut = np.zeros(256, np.uint8)
    for value, (_, parts) in PLANNING.items():
        for part in parts:
            lut[DETAILED[part]] = value
    g = ph.labels.grid
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        labels=lut[ph.labels.array],
        image=ph.image.array,
        spacing=g.spacing,
        origin=g.origin,
        direction=g.direction,
    )
    truth = {
        "volumes_ml": ph.volumes_ml,
        "lesions": ph.lesions,
        "height_cm": ph.meta.get("height_cm"),
        "weight_kg": ph.meta.get("weight_kg"),
        "landmarks": exact_landmarks(ph).to_dict(),
    }
    np.save(truth_path, np.array(truth, dtype=object))
    return path, truth


def run_once(case: str, out_dir: str, height_cm: float, weight_kg: float, landmarks: dict | None = None) -> dict:
    """One timed planning run (executed in a fresh process by :func:`measure_in_subprocess`)."""
    from lkseg.labels import LabelTable
    from lkseg.planning import Patient, PlanOptions, Resection, ResectionPlane, run_plan
    from lkseg.report import collect_provenance, write_report
    from lkseg.surfaces import export_surfaces
    from lkseg.volume import Volume

    data = np.load(case)
    labels = Volume.from_array(data["labels"], tuple(data["spacing"]), tuple(data["origin"]), data["direction"])
    image = labels.with_array(data["image"])
    table = LabelTable({v: name for v, (name, _) in PLANNING.items()})
    # resection plane: sagittal plane 15 mm left of the liver's centre, resecting the right side
    liver = np.argwhere(labels.array[::4, ::4, ::4] == 1).mean(axis=0) * 4
    centre = labels.grid.index_to_ras(liver[::-1])
    plane = ResectionPlane((float(centre[0]) - 15.0, float(centre[1]), float(centre[2])), (1.0, 0.0, 0.0), "positive")
    options = PlanOptions(resection=Resection(planes=(plane,)), patient=Patient(height_cm, weight_kg, "normal"))
    if landmarks is not None:  # --couinaud: segments 1-8 and a right hepatectomy (segments 5-8) instead
        from lkseg.planning import CouinaudLandmarks

        options.landmarks = CouinaudLandmarks.from_dict(landmarks)
        options.resection = Resection(segments=(5, 6, 7, 8))

    t0 = time.perf_counter()
    result = run_plan(labels, table, options, image=image)
    t1 = time.perf_counter()
    written = export_surfaces(result.surfaces, Path(out_dir) / "models", ["stl", "glb"])
    t2 = time.perf_counter()
    prov = collect_provenance({"case": case}, parameters={"resection": options.resection.describe()})
    reports = write_report(result, out_dir, labels, table, image=image, provenance=prov)
    t3 = time.perf_counter()
    return {
        "plan_s": t1 - t0,
        "export_s": t2 - t1,
        "report_s": t3 - t2,
        "total_s": t3 - t0,
        "stages": dict(result.timings_s),
        "files": sum(len(v) for v in written.values()) + len(reports),
        "triangles": sum(m.n_triangles for m in result.surfaces),
        "volumes": {n: (v.volume_ml, v.mesh_volume_ml) for n, v in result.volumes.items() if v.voxels},
        "lesions": [
            (les.label, les.organ, les.volume_ml, les.axial_long_mm, les.axial_short_mm, les.distance_to_surface_mm)
            for les in result.lesions
        ],
        "flr": result.flr.to_dict() if result.flr else None,
        "renal": [r.to_dict() for r in result.renal],
        "warnings": result.warnings,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--cache",
        default=os.path.join(tempfile.gettempdir(), "lkseg-bench"),
        help="where the generated phantom is kept",
    )
    parser.add_argument("--keep", help="keep the last run's outputs in this folder")
    parser.add_argument(
        "--couinaud",
        action="store_true",
        help="also label Couinaud segments (exact phantom landmarks) and resect segments 5-8 instead of the plane",
    )
    args = parser.parse_args()

    print("# bench_planning: planning + surfaces + report, 512x512x200 phantom")
    print("environment:", environment())
    print("load average (1, 5, 15 min):", os.getloadavg())
    case, truth = make_case(args.seed, Path(args.cache))
    rows, runs = [], []
    for n in range(args.runs):
        out = Path(args.keep) if args.keep and n == args.runs - 1 else Path(tempfile.mkdtemp(prefix="bench_plan_"))
        lm = truth["landmarks"] if args.couinaud else None
        m = measure_in_subprocess(run_once, str(case), str(out), truth["height_cm"], truth["weight_kg"], lm)
        r = m["result"]
        runs.append(r)
        s = r["stages"]
        rows.append(
            {
                "run": n + 1,
                "total_s": r["total_s"],
                "plan_s": r["plan_s"],
                "volumetry": s["volumetry"],
                "lesions": s["lesions"],
                "flr": s["flr"],
                "renal": s["renal"],
                "couinaud": s.get("couinaud", 0.0),
                "surfaces": s["surfaces"],
                "export_s": r["export_s"],
                "report_s": r["report_s"],
                "process_wall_s": m["wall_s"],
                "peak_rss_mb": m["peak_rss_mb"],
            }
        )
        if not (args.keep and n == args.runs - 1):
            shutil.rmtree(out, ignore_errors=True)
    print_table(rows, title="runs (seconds; process_wall_s includes loading the 52-Mvoxel label map and CT)")
    total = median(r["total_s"] for r in rows)
    rss = max(r["peak_rss_mb"] for r in rows)
    print(f"\nmedian planning+surfaces+report: {total:.2f} s (target <= 15 s) -> {'PASS' if total <= 15 else 'FAIL'}")
    if args.couinaud:
        plan = median(r["plan_s"] for r in rows)
        seg = median(r["couinaud"] for r in rows)
        print(
            f"with Couinaud segments: median run_plan {plan:.2f} s (segments {seg:.2f} s), planning+surfaces+report "
            f"{total:.2f} s (issue 13 target <= 10 s) -> {'PASS' if total <= 10 else 'FAIL'}"
        )
    print(f"peak RSS (max of runs):          {rss:.0f} MB (target <= 3072 MB) -> {'PASS' if rss <= 3072 else 'FAIL'}")
    print("load average after:", os.getloadavg())
    _print_accuracy(runs[-1], truth)
    return 0


def _print_accuracy(r: dict, truth: dict) -> None:
    vt = truth["volumes_ml"]
    true_ml = {name: sum(vt.get(p, 0.0) for p in parts) for _, (name, parts) in PLANNING.items()}
    rows = [
        {
            "structure": n,
            "true_ml": true_ml.get(n, float("nan")),
            "voxel_ml": v,
            "mesh_ml": m,
            "mesh_vs_voxel_%": 100 * (m - v) / v if m else float("nan"),
        }
        for n, (v, m) in r["volumes"].items()
    ]
    print_table(rows, title="volumes (last run) vs phantom truth")
    print_table(
        [
            {"lesion": a, "organ": b, "ml": c, "axial_long_mm": d, "axial_short_mm": e, "to_surface_mm": f}
            for a, b, c, d, e, f in r["lesions"]
        ],
        title="lesions",
    )
    print(
        "phantom lesions:",
        [
            (les["name"], les.get("organ"), round(les["volume_ml"], 2), les.get("fraction_outside_kidney"))
            for les in truth["lesions"]
        ],
    )
    f = r["flr"]
    if f:
        print(
            f"\nFLR: TLV {f['tlv_ml']:.1f} mL, resected {f['resected_ml']:.1f} mL, FLR {f['flr_ml']:.1f} mL = {f['flr_percent']:.1f}%; "
            f"BSA {f['bsa_m2']:.3f} m2, sTLV {f['stlv_ml']:.1f} mL, sFLR {f['sflr_percent']:.1f}% vs {f['threshold_percent']:.0f}% -> {f['verdict']}"
        )
    for s in r["renal"]:
        print(
            f"R.E.N.A.L. {s['tumour']} ({s['kidney']}): {s['notation']} = R{s['R']} E{s['E']} N{s['N']} L{s['L']}, "
            f"max diameter {s['max_diameter_mm']:.1f} mm, exophytic {100 * (s['exophytic_fraction'] or 0):.1f}%, "
            f"to collecting system {s['nearness_mm']}, hilar {s['hilar']}, complexity {s['complexity']}"
        )
    print("warnings:", r["warnings"])


if __name__ == "__main__":
    sys.exit(main())
