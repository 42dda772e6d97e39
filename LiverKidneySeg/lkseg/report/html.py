"""A self-contained HTML report (one file; pictures embedded as data URIs; printable to PDF).

Sections: summary, pictures (axial and coronal overlays, 3D view), volumes (voxel and surface)
with a chart, lesions and tumour burden, future liver remnant, kidney tumours (R.E.N.A.L.),
warnings, methods and the audit trail. Every value is HTML-escaped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from html import escape
from pathlib import Path

from lkseg.io.atomic import atomic_write_text
from lkseg.labels import get_structure
from lkseg.planning.plan import PlanResult
from lkseg.report.pictures import volume_chart_svg
from lkseg.report.provenance import Provenance
from lkseg.report.tables import METHODS

__all__ = ["data_uri", "render_html", "write_html"]

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#1d2733;line-height:1.4}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;border-bottom:2px solid #dfe5ec;padding-bottom:3px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.na{color:#8a6d00;font-style:italic}.warn{background:#fff6d6;border-left:4px solid #e0a800;padding:6px 10px;margin:4px 0}
.ok{color:#116329;font-weight:bold}.bad{color:#b42318;font-weight:bold}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;min-width:180px}
.card .v{font-size:22px;font-weight:bold}.card .l{font-size:12px;color:#57606a}
figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top}figure img{border:1px solid #d0d7de;max-width:100%}
figcaption{font-size:12px;color:#57606a;max-width:520px}.swatch{display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:5px;vertical-align:middle}
.small{font-size:12px;color:#57606a}code{font-size:12px}
@media print{body{margin:0;max-width:none}h2{page-break-after:avoid}figure,table,.card{page-break-inside:avoid}}
"""


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:`` URI embedding ``data`` (base64)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _na(reason: str | None = None) -> str:
    text = "not available" + (f" ({reason.removeprefix('not available: ')})" if reason else "")
    return f'<span class="na">{escape(text)}</span>'


def _num(value, fmt: str = "{:.1f}", unit: str = "", reason: str | None = None) -> str:
    if value is None:
        return _na(reason)
    return escape(fmt.format(value) + (f" {unit}" if unit else ""))


def _swatch(name: str) -> str:
    rgb = get_structure(name).color
    hexcol = "#{:02x}{:02x}{:02x}".format(*tuple(round(255 * c) for c in rgb))
    return f'<span class="swatch" style="background:{hexcol}"></span>'


def _card(label: str, value: str, cls: str = "") -> str:
    return f'<div class="card"><div class="v {cls}">{value}</div><div class="l">{escape(label)}</div></div>'


def _summary(result: PlanResult) -> str:
    cards = []
    tlv = result.total_liver_volume_ml()
    if tlv is not None:
        cards.append(_card("total liver volume (TLV)", _num(tlv, unit="mL")))
    flr = result.flr
    if flr is not None:
        cards.append(_card("future liver remnant (FLR)", _num(flr.flr_ml, unit="mL")))
        cards.append(_card("measured FLR / (TLV - tumours - cysts)", _num(flr.flr_percent, unit="%")))
        cards.append(
            _card("standardised FLR (sFLR)", _num(flr.sflr_percent, unit="%", reason=flr.notes.get("sflr_percent")))
        )
        cls = {"sufficient": "ok", "insufficient": "bad"}.get(flr.verdict, "na")
        cards.append(
            _card(f"verdict vs {flr.threshold_percent:.0f}% ({flr.liver_quality} liver)", escape(flr.verdict), cls)
        )
    for b in result.burden:
        cards.append(
            _card(
                f"{get_structure(b.tumour_structure).display} burden ({b.organ})",
                _num(b.tumour_volume_ml, unit="mL") + f" / {b.count}",
            )
        )
    for r in result.renal:
        value = escape(r.notation) if r.notation else _na("incomplete")
        cards.append(_card(f"R.E.N.A.L. {r.tumour}", value))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _volumes(result: PlanResult) -> str:
    rows = []
    for name, v in result.volumes.items():
        if not v.voxels:
            continue
        rows.append(
            f"<tr><td>{_swatch(name)}{escape(v.display)}</td><td class=num>{v.voxels}</td><td class=num>{_num(v.volume_ml, '{:.2f}')}</td>"
            f"<td class=num>{_num(v.mesh_volume_ml, '{:.2f}', reason='no surface')}</td>"
            f"<td class=num>{_num(v.mesh_difference_percent, '{:+.2f}', unit='%', reason='no surface')}</td>"
            f"<td>{escape('; '.join(v.notes.values()))}</td></tr>"
        )
    head = "<tr><th>structure</th><th>voxels</th><th>volume (mL)</th><th>surface volume (mL)</th><th>difference</th><th>notes</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _lesions(result: PlanResult) -> str:
    if not result.lesions:
        return "<p>No lesion segment in the label map.</p>"
    head = (
        "<tr><th>lesion</th><th>organ</th><th>volume (mL)</th><th>axial long x short (mm)</th><th>max 3D diameter (mm)</th>"
        "<th>centroid R, A, S (mm)</th><th>to organ surface (mm)</th><th>notes</th></tr>"
    )
    rows = []
    for les in result.lesions:
        c = ", ".join(f"{v:.1f}" for v in les.centroid_ras)
        rows.append(
            f"<tr><td>{_swatch(les.structure)}{escape(les.label)}</td><td>{escape(les.organ) if les.organ else _na('outside its organ')}</td>"
            f"<td class=num>{les.volume_ml:.2f}</td><td class=num>{les.axial_long_mm:.1f} x {les.axial_short_mm:.1f}</td>"
            f"<td class=num>{les.max_diameter_mm:.1f}</td><td class=num>{c}</td>"
            f"<td class=num>{_num(les.distance_to_surface_mm, reason=les.notes.get('distance_to_surface_mm'))}</td>"
            f"<td>{escape('; '.join(les.notes.values()))}</td></tr>"
        )
    burden = "".join(
        f"<tr><td>{escape(b.organ)}</td><td>{escape(get_structure(b.tumour_structure).display)}</td><td class=num>{b.count}</td>"
        f"<td class=num>{b.tumour_volume_ml:.2f}</td><td class=num>{b.organ_volume_ml:.1f}</td><td class=num>{_num(b.percent_of_organ, '{:.2f}', unit='%')}</td></tr>"
        for b in result.burden
    )
    out = f"<table>{head}{''.join(rows)}</table>"
    if burden:
        out += (
            "<h3>Tumour burden</h3><table><tr><th>organ</th><th>tumour</th><th>count</th><th>tumour volume (mL)</th>"
            f"<th>organ volume incl. lesions (mL)</th><th>share of organ</th></tr>{burden}</table>"
        )
    return out


def _couinaud(result: PlanResult) -> str:
    info = result.couinaud_dict()
    if info is None:
        return f"<p>{_na(result.notes.get('couinaud'))}</p>"
    from lkseg.surfaces.segments import segment_color

    rows = []
    for row in info["segments"]:
        r, g, b = (round(255 * c) for c in segment_color(row["segment"]))
        swatch = f'<span class="swatch" style="background:rgb({r},{g},{b})"></span>'
        rows.append(
            f"<tr><td>{swatch}{row['segment']}</td><td>{escape(row['name'])}</td><td class=num>{row['volume_ml']:.1f}</td>"
            f"<td>{'resected' if row['resected'] else ''}</td><td>{escape(', '.join(row['lesions']))}</td></tr>"
        )
    parts = info["segment_4_parts_ml"]
    lesion_rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(', '.join(f'{s} ({100 * f:.0f}%)' for s, f in shares.items()))}</td></tr>"
        for name, shares in info["lesion_segments"].items()
    )
    lm = info["landmarks"]
    out = (
        "<table><tr><th>segment</th><th>name</th><th>volume (mL)</th><th>resection</th><th>lesions</th></tr>"
        f"{''.join(rows)}</table><p class=small>Segment 4: 4a {parts['4a']:.1f} mL above, 4b {parts['4b']:.1f} mL below "
        f"the portal plane. Landmarks: {escape(lm['source'])} (saved with the report; RAS mm).</p>"
    )
    if lesion_rows:
        out += f"<h3>Lesion &rarr; segment</h3><table><tr><th>lesion</th><th>segment(s) (share of its voxels)</th></tr>{lesion_rows}</table>"
    return out


def _flr(result: PlanResult) -> str:
    flr = result.flr
    if flr is None:
        return f"<p>{_na(result.notes.get('flr'))}</p>"
    rows = [
        ("Resection", _resection_text(flr.resection)),
        ("Total liver volume (TLV)", _num(flr.tlv_ml, unit="mL")),
        ("Subtracted: tumour volume", _num(flr.tumour_ml, unit="mL")),
        ("Subtracted: cyst volume", _num(flr.cyst_ml, unit="mL")),
        (
            "Functional liver volume = FLR% denominator (TLV - tumours - cysts)",
            _num(flr.functional_liver_ml, unit="mL"),
        ),
        ("Resected volume (incl. lesions)", _num(flr.resected_ml, unit="mL")),
        ("Future liver remnant (FLR, parenchyma)", _num(flr.flr_ml, unit="mL")),
        ("Measured FLR% = FLR / (TLV - tumours - cysts)", _num(flr.flr_percent, unit="%")),
        (
            "Height / weight",
            f"{_num(flr.height_cm, '{:.0f}', 'cm', flr.notes.get('bsa_m2'))} / {_num(flr.weight_kg, '{:.0f}', 'kg', flr.notes.get('bsa_m2'))}",
        ),
        ("Body surface area (Mosteller)", _num(flr.bsa_m2, "{:.2f}", "m²", flr.notes.get("bsa_m2"))),
        ("Standardised TLV (Vauthey)", _num(flr.stlv_ml, unit="mL", reason=flr.notes.get("stlv_ml"))),
        ("Standardised FLR (sFLR)", _num(flr.sflr_percent, unit="%", reason=flr.notes.get("sflr_percent"))),
        (f"Threshold ({flr.liver_quality} liver)", _num(flr.threshold_percent, "{:.0f}", "%")),
        ("Verdict", escape(flr.verdict) if flr.verdict != "not available" else _na(flr.notes.get("verdict"))),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>" + _flr_bar(flr)


def _resection_text(resection: dict) -> str:
    if resection.get("kind") == "planes":
        parts = []
        for p in resection["planes"]:
            point = ", ".join(f"{v:.1f}" for v in p["point_ras_mm"])
            normal = ", ".join(f"{v:.3f}" for v in p["normal_ras"])
            parts.append(f"plane through ({point}) mm RAS, normal ({normal}), {p['side']} side resected")
        joined = "<br>".join(escape(t) for t in parts)
        if len(parts) > 1:
            joined += "<br>" + escape(f"planes combined as {resection['combine']}")
        return joined
    if resection.get("kind") == "mask":
        return escape(f"resection mask {resection.get('source') or ''}".strip())
    return escape(f"resection segment {resection.get('label')!r}")


def _flr_bar(flr) -> str:
    value = flr.sflr_percent if flr.sflr_percent is not None else flr.flr_percent
    label = "sFLR" if flr.sflr_percent is not None else "measured FLR"
    w = 520
    x = min(max(value, 0.0), 100.0) / 100 * w
    t = flr.threshold_percent / 100 * w
    colour = "#2da44e" if value >= flr.threshold_percent else "#cf222e"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 220}" height="46" font-family="sans-serif" font-size="12" role="img" aria-label="{label} bar">'
        f'<rect x="0" y="8" width="{w}" height="18" fill="#eef1f4" stroke="#999"/><rect x="0" y="8" width="{x:.1f}" height="18" fill="{colour}"/>'
        f'<line x1="{t:.1f}" y1="2" x2="{t:.1f}" y2="32" stroke="#000" stroke-width="2"/>'
        f'<text x="{t + 3:.1f}" y="44">threshold {flr.threshold_percent:.0f}%</text><text x="{w + 6}" y="22">{label} {value:.1f}%</text></svg>'
    )


def _renal(result: PlanResult) -> str:
    if not result.renal:
        return "<p>No kidney tumour in the label map.</p>"
    head = (
        "<tr><th>tumour</th><th>kidney</th><th>max diameter</th><th>exophytic</th><th>to collecting system</th><th>polar location</th>"
        "<th>A</th><th>R</th><th>E</th><th>N</th><th>L</th><th>total</th><th>complexity</th><th>PADUA</th></tr>"
    )
    rows = []
    for r in result.renal:
        exo = None if r.exophytic_fraction is None else 100 * r.exophytic_fraction
        ap = r.anterior_posterior or _na()
        rows.append(
            f"<tr><td>{escape(r.tumour)}</td><td>{escape(r.kidney) if r.kidney else _na('outside kidney')}</td>"
            f"<td class=num>{r.max_diameter_mm:.1f} mm</td><td class=num>{_num(exo, unit='%', reason=r.notes.get('exophytic_fraction'))}</td>"
            f"<td class=num>{_num(r.nearness_mm, unit='mm', reason=r.notes.get('nearness_mm'))}</td>"
            f"<td>{escape(r.polar_location) if r.polar_location else _na(r.notes.get('polar_location'))}</td><td>{ap}</td>"
            + "".join(f"<td class=num>{_num(getattr(r, k), '{:d}')}</td>" for k in ("R", "E", "N", "L"))
            + f"<td class=num>{escape(r.notation) if r.notation else _na(r.notes.get('total'))}</td><td>{escape(r.complexity) if r.complexity else _na()}</td>"
            + f"<td>{_padua_cell(r.padua)}</td></tr>"
        )
    hilar = result.renal[0].notes.get("hilar", "assessed with the renal artery/vein segment")
    sources = sorted({f"{r.tumour}: {r.sinus_source}" for r in result.renal if r.sinus_source})
    sinus = "; ".join(sources) or "none (N and L not available)"
    return (
        f"<table>{head}{''.join(rows)}</table><p class=small>Suffix a/p/x: anterior/posterior/neither; h: touches the "
        f"main renal artery or vein ({escape(hilar)}). Renal sinus used for N and L: {escape(sinus)}.</p>"
    )


def _padua_cell(p) -> str:
    if p is None:
        return _na()
    parts = " ".join(
        f"{k[0].upper()}{'' if v is None else v}"
        for k, v in (
            ("polar", p.polar),
            ("exophytic", p.exophytic),
            ("rim", p.rim),
            ("sinus", p.sinus),
            ("ucs", p.collecting_system),
            ("dimension", p.size),
        )
    )
    total = f"{escape(p.notation)} ({escape(p.risk)})" if p.notation else _na(p.notes.get("total"))
    return f"{total}<br><span class=small>{escape(parts)}</span>"


def _audit(provenance: Provenance | None, result: PlanResult) -> str:
    if provenance is None:
        return "<p>No provenance recorded.</p>"
    rows = [f"<tr><th>created (UTC)</th><td>{escape(provenance.created_utc)}</td></tr>"]
    for role, entry in provenance.inputs.items():
        rows.append(
            f"<tr><th>input: {escape(role)}</th><td><code>{escape(str(entry.get('path')))}</code><br>sha256 <code>{escape(str(entry.get('sha256')))}</code></td></tr>"
        )
    model = ", ".join(f"{k} {v}" for k, v in provenance.model.items()) or "not recorded (label map from a file)"
    rows.append(f"<tr><th>model</th><td>{escape(model)}</td></tr>")
    rows.append(
        f"<tr><th>prompts / edits</th><td>{len(provenance.prompts)} prompt(s), {len(provenance.edits)} edit(s) (listed in the JSON report)</td></tr>"
    )
    rows.append(f"<tr><th>parameters</th><td><code>{escape(json.dumps(provenance.parameters))}</code></td></tr>")
    rows.append(
        f"<tr><th>software</th><td>{escape(', '.join(f'{k} {v}' for k, v in provenance.software.items()))}</td></tr>"
    )
    if provenance.command:
        rows.append(f"<tr><th>command</th><td><code>{escape(' '.join(provenance.command))}</code></td></tr>")
    grid = result.grid
    rows.append(
        f"<tr><th>voxel grid</th><td>size {grid['size_ijk']}, spacing {[round(s, 4) for s in grid['spacing']]} mm</td></tr>"
    )
    return f"<table>{''.join(rows)}</table>"


def render_html(
    result: PlanResult,
    provenance: Provenance | None = None,
    pictures: Mapping[str, tuple[bytes, str]] | None = None,
    title: str = "LiverKidneySeg planning report",
) -> str:
    """The report as one HTML string.

    Args:
        result: the planning result.
        provenance: audit trail.
        pictures: name -> (PNG bytes, caption), shown in the given order.
        title: page title.
    """
    figs = "".join(
        f'<figure><img src="{data_uri(png)}" alt="{escape(name)}"><figcaption>{escape(caption)}</figcaption></figure>'
        for name, (png, caption) in (pictures or {}).items()
    )
    chart = volume_chart_svg({n: v.volume_ml for n, v in result.volumes.items() if v.voxels})
    warnings = "".join(f'<div class="warn">{escape(w)}</div>' for w in result.warnings) or "<p>None.</p>"
    methods = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in METHODS.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_CSS}</style></head><body>
<h1>{escape(title)}</h1>
<p class="small">Not a medical device: for research and demonstration. Coordinates are RAS mm (3D Slicer). Verify every number before clinical use.</p>
<h2>Summary</h2>{_summary(result)}
<h2>Pictures</h2>{figs or "<p>No pictures.</p>"}
<h2>Volumes</h2>{_volumes(result)}<div>{chart}</div>
<h2>Lesions</h2>{_lesions(result)}
<h2>Couinaud segments</h2>{_couinaud(result)}
<h2>Future liver remnant</h2>{_flr(result)}
<h2>Kidney tumours (R.E.N.A.L. nephrometry)</h2>{_renal(result)}
<h2>Warnings</h2>{warnings}
<h2>Methods and sources</h2><table>{methods}</table>
<h2>Audit trail</h2>{_audit(provenance, result)}
</body></html>
"""


def write_html(
    result: PlanResult,
    path: str | Path,
    provenance: Provenance | None = None,
    pictures: Mapping[str, tuple[bytes, str]] | None = None,
) -> Path:
    """Write the HTML report (atomic)."""
    return atomic_write_text(path, render_html(result, provenance, pictures))
