"""The structures LiverKidneySeg knows: names, display names, colours and SNOMED CT terminology.

Label *values* belong to a label map (a model's manifest, a phantom, a reference mask); the
structure *names* below are the stable vocabulary that links them. :data:`PRODUCT_LABELS` is the
label map the automatic engine writes by default.

SNOMED CT codes are from ``../shared/docs/clinical.md`` (and 3D Slicer's default terminology);
categories follow DICOM CID 7150: organs are "Anatomical Structure" (SCT 123037004), tumours and
cysts are "Morphologically Altered Structure" (SCT 49755003) with the organ as anatomic region.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "PRODUCT_LABELS",
    "STRUCTURES",
    "Code",
    "LabelTable",
    "Structure",
    "get_structure",
]


@dataclass(frozen=True)
class Code:
    """A coded concept (DICOM triplet)."""

    value: str
    scheme: str
    meaning: str

    def to_dict(self) -> dict:
        return {"CodeValue": self.value, "CodingSchemeDesignator": self.scheme, "CodeMeaning": self.meaning}


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


ANATOMICAL_STRUCTURE = _sct("123037004", "Anatomical Structure")
ALTERED_STRUCTURE = _sct("49755003", "Morphologically Altered Structure")
TISSUE = _sct("85756007", "Tissue")
RIGHT = _sct("24028007", "Right")
LEFT = _sct("7771000", "Left")


@dataclass(frozen=True)
class Structure:
    """One segmentable structure.

    Attributes:
        name: stable machine name (``"kidney_right"``).
        display: name shown to users and written as the segment name (``"Right kidney"``).
        color: RGB in [0, 1].
        category / type / modifier / region: DICOM SEG / Slicer terminology codes.
        organ: for lesions, the name of the organ that must contain them.
    """

    name: str
    display: str
    color: tuple[float, float, float]
    category: Code
    type: Code
    modifier: Code | None = None
    region: Code | None = None
    organ: str | None = None

    @property
    def color255(self) -> tuple[int, int, int]:
        return tuple(round(c * 255) for c in self.color)  # type: ignore[return-value]

    def terminology_string(self) -> str:
        """Slicer's segment terminology tag (``vtkSegment`` "TerminologyEntry") for this structure.

        Format: ``context~category~type~typeModifier~regionContext~region~regionModifier`` with
        each code as ``scheme^value^meaning``.
        """

        def enc(code: Code | None) -> str:
            return f"{code.scheme}^{code.value}^{code.meaning}" if code else "^^"

        return "~".join(
            [
                "Segmentation category and type - 3D Slicer General Anatomy list",
                enc(self.category),
                enc(self.type),
                enc(self.modifier),
                "Anatomic codes - DICOM master list",
                enc(self.region),
                "^^",
            ]
        )


def _rgb(r: int, g: int, b: int) -> tuple[float, float, float]:
    return (r / 255.0, g / 255.0, b / 255.0)


_LIVER = _sct("10200004", "Liver")
_KIDNEY = _sct("64033007", "Kidney")
_NEOPLASM = _sct("108369006", "Neoplasm")

STRUCTURES: dict[str, Structure] = {
    s.name: s
    for s in [
        Structure("liver", "Liver", _rgb(221, 130, 101), ANATOMICAL_STRUCTURE, _LIVER),
        Structure(
            "liver_tumor", "Liver tumor", _rgb(255, 220, 40), ALTERED_STRUCTURE, _NEOPLASM, region=_LIVER, organ="liver"
        ),
        Structure(
            "kidney_right", "Right kidney", _rgb(185, 102, 83), ANATOMICAL_STRUCTURE, _sct("9846003", "Right kidney")
        ),
        Structure(
            "kidney_left", "Left kidney", _rgb(150, 80, 200), ANATOMICAL_STRUCTURE, _sct("18639004", "Left kidney")
        ),
        Structure(
            "kidney_tumor",
            "Kidney tumor",
            _rgb(0, 200, 80),
            ALTERED_STRUCTURE,
            _NEOPLASM,
            region=_KIDNEY,
            organ="kidney",
        ),
        Structure(
            "kidney_cyst",
            "Kidney cyst",
            _rgb(90, 180, 255),
            ALTERED_STRUCTURE,
            _sct("441457006", "Cyst"),
            region=_KIDNEY,
            organ="kidney",
        ),
        Structure("spleen", "Spleen", _rgb(157, 108, 162), ANATOMICAL_STRUCTURE, _sct("78961009", "Spleen")),
        Structure(
            "portal_vein", "Portal vein", _rgb(0, 151, 206), ANATOMICAL_STRUCTURE, _sct("32764006", "Portal vein")
        ),
        Structure(
            "hepatic_vein", "Hepatic vein", _rgb(0, 90, 180), ANATOMICAL_STRUCTURE, _sct("8993003", "Hepatic vein")
        ),
        Structure("aorta", "Aorta", _rgb(224, 97, 76), ANATOMICAL_STRUCTURE, _sct("15825003", "Aorta")),
        Structure(
            "renal_pelvis",
            "Renal pelvis and sinus",
            _rgb(255, 250, 160),
            ANATOMICAL_STRUCTURE,
            _sct("25990002", "Renal pelvis"),
            region=_KIDNEY,
        ),
        Structure(
            "liver_cyst",
            "Liver cyst",
            _rgb(120, 200, 255),
            ALTERED_STRUCTURE,
            _sct("441457006", "Cyst"),
            region=_LIVER,
            organ="liver",
        ),
        Structure("spine", "Spine", _rgb(241, 214, 145), ANATOMICAL_STRUCTURE, _sct("421060004", "Spine")),
        Structure("body", "Body", _rgb(177, 122, 101), ANATOMICAL_STRUCTURE, _sct("38266002", "Entire body")),
        Structure("resection", "Resection", _rgb(255, 0, 0), ANATOMICAL_STRUCTURE, _LIVER),
    ]
}


def get_structure(name: str) -> Structure:
    """The :class:`Structure` called ``name``; unknown names get a neutral generic entry."""
    if name in STRUCTURES:
        return STRUCTURES[name]
    return Structure(name, name.replace("_", " ").capitalize(), _rgb(128, 174, 128), TISSUE, _sct("85756007", "Tissue"))


class LabelTable(Mapping[int, str]):
    """An immutable mapping label value -> structure name, with helpers.

    Example: ``LabelTable({1: "liver", 2: "liver_tumor"})``. Value 0 is always background and
    may not be listed.
    """

    def __init__(self, mapping: Mapping[int, str]):
        items = {int(k): str(v) for k, v in mapping.items()}
        if 0 in items:
            raise ValueError("label value 0 is background and cannot name a structure")
        if len(set(items.values())) != len(items):
            raise ValueError(f"a structure name is used twice in {items}")
        self._items = dict(sorted(items.items()))

    def __getitem__(self, value: int) -> str:
        return self._items[int(value)]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"LabelTable({self._items})"

    def value_of(self, name: str) -> int:
        for value, structure in self._items.items():
            if structure == name:
                return value
        raise KeyError(f"no label named {name!r} in {self._items}")

    def structures(self) -> dict[int, Structure]:
        return {value: get_structure(name) for value, name in self._items.items()}

    def to_json(self) -> dict[str, str]:
        return {str(k): v for k, v in self._items.items()}


#: The label map written by the automatic engine.
PRODUCT_LABELS = LabelTable(
    {
        1: "liver",
        2: "liver_tumor",
        3: "kidney_right",
        4: "kidney_left",
        5: "kidney_tumor",
        6: "kidney_cyst",
        7: "spleen",
    }
)
