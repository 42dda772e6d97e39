"""The phantom's detailed label table and its mapping to the product labels.

Names reuse :data:`lkseg.labels.STRUCTURES` where the meaning is the same (``portal_vein``,
``hepatic_vein``, ``liver_tumor``, ``kidney_tumor``, ``kidney_cyst``, ``spleen``, ``aorta``,
``spine``, ``body``). A name always means one thing: the detailed liver label is
``liver_parenchyma`` (no vessels), because ``liver`` is the product structure (parenchyma plus
intrahepatic vessels, tumours excluded, as for liver volumetry).
"""

from __future__ import annotations

from lkseg.labels import PRODUCT_LABELS, LabelTable

__all__ = ["DETAILED", "DETAILED_LABELS", "PRODUCT_FROM_DETAILED", "product_lut"]

#: name -> value of the detailed label map (uint8).
DETAILED: dict[str, int] = {
    "body": 1,  # skin and other soft tissue not labelled otherwise
    "subcutaneous_fat": 2,
    "visceral_fat": 3,  # intra- and retroperitoneal fat, renal sinus fat is in *_pelvis
    "muscle": 4,  # abdominal wall, diaphragm, psoas, paraspinal, quadratus lumborum
    "spine": 5,  # cortical bone of the vertebrae and their posterior elements
    "spine_trabecular": 6,  # cancellous bone of the vertebral bodies
    "intervertebral_disc": 7,
    "spinal_canal": 8,
    "rib": 9,  # ribs and costal cartilage
    "lung": 10,
    "heart": 11,
    "liver_parenchyma": 12,
    "portal_vein": 13,  # intrahepatic portal vein branches
    "hepatic_vein": 14,
    "liver_tumor": 15,
    "gallbladder": 16,
    "kidney_right_cortex": 17,
    "kidney_right_medulla": 18,
    "kidney_right_pelvis": 19,  # renal pelvis and sinus
    "kidney_left_cortex": 20,
    "kidney_left_medulla": 21,
    "kidney_left_pelvis": 22,
    "kidney_tumor": 23,
    "kidney_cyst": 24,
    "spleen": 25,
    "aorta": 26,
    "inferior_vena_cava": 27,
    "portal_vein_extrahepatic": 28,  # main portal, splenic and superior mesenteric veins
    "stomach": 29,
    "bowel": 30,
    "pancreas": 31,
    "pelvic_bone": 32,
    "renal_vein": 33,
    "table": 34,  # the CT table (not anatomy)
}

DETAILED_LABELS = LabelTable({v: k for k, v in DETAILED.items()})

#: product structure -> detailed structures it is made of.
PRODUCT_FROM_DETAILED: dict[str, tuple[str, ...]] = {
    "liver": ("liver_parenchyma", "portal_vein", "hepatic_vein"),
    "liver_tumor": ("liver_tumor",),
    "kidney_right": ("kidney_right_cortex", "kidney_right_medulla", "kidney_right_pelvis"),
    "kidney_left": ("kidney_left_cortex", "kidney_left_medulla", "kidney_left_pelvis"),
    "kidney_tumor": ("kidney_tumor",),
    "kidney_cyst": ("kidney_cyst",),
    "spleen": ("spleen",),
}


def product_lut():
    """uint8 lookup table (256,) from detailed label values to :data:`PRODUCT_LABELS` values."""
    import numpy as np

    lut = np.zeros(256, dtype=np.uint8)
    for name, parts in PRODUCT_FROM_DETAILED.items():
        value = PRODUCT_LABELS.value_of(name)
        for part in parts:
            lut[DETAILED[part]] = value
    return lut
