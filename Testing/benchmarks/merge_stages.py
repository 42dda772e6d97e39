"""Combine the stages of two model packages into one (e.g. a re-trained fine stage with an
existing coarse locator): ``python merge_stages.py FINE_PACKAGE COARSE_PACKAGE OUT``.

``python merge_stages.py --second-locator PACKAGE LOCATOR_PACKAGE OUT`` instead copies PACKAGE
whole and adds LOCATOR_PACKAGE's coarse stage to it as its second locator (stage ``coarse2``,
weights ``coarse2.pt``), consulted only for organs the package's own locator misses.

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
    from lkseg.models import load_manifest

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
    training, accuracy = _provenance(fine, coarse, "coarse", "coarse_stage_from")
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
    return _save_checked(merged, out, "merged package")


def _provenance(base, source, stage: str, training_key: str) -> tuple[dict, dict]:
    """``base``'s training and accuracy records with ``source``'s coarse-stage validation under
    ``accuracy.validation[stage]`` and where that stage came from under ``training[training_key]``."""
    accuracy = dict(base.accuracy)
    validation = dict(accuracy.get("validation", {}))
    validation[stage] = source.accuracy.get("validation", {}).get("coarse", {})
    accuracy["validation"] = validation
    training = dict(base.training)
    cases = len(source.training.get("cases_train", []))
    training[training_key] = f"{source.id}@{source.version} ({source.training.get('dataset')}, cases {cases})"
    return training, accuracy


def _save_checked(manifest, out: Path, what: str) -> Path:
    from lkseg.models import check_weights

    manifest.save(out)
    states = check_weights(out, manifest.weights)
    assert all(s == "ok" for s in states.values()), states
    print(f"{what} written to {out}: stages {list(manifest.stages)}")
    return out


def add_second_locator(package_dir: str, locator_dir: str, out_dir: str, version: str | None = None) -> Path:
    """PACKAGE with LOCATOR's coarse stage added as ``coarse2`` (same grid, labels and
    normalisation required); ``version`` replaces the package's version when given."""
    from lkseg.models import load_manifest

    base, loc = load_manifest(package_dir), load_manifest(locator_dir)
    if base.coarse is None or loc.coarse is None:
        raise SystemExit("both packages need a coarse stage")
    if base.coarse.labels != loc.coarse.labels or base.coarse.spacing != loc.coarse.spacing:
        raise SystemExit("the second locator must have the coarse stage's labels and spacing")
    if base.intensity != loc.intensity:
        raise SystemExit(f"intensity differs ({base.intensity} vs {loc.intensity})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stage in base.stages.values():
        if stage.name != "coarse2":
            shutil.copy2(Path(package_dir) / stage.weights, out / stage.weights)
    shutil.copy2(Path(locator_dir) / loc.coarse.weights, out / "coarse2.pt")
    stages = {n: s for n, s in base.stages.items() if n != "coarse2"}
    stages["coarse2"] = replace(loc.coarse, name="coarse2", weights="coarse2.pt")
    weights = {s.weights: base.weights[s.weights] for n, s in stages.items() if n != "coarse2"}
    weights["coarse2.pt"] = loc.weights[loc.coarse.weights]
    training, accuracy = _provenance(base, loc, "coarse2", "second_locator_from")
    merged = replace(
        base,
        version=version or base.version,
        stages=stages,
        weights=weights,
        training=training,
        accuracy=accuracy,
        folder=out,
    )
    return _save_checked(merged, out, "package with a second locator")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 4 and args[0] == "--second-locator":
        add_second_locator(*args[1:4])
    elif len(args) == 3:
        merge(*args)
    else:
        raise SystemExit(__doc__)
