"""Seeded synthetic portal-venous abdominal CT phantoms with exact label maps.

Used by the tests, the demo, the benchmarks and to train the demo models::

    from lkseg.phantom import PhantomConfig, generate_phantom, write_phantom

    ph = generate_phantom(PhantomConfig(seed=3))
    ph.image            # int16 HU Volume
    ph.labels           # uint8 detailed label map (ph.label_table)
    ph.product_labels() # PRODUCT_LABELS values (liver, tumours, kidneys, cyst, spleen)
    ph.volumes_ml       # true volumes (mL)
    write_phantom(ph, "out/")

The anatomy is defined in patient LPS millimetres and sampled onto any grid (anisotropic,
flipped, permuted, oblique), so every grid shows the same anatomy at the same physical place.
"""

from __future__ import annotations

from lkseg.phantom.config import KIDNEY_TUMOR_KINDS, PhantomConfig, direction_from_orientation, oblique_direction
from lkseg.phantom.generator import Phantom, generate_phantom
from lkseg.phantom.hu import PHASES, TISSUE_HU
from lkseg.phantom.tables import DETAILED, DETAILED_LABELS, PRODUCT_FROM_DETAILED
from lkseg.phantom.writer import write_phantom

__all__ = [
    "DETAILED",
    "DETAILED_LABELS",
    "KIDNEY_TUMOR_KINDS",
    "PHASES",
    "PRODUCT_FROM_DETAILED",
    "TISSUE_HU",
    "Phantom",
    "PhantomConfig",
    "direction_from_orientation",
    "generate_phantom",
    "oblique_direction",
    "write_phantom",
]
