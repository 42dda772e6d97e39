"""Sampling one phantom's anatomy and listing its layers in painting order.

Every random choice is drawn from per-component streams of ``numpy.random.SeedSequence(seed)``,
so the same seed always gives the same anatomy. All geometry is LPS mm relative to the body
centre (+x patient left, +y posterior, +z superior): the liver and the right kidney lie at
negative x, the spleen and the left kidney at positive x.

Painting order (later layers win; ``only_over`` keeps organs from overwriting each other):
body wall -> thorax -> muscles -> spine -> great vessels -> kidneys -> spleen -> liver ->
gallbladder -> intrahepatic veins -> pancreas and portal system -> gut -> ribs, pelvis ->
liver tumours -> kidney cyst -> kidney tumour.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from lkseg.phantom import body as B
from lkseg.phantom import gi, organs, vessels
from lkseg.phantom.config import PhantomConfig
from lkseg.phantom.hu import TISSUE_HU, sample_hu
from lkseg.phantom.lesions import Lesion, kidney_cyst, kidney_tumor, liver_tumors
from lkseg.phantom.raster import Layer
from lkseg.phantom.shapes import (
    F32,
    Capsule,
    Ellipsoid,
    HalfSpace,
    Intersect,
    Offset,
    Shape,
    Subtract,
    Union,
    rotation_from_axes,
    tube,
    wave_argument,
)
from lkseg.phantom.tables import DETAILED as L

__all__ = ["Anatomy", "build_anatomy"]

log = logging.getLogger(__name__)

_STREAMS = (
    "hu",
    "body",
    "kidneys",
    "vessels",
    "gut",
    "spleen",
    "liver",
    "trees",
    "lesions",
    "bones",
    "textures",
    "table",
)
_FAT = (L["visceral_fat"],)
_SOFT = (L["visceral_fat"], L["muscle"])


@dataclass
class Anatomy:
    """A sampled phantom anatomy: layers to paint (body frame), lesions, and facts for the JSON."""

    body: B.BodyParams
    layers: list[Layer]
    lesions: list[Lesion]
    hu: dict[str, float]
    meta: dict = field(default_factory=dict)
    #: vessel landmarks (LPS mm, body frame) for the Couinaud ground truth: ``ivc`` (its axis
    #: points), ``portal_bifurcation``, ``hepatic_veins`` (name -> trunk centreline)
    vessel_landmarks: dict = field(default_factory=dict)


class _Var:
    """Uniform draws shrunk toward the middle of their range by ``variation`` (0 = the mean)."""

    def __init__(self, rng: np.random.Generator, variation: float):
        self.rng, self.v = rng, float(variation)

    def u(self, lo: float, hi: float) -> float:
        mid = 0.5 * (lo + hi)
        return float(mid + self.v * (self.rng.uniform(lo, hi) - mid))


class _Outside(Shape):
    """Complement of a shape (inside where the shape is outside)."""

    def __init__(self, shape: Shape):
        self.shape = shape
        self.separable = shape.separable

    def __call__(self, X, Y, Z):
        return -self.shape(X, Y, Z)


def _sample_body(rng: np.random.Generator, variation: float) -> B.BodyParams:
    v = _Var(rng, variation)
    height = v.u(155, 192)
    bmi = v.u(19, 33)
    weight = bmi * (height / 100) ** 2
    t_sc = 6 + (bmi - 19) * 1.8 * v.u(0.8, 1.2)
    t_m = v.u(8, 13)
    extra = max(0.0, bmi - 24)
    cav_a = v.u(112, 135) * (height / 175) ** 0.5 + extra * 1.0
    cav_ant = v.u(72, 92) + extra * 2.0
    spine_y0 = v.u(22, 36)
    dome_r = v.u(95, 115)
    return B.BodyParams(
        a=cav_a + 1.25 * t_sc + 1.1 * t_m,
        b_ant=cav_ant + 1.3 * t_sc + t_m,
        b_post=spine_y0 + v.u(72, 82) + 0.7 * t_sc,
        p=v.u(2.0, 2.5),
        taper=0.0,
        t_sc=t_sc,
        t_m=t_m,
        spine_y0=spine_y0,
        z_l3=v.u(-75, -55),
        kappa=v.u(0.15, 0.45),
        vb_ax=v.u(21, 26),
        vb_ay=v.u(15, 18),
        vb_period=v.u(32, 37),
        disc_h=v.u(7, 10),
        vb_phase=float(rng.uniform(0, 35)),
        dome_r=dome_r,
        dome_l=dome_r - v.u(8, 22),
        height_cm=height,
        weight_kg=weight,
    )


def _texture(base: float, amp: float, rng: np.random.Generator, wavelength: float = 60.0):
    """HU function: ``base`` with a smooth +-``amp`` HU modulation (tissue heterogeneity)."""
    d = rng.normal(size=3)
    w = d / np.linalg.norm(d) * (2 * np.pi / wavelength)
    ph = float(rng.uniform(0, 2 * np.pi))
    b32, a32 = F32(base), F32(amp)

    def textured(X, Y, Z, level):
        return b32 + a32 * np.sin(wave_argument(X, Y, Z, w, ph))

    return textured


def _two_zone(outer_hu: float, inner_hu: float, depth: float):
    """HU function: ``outer_hu`` within ``depth`` mm of the surface, ``inner_hu`` deeper."""
    o32, i32, d32 = F32(outer_hu), F32(inner_hu), F32(-depth)

    def zoned(X, Y, Z, level):
        return np.where(level > d32, o32, i32)

    return zoned


def _muscles(body: B.BodyParams, v: _Var) -> tuple[list[Capsule], list[Capsule], list[Capsule]]:
    """Psoas, quadratus lumborum and paraspinal muscles (capsule chains along z)."""
    psoas, ql, para = [], [], []
    zs = np.array([40.0, 0.0, -40.0, -80.0, -120.0, -160.0, -210.0])
    grow = v.u(0.09, 0.13)
    for side in (-1.0, 1.0):
        r = np.clip(5.0 + (40.0 - zs) * grow, 5.0, 24.0)
        x = side * (body.vb_ax * body.vb_scale(zs) + 0.85 * r + 2.0 + np.clip(-120 - zs, 0, None) * 0.25)
        y = body.spine_y(zs) + 4.0 - np.clip(-100 - zs, 0, None) * 0.35
        psoas += tube(np.stack([x, y, zs], axis=1), r)
        zq = np.array([15.0, -30.0, -80.0, -115.0])
        xq = side * (body.vb_ax + v.u(36, 44)) * np.ones_like(zq)
        ql += tube(np.stack([xq, body.spine_y(zq) + 36.0, zq], axis=1), [7.0, 10.0, 11.0, 9.0])
        zp = np.array([300.0, 150.0, 50.0, -50.0, -150.0, -300.0])
        xp = side * v.u(22, 27) * np.ones_like(zp)
        para += tube(np.stack([xp, body.spine_y(zp) + body.vb_ay + 38.0, zp], axis=1), v.u(19, 23))
    return psoas, ql, para


def _spine_column(body: B.BodyParams, grow: float) -> Shape:
    zs = np.arange(-300.0, 301.0, 75.0)
    pts = np.stack([np.zeros_like(zs), body.spine_y(zs), zs], axis=1)
    return Union(*tube(pts, body.vb_ax * 1.05 + grow))


def _layer(name: str, shape: Shape, hu, only_over=None, label: str | None = None, depth: float = 0.0) -> Layer:
    return Layer(name, L[label or name], shape, hu, only_over, 0.0, False, depth)


def _caps_layers(
    name: str, caps: list[Capsule], hu, only_over, label: str | None = None, depth: float = 0.0
) -> list[Layer]:
    return [_layer(f"{name}_{i}", c, hu, only_over, label=label or name, depth=depth) for i, c in enumerate(caps)]


def build_anatomy(config: PhantomConfig) -> Anatomy:
    """Sample the anatomy, lesions and HU values of ``config`` (seeded)."""
    seqs = dict(zip(_STREAMS, np.random.SeedSequence(config.seed).spawn(len(_STREAMS))))
    rng = {name: np.random.default_rng(s) for name, s in seqs.items()}
    var = config.variation
    hu = sample_hu(config.phase, rng["hu"])
    table = TISSUE_HU[config.phase]
    body = _sample_body(rng["body"], var)
    vb = _Var(rng["body"], var)
    cavity = B.Torso.layer(body, "muscle")
    cav_a = body.a - 1.25 * body.t_sc - 1.1 * body.t_m
    front_y = -(body.b_ant - 1.3 * body.t_sc - body.t_m)
    below = B.BelowDiaphragm(body, gap=4.5)
    rt = rng["table"]
    couch = B.Table(
        body, float(rt.uniform(0.5, 8.0)), float(rt.uniform(28.0, 45.0)), body.a + float(rt.uniform(20.0, 60.0))
    )
    layers: list[Layer] = [
        _layer("table", couch, _two_zone(hu["table_shell"], hu["table_foam"], 2.5), depth=2.5),
        _layer("body", B.Torso(body), hu["skin"]),
        _layer("subcutaneous_fat", B.Torso.layer(body, "skin"), hu["fat"]),
        _layer("muscle", B.Torso.layer(body, "sc_fat"), hu["muscle"]),
        _layer("visceral_fat", cavity, hu["fat"]),
    ]
    # thorax: lungs above the diaphragm, the heart on its central tendon, the diaphragm itself
    heart_rot = rotation_from_axes([0.75, -0.45, -0.45], [0.0, 0.0, 1.0])
    tendon_z = min(body.dome_r, body.dome_l) - 18.0
    heart = Intersect(
        Ellipsoid([vb.u(8, 28), body.spine_y0 - 78, tendon_z + 36], [vb.u(58, 68), 46, 52], heart_rot),
        B.BelowDiaphragm(body, gap=1.5, above=True),
    )
    mediastinum = Capsule([0.0, body.spine_y0 - 22, tendon_z], [0.0, body.spine_y0 - 10, 400.0], 27.0, 27.0)
    # lungs fill the thorax (a cross-section-only shape, cheap on axial grids); the mediastinum
    # and the pericardial fat are then carved back to fat before the heart is painted
    lungs = Intersect(Offset(cavity, -3.0), B.BelowDiaphragm(body, gap=1.5, above=True))
    diaphragm = Intersect(cavity, B.BelowDiaphragm(body, gap=-1.5), B.BelowDiaphragm(body, gap=-4.5, above=True))
    lung = (L["lung"],)
    layers += [
        _layer("lung", lungs, _texture(hu["lung"], 25.0, rng["textures"], 25.0), _FAT),
        _layer("mediastinum", mediastinum, hu["fat"], lung, label="visceral_fat"),
        _layer("pericardium", Offset(heart, 4.0), hu["fat"], lung, label="visceral_fat"),
        _layer(
            "heart", heart, _two_zone(hu["heart"] - 35.0, hu["heart"], 9.0), (L["visceral_fat"], L["lung"]), depth=9.0
        ),
        _layer("diaphragm", diaphragm, hu["muscle"], _FAT, label="muscle"),
    ]
    psoas, ql, para = _muscles(body, vb)
    layers += _caps_layers("paraspinal", para, hu["muscle"], (*_SOFT, L["lung"]), label="muscle")
    layers += _caps_layers("psoas", psoas + ql, hu["muscle"], _SOFT, label="muscle")
    bone = _two_zone(hu["bone_cortical"], hu["bone_trabecular"], 1.6)
    layers += [
        _layer("spine", B.Vertebrae(body, "body"), hu["bone_cortical"], None),
        _layer(
            "spine_trabecular",
            B.Vertebrae(body, "body", shrink=1.6, endplate=0.8),
            _texture(hu["bone_trabecular"], 20.0, rng["textures"], 9.0),
            (L["spine"],),
        ),
        _layer("intervertebral_disc", B.Vertebrae(body, "disc"), hu["disc"], None),
        _layer(
            "spine_arch",
            B.NeuralArch(body, "arch"),
            bone,
            (*_SOFT, L["lung"], L["subcutaneous_fat"]),
            label="spine",
            depth=1.6,
        ),
        _layer("spinal_canal", B.NeuralArch(body, "canal"), hu["csf"], None),
    ]
    # great vessels
    rv = rng["vessels"]
    aorta = vessels.aorta_path(body.spine_y, body.vb_ay, _Var(rv, var).u(9.0, 12.5), rv)
    ivc, junction = vessels.ivc_path(body.spine_y, body.vb_ay, body.dome_r, rv)
    big_soft = (*_SOFT, L["lung"])
    layers += _caps_layers("aorta", aorta, hu["aorta"], big_soft)
    layers += _caps_layers("inferior_vena_cava", ivc, hu["ivc"], big_soft)
    aorta_u, ivc_u = Union(*aorta), Union(*ivc)
    column = _spine_column(body, 0.0)
    # kidneys
    kidneys = _kidneys(body, rng["kidneys"], var, [column, aorta_u, ivc_u], below)
    for k in kidneys:
        side = k.side
        cortex, medulla, pelvis = (L[f"kidney_{side}_{p}"] for p in ("cortex", "medulla", "pelvis"))
        core, urine, sinus_fat = k.pelvis_core, F32(hu["urine"]), F32(hu["sinus_fat"])

        def sinus_hu(X, Y, Z, level, core=core, urine=urine, sinus_fat=sinus_fat):
            return np.where(core(X, Y, Z) < 0, urine, sinus_fat)

        layers += [
            Layer(f"kidney_{side}_cortex", cortex, k.outer, hu["kidney_cortex"], _SOFT),
            Layer(f"kidney_{side}_medulla", medulla, k.medulla, hu["kidney_medulla"], (cortex,)),
            Layer(f"kidney_{side}_pelvis", pelvis, k.sinus, sinus_hu, (cortex, medulla)),
        ]
        hilum = k.center + k.frame[:, 1] * (k.width / 2 - 2.0)
        z = hilum[2] + 8.0
        ivc_at = ivc[2]
        target = np.array([ivc_at.a[0] + 4.0, ivc_at.a[1] + (ivc_at.b[1] - ivc_at.a[1]) * 0.3, z])
        if side == "right":
            mid = 0.5 * (hilum + target)
        else:  # the left renal vein crosses in front of the aorta
            ao = aorta[3]
            mid = np.array([ao.a[0], ao.a[1] - ao.ra - 7.0, z])
        layers += _caps_layers(
            f"renal_vein_{side}", tube([hilum, mid, target], [5.0, 5.0, 5.5]), hu["ivc"], _FAT, label="renal_vein"
        )
    kidney_r, kidney_l = kidneys
    # gut layout, spleen and liver
    rg = rng["gut"]
    vg = _Var(rg, var)
    spleen_c = np.array([cav_a * vg.u(0.62, 0.72), body.spine_y0 + vg.u(22, 36), body.dome_l - vg.u(45, 60)])
    lm = gi.Landmarks(cav_a, front_y, body.spine_y0, body.dome_l, kidney_l.center[2] + vg.u(5, 25), spleen_c, -210.0)
    contrast = bool(rg.random() < 0.35)
    pancreas, pv_veins, head, confluence = gi.pancreas_and_veins(lm, rg)
    stomach, duodenum = gi.stomach_and_duodenum(lm, head, rg, contrast)
    stomach_u = stomach.shape()
    bounds = [cavity, below]
    vs = _Var(rng["spleen"], var)
    spleen_build = organs.spleen_shape(
        spleen_c,
        rng["spleen"],
        bounds,
        [Offset(kidney_l.outer, 4.0), Offset(stomach_u, 3.0), Offset(aorta_u, 4.0), Offset(column, 6.0)],
    )
    spleen, _, spleen_coarse = organs.calibrate(spleen_build, vs.u(165, 235), step=2.0)
    psoas_u = Union(*(psoas + ql))
    liver, liver_meta = _liver(
        body,
        rng["liver"],
        var,
        cav_a,
        bounds,
        [kidney_r.outer, ivc_u, aorta_u, column, stomach_u, duodenum.shape(), spleen, psoas_u],
    )
    gallbladder = liver_meta.pop("gallbladder")
    layers += [
        Layer("spleen", L["spleen"], spleen, _texture(hu["spleen"], 3.0, rng["textures"]), _SOFT),
        Layer(
            "liver_parenchyma", L["liver_parenchyma"], liver, _texture(hu["liver"], 3.0, rng["textures"], 70.0), _SOFT
        ),
    ]
    if gallbladder is not None:
        layers.append(_layer("gallbladder", gallbladder, hu["bile"], _FAT))
    # intrahepatic vessels and the extrahepatic portal system
    rt = rng["trees"]
    pts, level = organs.coarse_points(liver, 3.0)
    deep = pts[level < -8.0]
    hilum_target = np.array([-35.0, body.spine_y0 - 45.0, lm.pancreas_z + 35.0])
    inner = pts[level < -5.0]
    porta = inner[np.argmin(np.linalg.norm(inner - hilum_target[None], axis=1))]
    trunk = [Capsule(confluence, porta, 7.0, 6.5)]
    liver_only = (L["liver_parenchyma"],)
    trunks: dict = {}
    layers += _caps_layers(
        "hepatic_vein", vessels.hepatic_tree(junction, deep, rt, trunks), hu["hepatic_vein"], liver_only
    )
    vessel_landmarks = {
        "ivc": np.array([c.a for c in ivc] + [ivc[-1].b]),
        "portal_bifurcation": np.asarray(porta, dtype=float),
        "hepatic_veins": trunks,
    }
    layers += _caps_layers("portal_vein", trunk + vessels.portal_tree(porta, deep, rt), hu["portal_vein"], liver_only)
    layers += _caps_layers("pancreas", pancreas, _texture(hu["pancreas"], 6.0, rng["textures"], 20.0), _FAT)
    layers += _caps_layers("portal_vein_extrahepatic", trunk + pv_veins, hu["portal_vein"], (*_FAT, L["pancreas"]))
    # gut: stomach, duodenum, colon, small bowel (wall first, then the lumen inside it)
    liver_low = float(pts[level < 0][:, 2].min())
    tracts = [(stomach, "stomach"), (duodenum, "bowel")]
    tracts += [(t, "bowel") for t in gi.colon(lm, liver_low, rg)]
    tracts += [(t, "bowel") for t in gi.small_bowel(lm, np.asarray(duodenum.capsules[-1].b), rg, contrast)]
    for n, (tract, label) in enumerate(tracts):
        layers += _caps_layers(f"{label}_wall_{n}", tract.capsules, hu["bowel_wall"], _FAT, label=label)
        lumen = [Offset(c, -tract.wall) for c in tract.capsules]
        layers += [
            Layer(f"{label}_lumen_{n}_{i}", L[label], c, tract.lumen_hu(hu), (L[label],)) for i, c in enumerate(lumen)
        ]
    # ribs and pelvic bones (over the wall and fat only)
    rb = rng["bones"]
    wall = (L["subcutaneous_fat"], L["muscle"], L["visceral_fat"], L["lung"], L["body"])
    layers += _caps_layers(
        "rib", B.rib_capsules(body, rb), _two_zone(hu["bone_cortical"], hu["bone_trabecular"], 1.3), wall, depth=1.3
    )
    layers += _pelvis(body, cav_a, rb, var, bone)
    # lesions
    lesions = _lesions(
        config,
        rng["lesions"],
        table,
        hu,
        (liver, pts, level),
        kidneys,
        [liver, spleen, aorta_u, ivc_u, Offset(column, 3.0), psoas_u, Offset(_Outside(cavity), -3.0), _Outside(below)],
    )
    for les in lesions:
        if les.label == "liver_tumor":
            only = (L["liver_parenchyma"], L["portal_vein"], L["hepatic_vein"])
        else:
            side = les.organ.split("_")[1]
            only = (*_FAT, L["bowel"], *(L[f"kidney_{side}_{p}"] for p in ("cortex", "medulla", "pelvis")))
        layers.append(Layer(les.name, L[les.label], les.shape, les.hu, only, 0.0, True, les.hu_depth))
    meta = {
        "height_cm": round(body.height_cm, 1),
        "weight_kg": round(body.weight_kg, 1),
        "oral_contrast": contrast,
        "gallbladder": gallbladder is not None,
        "calibrated_ml": {
            "liver_parenchyma_shape": round(liver_meta["coarse_ml"], 1),
            "spleen": round(spleen_coarse, 1),
            "kidney_right": round(kidney_r.volume_ml, 1),
            "kidney_left": round(kidney_l.volume_ml, 1),
        },
        "liver_target_ml": round(liver_meta["target_ml"], 1),
    }
    return Anatomy(body, layers, lesions, hu, meta, vessel_landmarks)


def _kidneys(
    body: B.BodyParams, rng: np.random.Generator, variation: float, avoid: list[Shape], below: Shape
) -> list[organs.KidneyModel]:
    """Right and left kidneys beside the spine (the left one higher), moved laterally away from
    the spine and great vessels and down below the diaphragm when they would touch them."""
    v = _Var(rng, variation)
    z_right = v.u(-48, -28)
    out = []
    for side, z in (("right", z_right), ("left", z_right + v.u(8, 25))):
        sgn = -1.0 if side == "right" else 1.0
        x = sgn * v.u(70, 80)
        y_off = v.u(10, 22)
        length, target = v.u(100, 122), v.u(142, 188)
        shape_seed = int(rng.integers(1 << 62))
        for _ in range(12):
            center = np.array([x, body.spine_y(z) + y_off, z])
            kidney = organs.kidney_model(side, center, length, target, np.random.default_rng(shape_seed))
            pts, level = organs.coarse_points(kidney.outer, 4.0)
            inside = pts[level < 0]
            if any(np.any(a.at(inside) < 3.0) for a in avoid):
                x += sgn * 5.0  # away from the spine and the great vessels
            elif np.any(below.at(inside) > -5.0):
                z -= 5.0  # below the diaphragm and the posterior costophrenic recess
            else:
                break
        out.append(kidney)
    return out


def _liver(
    body: B.BodyParams,
    rng: np.random.Generator,
    variation: float,
    cav_a: float,
    bounds: list[Shape],
    neighbours: list[Shape],
) -> tuple[Shape, dict]:
    """Liver calibrated to a volume from the patient's standardised TLV, carved by its
    neighbours (grown by a fat gap), with the gallbladder in its fossa."""
    v = _Var(rng, variation)
    params = organs.sample_liver_params(rng, cav_a, body.spine_y0, body.dome_r)
    gaps = [4.0, 1.5, 4.0, 8.0, 3.0, 3.0, 4.0, 2.0]
    cutters = [Offset(s, g) for s, g in zip(neighbours, gaps)]
    raw = organs.liver_shape(params, 1.0, bounds, cutters)
    gallbladder = None
    if rng.random() < 0.85:
        gallbladder = organs.gallbladder_shape(raw, params.right_c[0] * 0.5, body.spine_y0 - v.u(80, 95), rng)
    if gallbladder is not None:
        cutters.append(Offset(gallbladder, 2.0))
    # Standardised total liver volume (Vauthey et al. 2002) from the Mosteller BSA (clinical.md)
    bsa = float(np.sqrt(body.height_cm * body.weight_kg / 3600.0))
    target = float(np.clip((-794.41 + 1267.28 * bsa) * v.u(0.85, 1.0), 1280.0, 1720.0))
    liver, scale, coarse = organs.calibrate(lambda s: organs.liver_shape(params, s, bounds, cutters), target, step=3.0)
    return liver, {"gallbladder": gallbladder, "target_ml": target, "coarse_ml": coarse, "scale": scale, "bsa_m2": bsa}


def _pelvis(body: B.BodyParams, cav_a: float, rng: np.random.Generator, variation: float, hu) -> list[Layer]:
    """Iliac wings below the iliac crest (about L4): the lateral half of a thin ellipsoidal bowl
    on each side, concave toward the iliac fossa."""
    v = _Var(rng, variation)
    z_crest = body.z_l3 - v.u(30, 50)
    out = []
    for side in (-1.0, 1.0):
        c = np.array([side * 0.3 * cav_a, body.spine_y0 - 5.0, z_crest + 25.0])
        lateral = np.array([side * 1.0, 0.25, 0.0])
        rot = rotation_from_axes(lateral, [0.0, 0.0, 1.0])
        wing = Ellipsoid(c, [0.5 * cav_a, 80.0, 120.0], rot)
        shell = Intersect(
            Subtract(wing, Offset(wing, -7.0)),
            HalfSpace([0, 0, z_crest], [0, 0, 1]),
            HalfSpace(c, -lateral),
        )
        out.append(Layer(f"pelvic_bone_{int(side)}", L["pelvic_bone"], shell, hu, (*_SOFT, L["bowel"]), hu_depth=1.6))
    return out


def _lesions(
    config: PhantomConfig,
    rng: np.random.Generator,
    table: dict,
    hu: dict,
    liver_pts: tuple,
    kidneys,
    obstacles: list[Shape],
) -> list[Lesion]:
    out = liver_tumors(*liver_pts, config.n_liver_tumors, rng, table["liver_metastasis"], table["liver_metastasis_rim"])
    kind = config.kidney_tumor
    if kind == "random":
        kind = "exophytic" if rng.random() < 0.6 else "endophytic"
    side = config.kidney_tumor_side
    if side == "random":
        side = "right" if rng.random() < 0.5 else "left"
    tumor = None
    if kind != "none":
        sides = [side] if config.kidney_tumor_side != "random" else [side, "left" if side == "right" else "right"]
        for s in sides:  # a random side falls back to the other kidney if no site is free
            kidney = kidneys[0] if s == "right" else kidneys[1]
            other = kidneys[1] if s == "right" else kidneys[0]
            tumor = kidney_tumor(
                kidney, kind, rng, [*obstacles, Offset(other.outer, 3.0)], table["rcc"], table["rcc_necrosis"]
            )
            if tumor is not None:
                break
    if config.kidney_cyst:
        cyst = kidney_cyst(kidneys, rng, obstacles, [tumor] if tumor is not None else [], hu["cyst"])
        if cyst is not None:
            out.append(cyst)
    if tumor is not None:
        out.append(tumor)
    return out
