"""Finding the cases of a batch: image files and DICOM series in a folder tree, or a CSV list.

A *case* is one CT to segment: a NIfTI/NRRD/MetaImage file, or one DICOM series (grouped by
SeriesInstanceUID, searched recursively). Each case gets a stable, filesystem-safe ``case_id``
derived from its path relative to the input root, so a rerun over the same tree maps every case
to the same output folder (the basis of resuming).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lkseg.errors import InputError
from lkseg.io.atomic import full_suffix
from lkseg.io.image import IMAGE_SUFFIXES

__all__ = [
    "NON_IMAGE_MODALITIES",
    "CaseInput",
    "discover_cases",
    "find_dicom_series",
    "read_case_list",
    "safe_case_id",
]

log = logging.getLogger(__name__)

#: DICOM modalities that hold no image volume (segmentations, structure sets, reports...).
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC", "OT_SEG"}
)
#: Columns of a CSV case list that are not free per-case metadata.
_CSV_RESERVED = ("path", "case_id", "series_uid")
_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_ID = 96


@dataclass(frozen=True)
class CaseInput:
    """One case of a batch.

    Attributes:
        case_id: unique, filesystem-safe name; the case's output folder is ``OUTPUT/cases/<case_id>``.
        path: the image file, or the folder that holds the DICOM series' files.
        kind: ``"image"`` (a NIfTI/NRRD/MetaImage file) or ``"dicom"`` (a DICOM series).
        series_uid: SeriesInstanceUID of a DICOM case.
        files: every file whose bytes make up the input (hashed for the resume manifest), sorted.
        modality: DICOM Modality when known (``"CT"``, ``"MR"``...); ``None`` for image files.
        meta: per-case values from a CSV list (e.g. ``height_cm``, ``weight_kg``), as strings.
    """

    case_id: str
    path: Path
    kind: str
    series_uid: str | None = None
    files: tuple[Path, ...] = ()
    modality: str | None = None
    meta: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def describe(self) -> str:
        if self.kind == "dicom":
            return f"{self.path} (DICOM series {self.series_uid}, {len(self.files)} files, {self.modality or '?'})"
        return str(self.path)

    def to_dict(self) -> dict:
        return {
            "case_id": self.case_id,
            "path": str(self.path),
            "kind": self.kind,
            "series_uid": self.series_uid,
            "modality": self.modality,
            "n_files": len(self.files),
            "meta": dict(self.meta),
        }


def safe_case_id(text: str) -> str:
    """A filesystem-safe case id from a relative path: ``"a/b c/x"`` -> ``"a__b_c__x"``."""
    parts = [p for p in re.split(r"[\\/]+", text) if p not in ("", ".")]
    cid = "__".join(_ID_CHARS.sub("_", p).strip("_") or "_" for p in parts) or "case"
    if cid.startswith("."):
        cid = "_" + cid.lstrip(".")
    if len(cid) > _MAX_ID:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        cid = f"{cid[: _MAX_ID - 9]}-{digest}"
    return cid


def _strip_suffix(name: str) -> str:
    suffix = full_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name


def _data_files(path: Path) -> tuple[Path, ...]:
    """The image file plus, for detached headers (.nhdr, .mhd), the data file it names."""
    suffix = full_suffix(path)
    if suffix not in (".nhdr", ".mhd"):
        return (path,)
    key = "data file:" if suffix == ".nhdr" else "elementdatafile"
    try:
        for line in path.read_text(errors="replace").splitlines():
            low = line.strip().lower()
            if low.startswith(key) or low.startswith("datafile:"):
                value = line.split(":" if suffix == ".nhdr" else "=", 1)[-1].strip()
                data = (path.parent / value) if value and value.upper() != "LOCAL" else None
                return (path, data) if data is not None and data.is_file() else (path,)
    except OSError:
        pass
    return (path,)


def _looks_like_dicom(path: Path) -> bool:
    if path.name.upper() == "DICOMDIR":
        return False
    if path.suffix and path.suffix.lower() not in (".dcm", ".ima", ".dicom") and not path.suffix[1:].isdigit():
        return False  # another file type (.txt, .json, .png...); numeric suffixes are UID-named files
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def find_dicom_series(root: Path, exclude: Path | None = None) -> list:
    """The DICOM image series under ``root`` (recursively), grouped by SeriesInstanceUID.

    Uses :func:`lkseg.io.dicom.list_dicom_series` (headers only). Objects without image volumes
    (SEG, RTSTRUCT, SR...) are left out; image series of any modality are returned (a non-CT
    series then fails as a case with a clear message rather than disappearing silently). Files
    inside ``exclude`` are ignored.

    Returns:
        :class:`~lkseg.io.dicom.DicomSeriesInfo` objects, files sorted.
    """
    from lkseg.io.dicom import list_dicom_series

    excluded = exclude.resolve() if exclude is not None else None
    out = []
    for info in list_dicom_series(root):
        if not info.is_image or info.modality.upper() in NON_IMAGE_MODALITIES:
            continue
        files = sorted(f for f in info.files if excluded is None or not f.resolve().is_relative_to(excluded))
        if files:
            info.files = files
            out.append(info)
    return sorted(out, key=lambda s: (str(_common_folder(s.files)), s.description, s.uid))


def _series_number(path: Path) -> str | None:
    import pydicom

    try:
        value = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SeriesNumber"]).get("SeriesNumber")
    except Exception:
        return None
    return None if value in (None, "") else str(value)


def _common_folder(files: list[Path]) -> Path:
    return Path(os.path.commonpath([str(f.parent) for f in files]))


def _walk(root: Path, exclude: Path | None = None) -> Iterator[Path]:
    """Every regular file under ``root``, sorted, skipping hidden entries and ``exclude``."""
    excluded = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if excluded is not None and (here / d).resolve() == excluded:
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if not name.startswith("."):
                yield here / name


def _image_case(path: Path, root: Path, meta: dict[str, str] | None = None, case_id: str | None = None) -> CaseInput:
    rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    cid = case_id or safe_case_id(_strip_suffix(rel.as_posix()))
    return CaseInput(cid, path, "image", files=_data_files(path), meta=dict(meta or {}))


def _dicom_cases(
    series: list, root: Path, meta: dict[str, str] | None = None, case_id: str | None = None
) -> list[CaseInput]:
    """One case per series; several series in one folder get ``__S<SeriesNumber>`` (or, when the
    numbers repeat, the last 8 characters of the UID) appended to the folder's id."""
    by_folder: dict[Path, list] = defaultdict(list)
    for s in series:
        by_folder[_common_folder(s.files)].append(s)
    cases = []
    for folder, group in by_folder.items():
        rel = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else folder.name
        base = case_id or safe_case_id(rel if rel not in ("", ".") else (root.name or "dicom"))
        numbers = [_series_number(s.files[0]) for s in group] if len(group) > 1 else [None]
        by_number = None not in numbers and len(set(numbers)) == len(numbers)
        for s, number in zip(group, numbers):
            cid = base
            if len(group) > 1:
                cid = f"{base}__S{safe_case_id(number)}" if by_number else f"{base}__{s.uid[-8:].replace('.', '_')}"
            cases.append(CaseInput(cid, folder, "dicom", s.uid, tuple(s.files), s.modality or None, dict(meta or {})))
    return cases


def _dedupe_ids(cases: list[CaseInput]) -> list[CaseInput]:
    seen: dict[str, int] = {}
    out = []
    for case in cases:
        cid = case.case_id
        if cid in seen:
            digest = hashlib.sha1(f"{case.path}|{case.series_uid}".encode()).hexdigest()[:6]
            cid = f"{cid}-{digest}"
            log.warning("case id %s is used twice; %s becomes %s", case.case_id, case.describe(), cid)
            case = CaseInput(cid, case.path, case.kind, case.series_uid, case.files, case.modality, case.meta)
        seen[cid] = 1
        out.append(case)
    return out


def _scan_folder(
    root: Path, exclude: Path | None, meta: dict[str, str] | None = None, case_id: str | None = None
) -> list[CaseInput]:
    images, has_dicom = [], False
    for path in _walk(root, exclude):
        suffix = full_suffix(path)
        if suffix in IMAGE_SUFFIXES:
            images.append(path)
        elif not has_dicom and suffix not in (".seg.nrrd", ".raw", ".raw.gz", ".zraw", ".csv", ".json"):
            has_dicom = _looks_like_dicom(path)
    cases = [_image_case(p, root, meta, case_id if len(images) == 1 and not has_dicom else None) for p in images]
    if has_dicom:
        cases += _dicom_cases(find_dicom_series(root, exclude), root, meta, case_id)
    return cases


def resection_planes(text: str) -> tuple:
    """The ``resection_plane`` column: one or more planes ``"R,A,S:nR,nA,nS[:side]"`` (RAS mm)
    separated by ``;``; several planes resect their intersection (a convex wedge)."""
    from lkseg.planning import ResectionPlane

    parts = [t for t in str(text).split(";") if t.strip()]
    if not parts:
        raise InputError("resection_plane is empty")
    return tuple(ResectionPlane.parse(t) for t in parts)


def read_case_list(csv_path: Path, exclude: Path | None = None) -> list[CaseInput]:
    """Read a CSV case list: a ``path`` column (files or DICOM folders, relative to the CSV's folder),
    optional ``case_id`` and ``series_uid`` columns; any other column (``height_cm``,
    ``weight_kg``, ``liver_quality``, ``resection_plane``) becomes per-case metadata given to
    planning. ``resection_plane`` (see :func:`resection_planes`) makes planning compute the
    future liver remnant of that case."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the case list ({exc})", csv_path) from exc
    if not rows or "path" not in rows[0]:
        raise InputError(
            "a case list needs a header row with a 'path' column (and optionally case_id, series_uid, height_cm, weight_kg)",
            csv_path,
        )
    cases: list[CaseInput] = []
    for line, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            raise InputError(f"line {line}: empty path", csv_path)
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else (csv_path.parent / path)
        meta = {k: (v or "").strip() for k, v in row.items() if k and k not in _CSV_RESERVED and (v or "").strip()}
        if "resection_plane" in meta:
            try:
                resection_planes(meta["resection_plane"])
            except InputError as exc:
                raise InputError(f"line {line}: {exc.args[0]}", csv_path) from None
        case_id = safe_case_id(row["case_id"].strip()) if (row.get("case_id") or "").strip() else None
        uid = (row.get("series_uid") or "").strip() or None
        if not path.exists():
            raise InputError(f"line {line}: no such file or folder: {path}", csv_path)
        if path.is_dir():
            found = _scan_folder(path, exclude, meta, case_id)
            if uid:
                found = [c for c in found if c.series_uid == uid]
                if not found:
                    raise InputError(f"line {line}: no DICOM series {uid} under {path}", csv_path)
                if case_id:
                    found = [
                        CaseInput(case_id, c.path, c.kind, c.series_uid, c.files, c.modality, c.meta) for c in found
                    ]
            if not found:
                raise InputError(f"line {line}: no image file or DICOM series under {path}", csv_path)
            cases += found
        elif full_suffix(path) in IMAGE_SUFFIXES:
            cases.append(_image_case(path, path.parent, meta, case_id))
        elif _looks_like_dicom(path):
            series = [s for s in find_dicom_series(path.parent, exclude) if not uid or s.uid == uid]
            if not series:
                raise InputError(f"line {line}: no DICOM image series found beside {path}", csv_path)
            cases += _dicom_cases(series, path.parent.parent, meta, case_id)
        else:
            raise InputError(f"line {line}: unsupported file type {full_suffix(path)!r}: {path}", csv_path)
    return cases


def discover_cases(source: str | Path, exclude: str | Path | None = None) -> list[CaseInput]:
    """The cases of a batch input.

    Args:
        source: a folder (searched recursively for NIfTI/NRRD/MetaImage files and DICOM series),
            a CSV case list (see :func:`read_case_list`), or a single image file.
        exclude: a folder to leave out of the search (the batch's output folder when it lies
            inside the input folder).

    Returns:
        Cases sorted by case id, ids unique.

    Raises:
        InputError: the source does not exist, or holds no case.
    """
    source = Path(source).expanduser().absolute()
    if not source.exists():
        raise InputError("no such file or folder", source)
    excl = Path(exclude) if exclude is not None else None
    if source.is_dir():
        cases = _scan_folder(source, excl)
    elif full_suffix(source) == ".csv":
        cases = read_case_list(source, excl)
    elif full_suffix(source) in IMAGE_SUFFIXES:
        cases = [_image_case(source, source.parent)]
    else:
        raise InputError("batch input must be a folder, a .csv case list or an image file", source)
    if not cases:
        raise InputError("no NIfTI/NRRD image or DICOM image series found (searched recursively)", source)
    cases = _dedupe_ids(sorted(cases, key=lambda c: c.case_id))
    log.info("found %d case(s) in %s", len(cases), source)
    return cases
