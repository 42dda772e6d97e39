"""``lkseg models``: list the model packages with their labels, licence and checksum state."""

from __future__ import annotations

import argparse
import json

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list model packages (built-in and user folder) with labels, licence, checksums")
    p.add_argument("--dir", action="append", default=[], help="also search this folder (repeatable)")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of the weight files")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def describe(manifest, verify: bool = True) -> dict:
    """JSON-ready description of a model package."""
    from lkseg.models import check_weights

    states = check_weights(manifest.folder, manifest.weights) if verify and manifest.folder else {}
    return {
        "id": manifest.id,
        "version": manifest.version,
        "task": manifest.task,
        "framework": manifest.framework,
        "labels": {str(v): s.name for v, s in sorted(manifest.labels.items())},
        "stages": {
            n: {"spacing_mm": list(s.spacing), "network": s.network.get("class")} for n, s in manifest.stages.items()
        },
        "license": manifest.license,
        "folder": str(manifest.folder),
        "checksums": states,
        "checksum_state": "not checked"
        if not states
        else ("ok" if all(v == "ok" for v in states.values()) else "FAILED"),
        "intended_use": manifest.intended_use,
    }


def _mm(values) -> str:
    return "x".join(f"{v:g}" for v in values)


def run(args: argparse.Namespace) -> int:
    from lkseg.models import list_models, model_dirs

    scan = list_models(args.dir)
    rows = [describe(m, verify=not args.no_verify) for m in scan.models]
    if args.json:
        print(
            json.dumps({"models": rows, "errors": [{"folder": str(p), "error": e} for p, e in scan.errors]}, indent=2)
        )
        return 0
    print("searched   " + ", ".join(str(d) for d in model_dirs(args.dir)))
    if not rows and not scan.errors:
        print("no model packages found")
    for row in rows:
        print(f"\n{row['id']}@{row['version']}  [{row['framework']}]  checksums: {row['checksum_state']}")
        print(f"  task      {row['task']}")
        print(f"  labels    {', '.join(f'{v}={n}' for v, n in row['labels'].items())}")
        stages = ", ".join(f"{n} {s['network']} @ {_mm(s['spacing_mm'])} mm" for n, s in row["stages"].items())
        print(f"  stages    {stages}")
        print(f"  licence   {row['license']}")
        print(f"  folder    {row['folder']}")
        bad = {k: v for k, v in row["checksums"].items() if v != "ok"}
        for name, state in bad.items():
            print(f"  ! {name}: {state}")
    for folder, error in scan.errors:
        print(f"\nINVALID {folder}: {error}")
    return 0
