"""Combine the stages of two model packages into one (e.g. a re-trained fine stage with an
existing coarse locator): ``python merge_stages.py FINE_PACKAGE COARSE_PACKAGE OUT``.

Both packages must have the same labels and intensity normalisation; the weights are copied and
their SHA-256 re-checked; the fine package's metadata and inference settings (class weights,
minimum organ size, margins) are kept, with the cascade on, and the coarse stage's validation
accuracy carried over.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path


def merge(fine_dir: str, coarse_dir: str, out_dir: str) -> Path:
    from lkseg.models import check_weights, load_manifest

    fine, coarse = load_manifest(fine_dir), load_manifest(coarse_dir)
    if fine.label_table != coarse.label_table:
        raise SystemExit(f"labels differ: {dict(fine.label_table)} vs {dict(coarse.label_table)}")
    if fine.intensity != coarse.intensity:
        print(
            f"note: intensity differs ({fine.intensity} vs {coarse.intensity}); the fine package's is used for both stages"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(fine_dir) / fine.fine.weights, out / fine.fine.weights)
    shutil.copy2(Path(coarse_dir) / coarse.coarse.weights, out / coarse.coarse.weights)
    accuracy = dict(fine.accuracy)
    validation = dict(accuracy.get("validation", {}))
    validation["coarse"] = coarse.accuracy.get("validation", {}).get("coarse", {})
    accuracy["validation"] = validation
    training = dict(fine.training)
    training["coarse_stage_from"] = (
        f"{coarse.id}@{coarse.version} ({coarse.training.get('dataset')}, cases {len(coarse.training.get('cases_train', []))})"
    )
    merged = replace(
        fine,
        stages={"coarse": coarse.coarse, "fine": fine.fine},
        weights={
            fine.fine.weights: fine.weights[fine.fine.weights],
            coarse.coarse.weights: coarse.weights[coarse.coarse.weights],
        },
        inference=replace(fine.inference, cascade=True),
        accuracy=accuracy,
        training=training,
        folder=out,
    )
    merged.save(out)
    states = check_weights(out, merged.weights)
    assert all(s == "ok" for s in states.values()), states
    print(f"merged package written to {out}: stages {list(merged.stages)}")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    merge(*sys.argv[1:4])
