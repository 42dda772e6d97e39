"""A segmentation: label-map layers on one voxel grid plus the metadata of each segment.

:class:`Segmentation` is what Slicer calls a segmentation with a *binary labelmap* master
representation, and what ``.seg.nrrd`` and DICOM SEG files hold:

* ``labels`` (layer 0) is an integer :class:`~lkseg.volume.Volume` in **ZYX** order on the image
  grid; each :class:`Segment` owns the voxels of its layer that equal its ``value``.
* Segments that overlap cannot share one label map; they live in further layers
  (``extra_layers``, same grid). ``Segment.layer`` says which layer holds a segment, exactly like
  ``Segment{i}_Layer`` in a ``.seg.nrrd``. Most segmentations (every product label map) have one
  layer. :meth:`Segmentation.layer_stack` gives all layers as one ``(L, Z, Y, X)`` array.
* Segment ``name`` is the display name (``"Right kidney"``), ``structure`` the machine name of
  :mod:`lkseg.labels` (``"kidney_right"``) when known; colour and terminology follow the structure.

Segmentations are immutable values: editing helpers (:meth:`Segmentation.with_segment`,
:meth:`Segmentation.without_segment`) return new objects.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from lkseg.errors import InputError
from lkseg.labels import STRUCTURES, TISSUE, Code, LabelTable, Structure, get_structure
from lkseg.volume import Grid, Volume

__all__ = [
    "Segment",
    "Segmentation",
    "find_structure",
    "parse_terminology",
]

log = logging.getLogger(__name__)

OverlapMode = Literal["replace", "keep", "layer"]

#: Colour of segments whose structure is unknown (Slicer's default "tissue" green).
GENERIC_COLOR = (128 / 255.0, 174 / 255.0, 128 / 255.0)


def _norm(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def find_structure(
    name: str | None = None, type_code: Code | None = None, region_code: Code | None = None
) -> str | None:
    """The machine name of the :data:`~lkseg.labels.STRUCTURES` entry matching a segment.

    Matches first by name (machine name or display name, case-, space- and underscore-insensitive),
    then by SNOMED type code (and anatomic region code when the type is ambiguous, e.g.
    "Neoplasm" in the liver vs the kidney). Returns None when nothing matches.
    """
    if name:
        key = _norm(name)
        for structure in STRUCTURES.values():
            if key in (_norm(structure.name), _norm(structure.display)):
                return structure.name
    if type_code is not None and type_code.value:
        candidates = [
            s for s in STRUCTURES.values() if s.type.value == type_code.value and s.type.scheme == type_code.scheme
        ]
        if region_code is not None and region_code.value:
            with_region = [s for s in candidates if s.region is not None and s.region.value == region_code.value]
            candidates = with_region or candidates
        else:
            candidates = [s for s in candidates if s.region is None] or candidates
        if candidates:
            return candidates[0].name
    return None


def parse_terminology(entry: str | None) -> dict[str, Code | None]:
    """Parse Slicer's ``TerminologyEntry`` string into its codes.

    Format: ``context~category~type~typeModifier~regionContext~region~regionModifier``, each code
    ``scheme^value^meaning``. Returns a dict with keys ``category``, ``type``, ``modifier``,
    ``region``, ``region_modifier`` (None where empty); an empty dict for a malformed entry.
    """
    if not entry:
        return {}
    parts = entry.split("~")
    if len(parts) < 3:
        return {}

    def code(index: int) -> Code | None:
        if index >= len(parts):
            return None
        fields = parts[index].split("^")
        if len(fields) < 3 or not fields[1]:
            return None
        return Code(fields[1], fields[0], "^".join(fields[2:]))

    return {"category": code(1), "type": code(2), "modifier": code(3), "region": code(5), "region_modifier": code(6)}


def _check_color(color: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(c) for c in color)
    if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
        raise InputError(f"a segment colour must be 3 numbers in [0, 1] (RGB), got {color!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Segment:
    """Metadata of one segment.

    Attributes:
        name: display name, written as the segment name in Slicer and DICOM SEG (``"Liver"``).
        value: the label value of the segment's voxels in its layer (1..65535).
        color: RGB in [0, 1].
        structure: machine name from :data:`lkseg.labels.STRUCTURES` (``"liver"``) or None.
        layer: index of the label-map layer that holds the segment (0 unless segments overlap).
        terminology: Slicer ``TerminologyEntry`` string; defaults to the structure's.
        segment_id: Slicer segment ID (``Segment{i}_ID``); defaults to ``"Segment_<value>"``.
    """

    name: str
    value: int
    color: tuple[float, float, float] = GENERIC_COLOR
    structure: str | None = None
    layer: int = 0
    terminology: str | None = None
    segment_id: str | None = None

    def __post_init__(self) -> None:
        if not str(self.name).strip():
            raise InputError("a segment needs a non-empty name")
        value = int(self.value)
        if not 1 <= value <= 65535:
            raise InputError(f"segment {self.name!r}: label value must be 1..65535, got {self.value}")
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "layer", int(self.layer))
        if self.layer < 0:
            raise InputError(f"segment {self.name!r}: layer must be >= 0, got {self.layer}")
        object.__setattr__(self, "color", _check_color(self.color))
        if self.structure is not None and self.terminology is None:
            object.__setattr__(self, "terminology", get_structure(self.structure).terminology_string())
        if self.segment_id is None:
            object.__setattr__(self, "segment_id", f"Segment_{value}")

    @classmethod
    def for_structure(cls, structure: str, value: int, layer: int = 0) -> Segment:
        """A segment named, coloured and coded after a structure of :mod:`lkseg.labels`.

        Unknown structure names keep the given name and get a generic tissue colour.
        """
        known = find_structure(structure)
        if known is None:
            return cls(structure, value, GENERIC_COLOR, None, layer)
        s = STRUCTURES[known]
        return cls(s.display, value, s.color, s.name, layer)

    @property
    def structure_info(self) -> Structure:
        """The :class:`~lkseg.labels.Structure` (a generic one when ``structure`` is None)."""
        return get_structure(self.structure or self.name)

    def codes(self) -> dict[str, Code | None]:
        """DICOM codes ``category``, ``type``, ``modifier``, ``region``: from the structure when
        known, else from the terminology string, else generic "Tissue"."""
        if self.structure is not None:
            s = get_structure(self.structure)
            return {"category": s.category, "type": s.type, "modifier": s.modifier, "region": s.region}
        parsed = parse_terminology(self.terminology)
        if parsed.get("category") and parsed.get("type"):
            return {k: parsed.get(k) for k in ("category", "type", "modifier", "region")}
        return {"category": TISSUE, "type": TISSUE, "modifier": None, "region": None}


def _label_dtype(max_value: int) -> type:
    return np.uint8 if max_value < 256 else np.uint16


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Label-map layers on one grid plus segment metadata.

    Attributes:
        labels: layer 0, an integer Volume (ZYX) on the image grid.
        segments: the segments, in display order; names are unique.
        extra_layers: further layers (Volumes on the same grid) for overlapping segments.
        meta: free-form metadata (source file, DICOM identifiers...).
    """

    labels: Volume
    segments: tuple[Segment, ...]
    extra_layers: tuple[Volume, ...] = ()
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))
        object.__setattr__(self, "extra_layers", tuple(self.extra_layers))
        for layer in self.layers:
            if not (np.issubdtype(layer.dtype, np.integer) or layer.dtype == np.bool_):
                raise InputError(f"segmentation layers must be integer label maps, got {layer.dtype}")
            if layer is not self.labels:
                self.labels.grid.require_same(layer.grid, "segmentation layer")
        names: set[str] = set()
        structures: set[str] = set()
        slots: set[tuple[int, int]] = set()
        for seg in self.segments:
            if seg.name in names:
                raise InputError(f"two segments are named {seg.name!r}")
            names.add(seg.name)
            if seg.structure is not None:
                if seg.structure in structures:
                    raise InputError(f"two segments claim the structure {seg.structure!r}")
                structures.add(seg.structure)
            if seg.layer >= len(self.layers):
                raise InputError(
                    f"segment {seg.name!r} is on layer {seg.layer} but there are {len(self.layers)} layer(s)"
                )
            if (seg.layer, seg.value) in slots:
                raise InputError(f"segment {seg.name!r}: label value {seg.value} is used twice in layer {seg.layer}")
            slots.add((seg.layer, seg.value))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_label_volume(
        cls, labels: Volume, table: LabelTable | Mapping[int, str], *, drop_empty: bool = False
    ) -> Segmentation:
        """Wrap a label map (ZYX integer Volume) with one segment per entry of ``table``.

        Args:
            labels: the label map.
            table: label value -> structure machine name (``"liver"``), display name, or any
                other name (kept as the segment name, generic colour).
            drop_empty: leave out table entries with no voxel.

        Values present in ``labels`` but missing from ``table`` get a generic segment
        ``"Label <value>"`` (and a logged warning), so no voxel is lost.
        """
        arr = labels.array
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise InputError(f"a label map must hold integers, got {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise InputError(f"a label map cannot hold negative values (min {arr.min()})")
        counts = np.bincount(arr.reshape(-1).astype(np.int64, copy=False)) if arr.size else np.zeros(1, np.int64)
        present = {int(v) for v in np.nonzero(counts)[0] if v != 0}
        segments: list[Segment] = []
        used_structures: set[str] = set()
        for value, name in sorted((int(k), str(v)) for k, v in table.items()):
            if drop_empty and value not in present:
                continue
            seg = Segment.for_structure(name, value)
            if seg.structure in used_structures:
                seg = Segment(name, value, seg.color)
            used_structures.add(seg.structure or "")
            segments.append(seg)
        missing = sorted(present - {int(k) for k in table})
        if missing:
            log.warning("label values %s are not in the label table; kept as generic segments", missing)
            taken = {s.name for s in segments}
            for value in missing:
                name = f"Label {value}"
                while name in taken:
                    name += "'"
                segments.append(Segment(name, value))
                taken.add(name)
        dtype = _label_dtype(max([s.value for s in segments], default=0))
        return cls(labels.with_array(arr.astype(dtype, copy=False)), tuple(segments), meta=dict(labels.meta))

    @classmethod
    def from_masks(
        cls, grid: Grid, items: Iterable[tuple[Segment, np.ndarray]], meta: dict | None = None
    ) -> Segmentation:
        """Build a segmentation from one boolean ZYX mask (or flat voxel indices) per segment.

        Each segment keeps its ``value``; layers are assigned here: a segment goes to the first
        layer where neither its voxels nor its value collide with earlier segments (so
        non-overlapping segments share layer 0, overlapping ones get further layers).

        Args:
            grid: the voxel grid of every mask.
            items: ``(segment, mask)`` pairs; ``mask`` is a bool array of ``grid.shape`` or a 1D
                integer array of flat (C-order, ZYX) voxel indices.
            meta: metadata of the result.
        """
        items = list(items)
        max_value = max([s.value for s, _ in items], default=0)
        dtype = _label_dtype(max_value)
        layers: list[np.ndarray] = []
        used_values: list[set[int]] = []
        segments: list[Segment] = []
        n = int(np.prod(grid.shape))
        for seg, mask in items:
            flat = _flat_indices(mask, grid.shape, seg.name)
            if flat.size and (flat.min() < 0 or flat.max() >= n):
                raise InputError(f"segment {seg.name!r}: voxel index outside the grid")
            for index, layer in enumerate(layers):
                if seg.value not in used_values[index] and not np.any(layer[flat]):
                    break
            else:
                layers.append(np.zeros(n, dtype=dtype))
                used_values.append(set())
                index = len(layers) - 1
            layers[index][flat] = seg.value
            used_values[index].add(seg.value)
            segments.append(replace(seg, layer=index))
        if not layers:
            layers.append(np.zeros(n, dtype=dtype))
        vols = [Volume(layer.reshape(grid.shape), grid, dict(meta or {})) for layer in layers]
        return cls(vols[0], tuple(segments), tuple(vols[1:]), dict(meta or {}))

    # -- access -----------------------------------------------------------------------------------
    @property
    def grid(self) -> Grid:
        return self.labels.grid

    @property
    def layers(self) -> tuple[Volume, ...]:
        """All label-map layers: ``(labels, *extra_layers)``."""
        return (self.labels, *self.extra_layers)

    @property
    def num_layers(self) -> int:
        return 1 + len(self.extra_layers)

    def layer_stack(self) -> np.ndarray:
        """All layers as one ``(L, Z, Y, X)`` array (a copy)."""
        dtype = np.result_type(*[layer.dtype for layer in self.layers])
        return np.stack([layer.array.astype(dtype, copy=False) for layer in self.layers])

    @property
    def names(self) -> list[str]:
        """Segment (display) names, in order."""
        return [s.name for s in self.segments]

    def __len__(self) -> int:
        return len(self.segments)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key) is not None

    def _find(self, key: str) -> Segment | None:
        for seg in self.segments:
            if seg.name == key:
                return seg
        for seg in self.segments:
            if seg.structure == key:
                return seg
        norm = _norm(key)
        for seg in self.segments:
            if _norm(seg.name) == norm:
                return seg
        return None

    def segment(self, key: str) -> Segment:
        """The segment whose name or structure is ``key`` (exact first, then case-insensitive).

        Raises:
            InputError: no such segment (the message lists the names).
        """
        seg = self._find(key)
        if seg is None:
            raise InputError(f"no segment {key!r}; segments are {self.names}")
        return seg

    def mask(self, key: str) -> np.ndarray:
        """Boolean ZYX mask of the segment named ``key`` (display name or structure name)."""
        seg = self.segment(key)
        return self.layers[seg.layer].array == seg.value

    def voxel_count(self, key: str) -> int:
        return int(np.count_nonzero(self.mask(key)))

    def volume_ml(self, key: str) -> float:
        """Volume of a segment in mL."""
        return self.voxel_count(key) * self.grid.voxel_volume_ml

    # -- flattening ------------------------------------------------------------------------------
    def _flat_values(self) -> dict[str, int]:
        values = [s.value for s in self.segments]
        if len(set(values)) == len(values):
            return {s.name: s.value for s in self.segments}
        return {s.name: i + 1 for i, s in enumerate(self.segments)}

    def label_table(self) -> LabelTable:
        """Value -> structure machine name (or segment name) of :meth:`to_label_volume`'s map."""
        flat = self._flat_values()
        return LabelTable({flat[s.name]: s.structure or s.name for s in self.segments})

    def to_label_volume(self) -> Volume:
        """One label map (ZYX Volume, uint8 or uint16) holding every segment.

        With one layer this is ``labels`` itself. With several, layers are painted in order
        (a voxel in overlapping segments gets the segment of the highest layer); segment values
        are kept when unique across layers, else renumbered 1..N in segment order (see
        :meth:`label_table`).
        """
        flat = self._flat_values()
        if self.num_layers == 1 and all(flat[s.name] == s.value for s in self.segments):
            dtype = _label_dtype(max(flat.values(), default=0))
            return self.labels.with_array(self.labels.array.astype(dtype, copy=False))
        out = np.zeros(self.grid.shape, dtype=_label_dtype(max(flat.values(), default=0)))
        for index, layer in enumerate(self.layers):
            for seg in self.segments:
                if seg.layer == index:
                    out[layer.array == seg.value] = flat[seg.name]
        return self.labels.with_array(out)

    def flattened(self) -> Segmentation:
        """The same segments in a single layer (overlaps resolved as in :meth:`to_label_volume`)."""
        if self.num_layers == 1:
            return self
        flat = self._flat_values()
        segments = tuple(replace(s, value=flat[s.name], layer=0) for s in self.segments)
        return Segmentation(self.to_label_volume(), segments, (), dict(self.meta))

    # -- editing -----------------------------------------------------------------------------------
    def _next_value(self) -> int:
        used = {s.value for s in self.segments}
        value = 1
        while value in used:
            value += 1
        return value

    def with_segment(
        self,
        name: str,
        mask: np.ndarray | Volume,
        *,
        color: Sequence[float] | None = None,
        value: int | None = None,
        overlap: OverlapMode = "replace",
    ) -> Segmentation:
        """Add a segment, or replace the voxels of an existing one, from a boolean ZYX mask.

        Args:
            name: segment name or structure machine name (``"liver_tumor"`` becomes the segment
                "Liver tumor" with that structure's colour and codes). An existing segment with
                this name or structure is replaced (its old voxels are cleared; value, colour and
                layer kept unless given).
            mask: bool array of the grid's ZYX shape, or a Volume on the same grid.
            color: RGB in [0, 1]; default: the structure's or the existing segment's.
            value: label value; default: the existing one or the smallest unused value.
            overlap: where the mask covers other segments of the same layer: ``"replace"`` paints
                over them (they lose those voxels, label-map semantics), ``"keep"`` leaves them and
                paints only background, ``"layer"`` keeps everything by putting the segment on the
                first layer where it overlaps nothing (a new layer if needed).
        """
        if isinstance(mask, Volume):
            self.grid.require_same(mask.grid, f"mask of segment {name!r}")
            mask = mask.array
        mask = np.asarray(mask)
        if mask.shape != self.grid.shape:
            raise InputError(
                f"mask of segment {name!r} has shape {mask.shape}, the segmentation {self.grid.shape} (ZYX)"
            )
        mask = mask.astype(bool, copy=False)
        if overlap not in ("replace", "keep", "layer"):
            raise ValueError(f"overlap must be 'replace', 'keep' or 'layer', got {overlap!r}")
        old = self._find(name)
        template = Segment.for_structure(name, 1)
        if old is not None:
            new = replace(
                old,
                value=old.value if value is None else value,
                color=old.color if color is None else tuple(color),
            )
        else:
            if template.structure is not None and template.structure in {s.structure for s in self.segments}:
                template = Segment(name, 1)
            new = Segment(
                template.name,
                self._next_value() if value is None else value,
                template.color if color is None else tuple(color),
                template.structure,
            )
        arrays = [layer.array.copy() for layer in self.layers]
        others = [s for s in self.segments if s is not old]
        if old is not None:
            arrays[old.layer][arrays[old.layer] == old.value] = 0
        target = old.layer if old is not None else 0
        if overlap == "layer":
            target = self._free_layer(arrays, others, mask, new.value, prefer=target)
            if target == len(arrays):
                arrays.append(np.zeros(self.grid.shape, dtype=arrays[0].dtype))
        elif any(s.layer == target and s.value == new.value for s in others):
            raise InputError(f"label value {new.value} is already used by another segment in layer {target}")
        dtype = np.result_type(arrays[target].dtype, _label_dtype(new.value))
        layer = arrays[target].astype(dtype, copy=False)
        paint = mask if overlap != "keep" else mask & (layer == 0)
        layer[paint] = new.value
        arrays[target] = layer
        new = replace(new, layer=target)
        segments = [new if s is old else s for s in self.segments] if old is not None else [*self.segments, new]
        vols = [self.labels.with_array(a) for a in arrays]
        return Segmentation(vols[0], tuple(segments), tuple(vols[1:]), dict(self.meta))

    @staticmethod
    def _free_layer(arrays: list[np.ndarray], others: list[Segment], mask: np.ndarray, value: int, prefer: int) -> int:
        order = [prefer] + [i for i in range(len(arrays)) if i != prefer]
        for index in order:
            if any(s.layer == index and s.value == value for s in others):
                continue
            if not np.any(arrays[index][mask]):
                return index
        return len(arrays)

    def without_segment(self, key: str) -> Segmentation:
        """A copy without the segment ``key`` (its voxels become background; empty extra layers
        are dropped)."""
        seg = self.segment(key)
        arrays = [layer.array for layer in self.layers]
        cleared = arrays[seg.layer].copy()
        cleared[cleared == seg.value] = 0
        arrays[seg.layer] = cleared
        segments = [s for s in self.segments if s is not seg]
        keep = [0] + [i for i in range(1, len(arrays)) if any(s.layer == i for s in segments)]
        remap = {old: new for new, old in enumerate(keep)}
        segments = [replace(s, layer=remap[s.layer]) for s in segments]
        vols = [self.labels.with_array(arrays[i]) for i in keep]
        return Segmentation(vols[0], tuple(segments), tuple(vols[1:]), dict(self.meta))

    def to_grid(self, grid: Grid, *, resample: bool = False) -> Segmentation:
        """Place this segmentation on an image grid with :func:`lkseg.io.placement.place_label_map`.

        Grids sharing a voxel lattice (a ``.seg.nrrd`` that Slicer cropped to the segments'
        extent, axes permuted or flipped) are placed voxel for voxel; outside voxels must be
        background. Other grids are refused unless ``resample`` (nearest neighbour, noted in each
        layer's ``meta["grid_placement"]``).

        Raises:
            GeometryMismatchError: the grids do not share a lattice (and not ``resample``), or
                segment voxels fall outside ``grid``.
        """
        if self.grid.same_as(grid):
            return self
        from lkseg.io.placement import place_label_map

        layers = [
            place_label_map(layer, grid, resample=resample, partial=True, what="segmentation") for layer in self.layers
        ]
        meta = {**self.meta, "grid_placement": layers[0].meta["grid_placement"]}
        return Segmentation(layers[0], self.segments, tuple(layers[1:]), meta)


def _flat_indices(mask: np.ndarray, shape: tuple[int, int, int], name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 1 and np.issubdtype(mask.dtype, np.integer):
        return mask.astype(np.int64, copy=False)
    if mask.shape != tuple(shape):
        raise InputError(f"mask of segment {name!r} has shape {mask.shape}, the grid {tuple(shape)} (ZYX)")
    return np.flatnonzero(mask.astype(bool, copy=False))
