"""DICOM Segmentation objects (SEG): write with highdicom, read back onto a voxel grid.

Writing references the source CT series: the segmentation must lie on the series' own grid
(checked), frame k of the SEG is derived from slice k of the series (SourceImageSequence), and
each segment carries its SNOMED CT category/type (and anatomic region) codes from
:mod:`lkseg.labels`, the algorithm type AUTOMATIC and the algorithm's name and version.

Reading maps every frame, through its ImagePositionPatient and the plane orientation and pixel
spacing, onto a target grid: the grid of a ``reference`` image when given (the usual case, since
SEG files omit empty frames), else the grid spanned by the SEG's own frames. Segments that
overlap are placed in separate layers of the returned :class:`~lkseg.segmentation.Segmentation`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

import lkseg
from lkseg.errors import GeometryMismatchError, InputError
from lkseg.io.atomic import atomic_path
from lkseg.labels import Code
from lkseg.segmentation import Segment, Segmentation, find_structure
from lkseg.volume import Grid, Volume

__all__ = ["read_dicom_seg", "write_dicom_seg"]

log = logging.getLogger(__name__)


def _coded(code: Code):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _description(number: int, segment: Segment, algorithm):
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    codes = segment.codes()
    r, g, b = (round(c * 255) for c in segment.color)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.name[:64],
        segmented_property_category=_coded(codes["category"]),
        segmented_property_type=_coded(codes["type"]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=(segment.structure or segment.name)[:64],
        anatomic_regions=[_coded(codes["region"])] if codes.get("region") else None,
        display_color=hd.color.CIELabColor.from_rgb(r, g, b),
    )
    modifier = codes.get("modifier")
    if modifier is not None:
        item = Dataset()
        item.CodeValue = modifier.value
        item.CodingSchemeDesignator = modifier.scheme
        item.CodeMeaning = modifier.meaning
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = DicomSequence(
            [item]
        )
    return description


def write_dicom_seg(
    seg: Segmentation,
    source_dicom_folder: str | Path,
    path: str | Path,
    *,
    algorithm_name: str = "LiverKidneySeg",
    algorithm_version: str = lkseg.__version__,
    series_description: str = "LiverKidneySeg segmentation",
) -> Path:
    """Write a segmentation as a DICOM SEG (BINARY) referencing its source CT series, atomically.

    Args:
        seg: segmentation on the source series' grid (e.g. read with
            :func:`~lkseg.io.dicom.read_dicom_series`); overlapping layers are supported.
        source_dicom_folder: folder of the source series (when it holds several, the one whose
            SeriesInstanceUID is ``seg.labels.meta["series_uid"]`` is used).
        path: output ``.dcm`` file.
        algorithm_name / algorithm_version: written to the Segment Algorithm Identification.
        series_description: SeriesDescription of the SEG.

    Raises:
        GeometryMismatchError: the segmentation is not on the series' grid.
        InputError: no segment, or the source folder cannot be read.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from lkseg.io.dicom import load_series_headers

    if not seg.segments:
        raise InputError("the segmentation has no segment to write")
    series_uid = seg.labels.meta.get("series_uid") or seg.meta.get("series_uid")
    try:
        geo = load_series_headers(source_dicom_folder, series_uid)
    except InputError as exc:
        if series_uid is None or "no series with" not in str(exc):
            raise
        geo = load_series_headers(source_dicom_folder, None)
    try:
        geo.grid.require_same(seg.grid, "segmentation")
    except GeometryMismatchError as exc:
        raise GeometryMismatchError(f"{exc} (source series {source_dicom_folder})") from exc
    shape = seg.grid.shape
    if seg.num_layers == 1:
        lut = np.zeros(max(s.value for s in seg.segments) + 1, dtype=np.uint16)
        for number, segment in enumerate(seg.segments, start=1):
            lut[segment.value] = number
        labels = seg.labels.array
        pixels = lut[np.minimum(labels, len(lut) - 1)] * (labels < len(lut))
        pixels = pixels.astype(np.uint8 if len(seg.segments) < 256 else np.uint16)
    else:
        pixels = np.zeros((*shape, len(seg.segments)), dtype=bool)
        for number, segment in enumerate(seg.segments):
            pixels[..., number] = seg.layers[segment.layer].array == segment.value
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=str(algorithm_version)
    )
    descriptions = [_description(n, s, algorithm) for n, s in enumerate(seg.segments, start=1)]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = hd.seg.Segmentation(
                source_images=_sanitized(geo.datasets),
                pixel_array=pixels,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=300,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="LiverKidneySeg",
                manufacturer_model_name=algorithm_name,
                software_versions=str(algorithm_version),
                device_serial_number="0",
                series_description=series_description[:64],
                content_label="SEGMENTATION",
            )
        for warning in caught:
            log.debug("highdicom: %s", warning.message)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"cannot build a DICOM SEG from {source_dicom_folder}: {exc}") from exc
    path = Path(path)
    with atomic_path(path) as tmp:
        dataset.save_as(str(tmp))
    log.info("wrote DICOM SEG with %d segment(s) to %s", len(seg.segments), path)
    return path


def _sanitized(datasets: list) -> list:
    """Copies of the source headers with attributes highdicom rejects but readers tolerate fixed
    (an empty SpecificCharacterSet means the default repertoire)."""
    import copy

    out = []
    for ds in datasets:
        ds = copy.copy(ds)
        if "SpecificCharacterSet" in ds and not str(ds.SpecificCharacterSet or "").strip():
            del ds.SpecificCharacterSet
        out.append(ds)
    return out


# -- reading -------------------------------------------------------------------------------------
def _code_of(item) -> Code | None:
    if item is None:
        return None
    return Code(
        str(getattr(item, "CodeValue", "")),
        str(getattr(item, "CodingSchemeDesignator", "")),
        str(getattr(item, "CodeMeaning", "")),
    )


def _first(ds, keyword: str):
    seq = getattr(ds, keyword, None)
    return seq[0] if seq else None


def _segments_of(ds, path: Path) -> list[Segment]:
    import highdicom as hd

    segments: list[Segment] = []
    taken: set[str] = set()
    for item in getattr(ds, "SegmentSequence", []):
        number = int(item.SegmentNumber)
        name = str(getattr(item, "SegmentLabel", "") or f"Segment {number}")
        category = _code_of(_first(item, "SegmentedPropertyCategoryCodeSequence"))
        type_item = _first(item, "SegmentedPropertyTypeCodeSequence")
        type_code = _code_of(type_item)
        modifier = _code_of(_first(type_item, "SegmentedPropertyTypeModifierCodeSequence")) if type_item else None
        region = _code_of(_first(item, "AnatomicRegionSequence"))
        structure = find_structure(name, type_code, region)
        if structure in taken:
            structure = None
        if structure:
            taken.add(structure)
        color = None
        if "RecommendedDisplayCIELabValue" in item:
            try:
                rgb = hd.color.CIELabColor.from_dicom_value(list(item.RecommendedDisplayCIELabValue)).to_rgb(clip=True)
                color = tuple(c / 255.0 for c in rgb)
            except Exception as exc:  # an out-of-gamut or malformed colour is not fatal
                log.debug("%s: segment %d colour not converted (%s)", path, number, exc)
        if color is None:
            color = Segment.for_structure(structure or name, 1).color
        terminology = _terminology(category, type_code, modifier, region)
        if name in {s.name for s in segments}:
            name = f"{name} ({number})"
        segments.append(Segment(name, number, color, structure, 0, terminology, f"Segment_{number}"))
    if not segments:
        raise InputError("the DICOM SEG describes no segment", path)
    return segments


def _terminology(
    category: Code | None, type_code: Code | None, modifier: Code | None, region: Code | None
) -> str | None:
    if category is None or type_code is None:
        return None

    def enc(code: Code | None) -> str:
        return f"{code.scheme}^{code.value}^{code.meaning}" if code else "^^"

    return "~".join(
        [
            "Segmentation category and type - DICOM master list",
            enc(category),
            enc(type_code),
            enc(modifier),
            "Anatomic codes - DICOM master list",
            enc(region),
            "^^",
        ]
    )


def _frame_geometry(ds, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Per-frame positions (F, 3), the row/column unit vectors (2, 3), pixel spacing (row, col)
    and per-frame segment numbers."""
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = list(getattr(ds, "PerFrameFunctionalGroupsSequence", []))
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if len(per_frame) != n_frames:
        raise InputError(f"the SEG has {n_frames} frames but {len(per_frame)} per-frame functional groups", path)

    def lookup(frame, keyword: str, required: bool = True):
        for group in (frame, shared):
            if group is not None and keyword in group:
                return group[keyword].value[0]
        if not required:
            return None
        raise InputError(f"the SEG lacks {keyword} (not a 3D patient-space segmentation)", path)

    orientation = np.array([float(v) for v in lookup(per_frame[0], "PlaneOrientationSequence").ImageOrientationPatient])
    spacing = np.array([float(v) for v in lookup(per_frame[0], "PixelMeasuresSequence").PixelSpacing])
    positions = np.array(
        [[float(v) for v in lookup(frame, "PlanePositionSequence").ImagePositionPatient] for frame in per_frame]
    )
    labelmap = str(getattr(ds, "SegmentationType", "")) == "LABELMAP"
    numbers = [
        0 if labelmap else int(lookup(frame, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        for frame in per_frame
    ]
    axes = np.vstack(
        [orientation[:3] / np.linalg.norm(orientation[:3]), orientation[3:] / np.linalg.norm(orientation[3:])]
    )
    return positions, axes, spacing, numbers


def _own_grid(ds, positions: np.ndarray, axes: np.ndarray, spacing: np.ndarray, shape_rc: tuple[int, int]) -> Grid:
    row_dir, col_dir = axes
    normal = np.cross(row_dir, col_dir)
    along = positions @ normal
    unique = np.unique(np.round(along, 4))
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    measures = _first(shared, "PixelMeasuresSequence") if shared is not None else None
    sk = float(getattr(measures, "SpacingBetweenSlices", 0) or 0) if measures is not None else 0.0
    if sk <= 0:
        sk = float(np.min(np.diff(unique))) if unique.size > 1 else float(getattr(measures, "SliceThickness", 1) or 1)
    first = positions[int(np.argmin(along))]
    nk = round((unique[-1] - unique[0]) / sk) + 1
    direction = np.column_stack([row_dir, col_dir, normal])
    return Grid((nk, shape_rc[0], shape_rc[1]), (float(spacing[1]), float(spacing[0]), sk), tuple(first), direction)


def _frame_to_index(grid: Grid, position: np.ndarray, axes: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """3x3 integer matrix M and offset so that grid index (i, j, k) = offset + M @ (col, row, 1)."""
    inv = np.linalg.inv(grid.direction @ np.diag(grid.spacing))
    base = inv @ (position - np.asarray(grid.origin))
    per_col = inv @ (axes[0] * spacing[1])
    per_row = inv @ (axes[1] * spacing[0])
    mat = np.column_stack([per_col, per_row, base])
    rounded = np.rint(mat)
    if not np.allclose(mat, rounded, atol=2e-2):
        raise GeometryMismatchError(
            f"SEG frame at {np.round(position, 3).tolist()} mm does not lie on the target voxel grid ({grid.describe()})"
        )
    return rounded.astype(np.int64)


def read_dicom_seg(path: str | Path, reference: Volume | Grid | None = None) -> Segmentation:
    """Read a DICOM SEG into a Segmentation on a voxel grid.

    Args:
        path: the SEG file.
        reference: the source image (or its grid): the label map is reconstructed on it, voxel
            for voxel. Without it, the grid spanned by the SEG's frames is used (i = row
            direction, j = column direction, k = slice normal).

    Returns:
        Segmentation whose segment values are the SEG's segment numbers; overlapping segments go
        to extra layers; ``structure`` matched by label or SNOMED code. ``meta``: ``source``,
        ``format`` ("dicom-seg"), ``sop_instance_uid``, ``series_uid``, ``referenced_series_uid``.

    Raises:
        InputError: not a SEG, unreadable, or frames outside the reference grid.
        GeometryMismatchError: frames not on the reference grid's lattice.
    """
    import pydicom

    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise InputError(f"not a readable DICOM file ({exc})", path) from exc
    if str(getattr(ds, "Modality", "")) != "SEG":
        raise InputError(f"is a DICOM {getattr(ds, 'Modality', '?')} object, not a segmentation (SEG)", path)
    segments = _segments_of(ds, path)
    positions, axes, spacing, numbers = _frame_geometry(ds, path)
    try:
        frames = ds.pixel_array
    except Exception as exc:
        raise InputError(f"cannot decode the SEG pixel data ({exc})", path) from exc
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    seg_type = str(getattr(ds, "SegmentationType", "BINARY"))
    if seg_type == "FRACTIONAL":
        threshold = float(getattr(ds, "MaximumFractionalValue", 255)) / 2.0
        frames = frames > threshold
    if reference is None:
        grid = _own_grid(ds, positions, axes, spacing, frames.shape[1:])
    else:
        grid = reference.grid if isinstance(reference, Volume) else reference
    by_number: dict[int, list[np.ndarray]] = {s.value: [] for s in segments}
    size = np.array(grid.size_ijk)
    for f, (position, number) in enumerate(zip(positions, numbers)):
        frame = frames[f]
        rows, cols = np.nonzero(frame)
        if rows.size == 0:
            continue
        mat = _frame_to_index(grid, position, axes, spacing)
        ijk = mat @ np.vstack([cols, rows, np.ones_like(rows)])
        if np.any(ijk < 0) or np.any(ijk >= size[:, None]):
            raise InputError(
                f"frame {f + 1} of the SEG has segment voxels outside the reference grid ({grid.describe()})", path
            )
        flat = np.ravel_multi_index((ijk[2], ijk[1], ijk[0]), grid.shape)
        if seg_type == "LABELMAP":
            values = frame[rows, cols]
            for value in np.unique(values):
                by_number.setdefault(int(value), []).append(flat[values == value])
        else:
            by_number.setdefault(number, []).append(flat)
    items = []
    for segment in segments:
        parts = by_number.get(segment.value, [])
        items.append((segment, np.concatenate(parts) if parts else np.zeros(0, np.int64)))  # duplicates are harmless
    meta = {
        "source": str(path),
        "format": "dicom-seg",
        "sop_instance_uid": str(getattr(ds, "SOPInstanceUID", "")),
        "series_uid": str(getattr(ds, "SeriesInstanceUID", "")),
        "referenced_series_uid": _referenced_series(ds),
    }
    return Segmentation.from_masks(grid, items, meta)


def _referenced_series(ds) -> str | None:
    item = _first(ds, "ReferencedSeriesSequence")
    return str(item.SeriesInstanceUID) if item is not None and "SeriesInstanceUID" in item else None
