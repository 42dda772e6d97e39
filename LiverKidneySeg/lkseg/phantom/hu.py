"""Hounsfield-unit ranges per tissue and contrast phase (``../shared/docs/clinical.md``).

Each phantom draws one value per tissue uniformly inside its range (seeded), so a set of
phantoms covers the inter-patient spread of enhancement instead of one fixed look.

Sources: the HU table of ``clinical.md`` (portal-venous values, unenhanced liver 55-65,
nephrographic cortex ~ medulla 150-200, corticomedullary medulla lower, metastases 40-80, RCC
80-180 with necrosis 20-40, cysts 0-20, fat -120..-80, muscle 40-60, trabecular bone 150-400,
cortical 700-1500); the other phases follow the usual enhancement curves (arterial aorta
~250-350 HU, hepatic veins not yet opacified; unenhanced blood ~40-50 HU).
"""

from __future__ import annotations

import numpy as np

__all__ = ["PHASES", "TISSUE_HU", "sample_hu"]

PHASES = ("portal_venous", "unenhanced", "arterial", "nephrographic")

# (lo, hi) HU per tissue; a tissue missing from a phase uses its portal-venous range.
_PV: dict[str, tuple[float, float]] = {
    "air": (-1000, -1000),
    "skin": (25, 45),
    "fat": (-110, -90),
    "muscle": (45, 58),
    "lung": (-870, -820),
    "heart": (125, 150),
    "bone_cortical": (800, 1150),
    "bone_trabecular": (180, 280),
    "disc": (70, 100),
    "csf": (10, 30),
    "cartilage": (110, 160),
    "liver": (105, 125),
    "portal_vein": (165, 190),
    "hepatic_vein": (150, 175),
    "ivc": (130, 160),
    "aorta": (150, 185),
    "spleen": (112, 128),
    "kidney_cortex": (165, 195),
    "kidney_medulla": (150, 170),
    "urine": (5, 20),
    "sinus_fat": (-100, -70),
    "liver_metastasis": (45, 72),
    "liver_metastasis_rim": (80, 100),
    "rcc": (110, 150),
    "rcc_necrosis": (20, 40),
    "cyst": (3, 15),
    "bile": (5, 18),
    "pancreas": (95, 115),
    "bowel_wall": (95, 120),
    "gut_fluid": (8, 25),
    "oral_contrast": (220, 380),
    "stool": (-60, 40),
    "gas": (-1000, -960),
    "table_shell": (200, 400),
    "table_foam": (-960, -900),
}

_PHASE_OVERRIDES: dict[str, dict[str, tuple[float, float]]] = {
    "unenhanced": {
        "heart": (38, 48),
        "liver": (55, 65),
        "portal_vein": (38, 48),
        "hepatic_vein": (38, 48),
        "ivc": (38, 48),
        "aorta": (38, 50),
        "spleen": (44, 52),
        "kidney_cortex": (30, 38),
        "kidney_medulla": (28, 36),
        "liver_metastasis": (30, 45),
        "liver_metastasis_rim": (40, 50),
        "rcc": (28, 42),
        "rcc_necrosis": (15, 30),
        "pancreas": (38, 48),
        "bowel_wall": (35, 45),
    },
    "arterial": {
        "heart": (200, 280),
        "liver": (68, 82),
        "portal_vein": (120, 160),
        "hepatic_vein": (45, 65),
        "ivc": (60, 100),
        "aorta": (260, 350),
        "spleen": (105, 135),
        "kidney_cortex": (180, 230),
        "kidney_medulla": (85, 110),
        "liver_metastasis": (50, 70),
        "liver_metastasis_rim": (85, 110),
        "rcc": (130, 180),
        "pancreas": (110, 135),
        "bowel_wall": (100, 125),
    },
    "nephrographic": {
        "heart": (130, 150),
        "liver": (100, 115),
        "portal_vein": (145, 170),
        "hepatic_vein": (140, 165),
        "ivc": (135, 160),
        "aorta": (140, 170),
        "spleen": (105, 120),
        "kidney_cortex": (160, 190),
        "kidney_medulla": (158, 188),
        "rcc": (95, 140),
        "pancreas": (90, 110),
    },
}

#: Every phase's full table.
TISSUE_HU: dict[str, dict[str, tuple[float, float]]] = {
    phase: {**_PV, **_PHASE_OVERRIDES.get(phase, {})} for phase in PHASES
}


def sample_hu(phase: str, rng: np.random.Generator) -> dict[str, float]:
    """One HU value per tissue for a phantom, drawn uniformly inside the phase's ranges.

    The kidney medulla of the nephrographic phase is tied to the cortex (they enhance alike).
    """
    table = TISSUE_HU[phase]
    values = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in sorted(table.items())}
    if phase == "nephrographic":
        values["kidney_medulla"] = values["kidney_cortex"] - float(rng.uniform(0, 6))
    return values
