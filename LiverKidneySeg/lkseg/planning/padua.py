"""PADUA score of a kidney tumour from the same geometry as R.E.N.A.L.

Ficarra V, Novara G, Secco S, et al. "Preoperative aspects and dimensions used for an
anatomical (PADUA) classification of renal tumours in patients who are candidates for
nephron-sparing surgery". Eur Urol 2009;56:786-793:

==========================  ==============================  =====
component                   categories                      score
==========================  ==============================  =====
longitudinal (polar)        superior / inferior ; middle    1 ; 2
exophytic rate              >= 50% ; < 50% ; endophytic     1 ; 2 ; 3
renal rim                   lateral ; medial                1 ; 2
renal sinus                 not involved ; involved         1 ; 2
urinary collecting system   not involved ; involved         1 ; 2
tumour size                 <= 4 cm ; 4.1-7 cm ; > 7 cm     1 ; 2 ; 3
==========================  ==============================  =====

Sum 6-7 low, 8-9 intermediate, >= 10 high risk; suffix a/p for the anterior/posterior face.

Our operationalisation (stated in the report): polar = "middle" when more than half of the
tumour lies between the polar lines of R.E.N.A.L.'s L (the sinus lips); exophytic rate = E's
fraction; rim = "medial" when more than half of the tumour lies medial to the kidney's
sagittal plane through its centroid (normal RAS x; the kidney's long axis taken as
cranio-caudal); sinus involved = the tumour touches the renal sinus used for N (segment or
derived, gap 0); collecting system involved = the tumour touches a ``collecting_system`` or
``renal_pelvis`` segment — without one (a derived sinus cannot tell urine from sinus fat) it is
*not available*, and so is the total.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PaduaScore", "padua_risk", "padua_size"]


def padua_size(max_diameter_mm: float) -> int:
    """<= 4 cm -> 1, 4.1-7 cm -> 2, > 7 cm -> 3 (Ficarra et al. 2009)."""
    if max_diameter_mm <= 40.0:
        return 1
    return 2 if max_diameter_mm <= 70.0 else 3


def padua_risk(total: int) -> str:
    """6-7 low, 8-9 intermediate, >= 10 high (Ficarra et al. 2009)."""
    if total <= 7:
        return "low"
    return "intermediate" if total <= 9 else "high"


@dataclass
class PaduaScore:
    """PADUA components (None = not available, see ``notes``)."""

    polar: int | None = None
    exophytic: int | None = None
    rim: int | None = None
    sinus: int | None = None
    collecting_system: int | None = None
    size: int | None = None
    face: str | None = None
    medial_fraction: float | None = None
    total: int | None = None
    risk: str | None = None
    notation: str | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def finish(self) -> None:
        parts = {k: getattr(self, k) for k in ("polar", "exophytic", "rim", "sinus", "collecting_system", "size")}
        missing = [k for k, v in parts.items() if v is None]
        if missing:
            self.notes["total"] = f"not available: component(s) {', '.join(missing)} not available"
            return
        self.total = int(sum(parts.values()))  # type: ignore[arg-type]
        self.risk = padua_risk(self.total)
        self.notation = f"{self.total}{self.face or ''}"

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["not_available"] = out.pop("notes")
        return out
