"""Shared helpers of the batch tests (no tests here): a cheap threshold engine and small cohorts.

The engine is deterministic and exact on the synthetic cases, so every output can be compared
with the label map the case was built from. It is also picklable by value, for Ray tasks.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np

from lkseg.batch import EngineResult
from lkseg.errors import CancelledError
from lkseg.labels import PRODUCT_LABELS
from lkseg.volume import Volume

SPACING = (0.8, 0.9, 2.5)
SHAPE = (12, 28, 30)  # ZYX


class ThresholdEngine:
    """Labels by HU: (20, 60] liver tumour, (60, 140) liver, >= 140 right kidney.

    Attributes:
        calls: number of predict calls (on this object; Ray workers count their own copies).
        delay: seconds to sleep per case (polling ``cancel``), to make runs interruptible.
        cancel_on_call: cancel the given token on this call number (simulates Ctrl-C mid-case).
    """

    model_id = "test-threshold"

    def __init__(self, version: str = "1.0", delay: float = 0.0, cancel_on_call: int | None = None, token=None):
        self.version = version
        self.delay = delay
        self.cancel_on_call = cancel_on_call
        self.token = token
        self.calls = 0
        self.threads: set[str] = set()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["token"] = None
        return state

    def predict(self, volume: Volume, *, progress=None, cancel=None, structures=None) -> EngineResult:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.cancel_on_call is not None and self.calls == self.cancel_on_call and self.token is not None:
            self.token.cancel()
        end = time.monotonic() + self.delay
        while True:
            if cancel is not None and cancel.cancelled:
                raise CancelledError("cancelled by the user")
            if time.monotonic() >= end:
                break
            time.sleep(min(0.02, max(end - time.monotonic(), 0)))
        if progress is not None:
            progress(0.5, "thresholding")
        a = volume.array
        labels = np.zeros(a.shape, np.uint8)
        labels[(a > 20) & (a <= 60)] = 2
        labels[(a > 60) & (a < 140)] = 1
        labels[a >= 140] = 3
        if progress is not None:
            progress(1.0, "done")
        return EngineResult(volume.with_array(labels), PRODUCT_LABELS, {"threshold": 0.001}, [])


def make_case(variant: int, direction=None) -> tuple[Volume, np.ndarray]:
    """A small CT (HU, int16) and its exact product label map; ``variant`` moves the organs."""
    a = np.full(SHAPE, -100, np.int16)
    labels = np.zeros(SHAPE, np.uint8)
    v = variant % 5
    a[2:9, 4 + v : 16 + v, 3:15] = 100
    labels[2:9, 4 + v : 16 + v, 3:15] = 1
    a[4:6, 7 + v : 10 + v, 6:9] = 40  # one tumour inside the liver
    labels[4:6, 7 + v : 10 + v, 6:9] = 2
    if variant % 2:
        a[6:8, 12 + v : 14 + v, 10:13] = 45  # a second one
        labels[6:8, 12 + v : 14 + v, 10:13] = 2
    a[3:8, 18:25, 19 + v // 2 : 26 + v // 2] = 180
    labels[3:8, 18:25, 19 + v // 2 : 26 + v // 2] = 3
    vol = Volume.from_array(a, SPACING, (10.0, -20.0, 30.0 + variant), direction)
    return vol, labels


def expected_ml(labels: np.ndarray) -> dict[str, float]:
    vox = SPACING[0] * SPACING[1] * SPACING[2] / 1000.0
    return {name: round(float((labels == value).sum()) * vox, 3) for value, name in PRODUCT_LABELS.items()}


def write_dicom_case(volume: Volume, folder: Path, modality: str = "CT", prefix: str = "") -> list[Path]:
    """A DICOM series of ``volume`` (files renamed with ``prefix``); ``modality`` rewritten after writing."""
    import pydicom

    from lkseg.io.dicom import write_dicom_series

    tmp = folder.parent / f".tmp-{folder.name}-{prefix or 'x'}"
    files = write_dicom_series(volume, tmp, series_description=f"test {modality} {prefix}")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        target = folder / f"{prefix}{f.name}"
        if modality != "CT":
            ds = pydicom.dcmread(str(f))
            ds.Modality = modality
            ds.save_as(str(f))
        shutil.move(str(f), str(target))
        out.append(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def make_cohort(root: Path, n_nifti: int = 3, dicom: bool = True, bad: bool = True) -> dict[str, np.ndarray]:
    """Write a cohort under ``root``; return case id -> expected label map (for the good cases).

    Layout: ``caseN.nii.gz`` (N < n_nifti), ``dicom/patA/`` (a CT series), ``dicom/patB/`` (an MR
    series: must fail as wrong modality), ``broken.nii.gz`` (corrupt: must fail on read).
    """
    from lkseg.io import write_image

    root.mkdir(parents=True, exist_ok=True)
    expected = {}
    for i in range(n_nifti):
        vol, labels = make_case(i)
        write_image(vol, root / f"case{i}.nii.gz")
        expected[f"case{i}"] = labels
    if dicom:
        vol, labels = make_case(7)
        write_dicom_case(vol, root / "dicom" / "patA")
        expected["dicom__patA"] = labels
        write_dicom_case(make_case(8)[0], root / "dicom" / "patB", modality="MR")
    if bad:
        (root / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not a NIfTI file")
    return expected


class LabelFileEngine:
    """An "oracle" engine: returns the label map stored under ``labels_dir`` with the input's file
    name (e.g. a phantom's exact labels), so a benchmark measures everything but inference."""

    model_id = "label-file-oracle"
    version = "1"

    def __init__(self, labels_dir: str | Path, delay: float = 0.0):
        self.labels_dir = Path(labels_dir)
        self.delay = delay

    def predict(self, volume: Volume, *, progress=None, cancel=None, structures=None) -> EngineResult:
        from lkseg.io import read_label_map

        time.sleep(self.delay)
        labels = read_label_map(self.labels_dir / Path(volume.meta["source"]).name, reference=volume)
        return EngineResult(volume.with_array(labels.array), PRODUCT_LABELS, {"read_labels": 0.0}, [])
