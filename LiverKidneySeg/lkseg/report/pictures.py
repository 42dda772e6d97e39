"""Pictures for the report: axial and coronal CT slices with coloured label overlays, and an SVG
volume chart.

Slices are shown in the radiological convention whatever the storage order of the volume:
the arrays are permuted/flipped (exactly, no interpolation) to LPS with
:func:`lkseg.orientation.reorient_grid`, so an axial picture has anterior at the top and the
patient's right on the image's left, and a coronal picture has superior at the top. Pixels are
resampled to square physical size (mm) for display only.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence

import numpy as np

from lkseg.labels import LabelTable, get_structure
from lkseg.orientation import reorient_grid
from lkseg.volume import Volume

__all__ = ["overlay_png", "slice_through", "volume_chart_svg"]

#: Abdominal soft-tissue window (centre 40 HU, width 400 HU).
WINDOW = (40.0, 400.0)
_RESECTED_RGB = (0.85, 0.1, 0.1)


def slice_through(labels: Volume, point_ras: Sequence[float]) -> dict[str, int]:
    """Indices (in the LPS-reoriented arrays) of the axial and coronal slices through a point."""
    plan = reorient_grid(labels.grid, "LPS")
    ijk = np.rint(plan.reoriented.ras_to_index(point_ras)).astype(int)
    size = plan.reoriented.size_ijk
    return {"axial": int(np.clip(ijk[2], 0, size[2] - 1)), "coronal": int(np.clip(ijk[1], 0, size[1] - 1))}


def _plane(plan, array: np.ndarray, view: str, index: int) -> np.ndarray:
    arr = plan.apply_array(array)  # views only: (k, j, i) with i -> L, j -> P, k -> S
    if view == "axial":
        return np.asarray(arr[index])  # rows j (anterior at top), cols i (patient right on the left)
    return np.asarray(arr[:, index, :])[::-1]  # rows k flipped: superior at top


def overlay_png(
    labels: Volume,
    table: LabelTable,
    view: str = "axial",
    index: int | None = None,
    image: Volume | None = None,
    *,
    resected: Volume | None = None,
    lines_ras: Sequence[tuple[Sequence[float], Sequence[float]]] = (),
    width: int = 512,
    alpha: float = 0.4,
) -> bytes:
    """A PNG of one axial or coronal slice: CT (soft-tissue window) with label colours.

    Args:
        labels: label map (ZYX with geometry).
        table: label value -> structure name (colours from :mod:`lkseg.labels`).
        view: ``"axial"`` or ``"coronal"``.
        index: slice index in the LPS-reoriented volume (default: the middle slice).
        image: the CT on the same grid (optional; black background without it).
        resected: optional boolean Volume; liver voxels in it are tinted red (resected part).
        lines_ras: segments (RAS mm end points) to draw, e.g. lesion long axes on this slice.
        width: output width in pixels (height follows the physical aspect ratio).
        alpha: opacity of the label fill (outlines are opaque).
    """
    from PIL import Image, ImageDraw

    if view not in ("axial", "coronal"):
        raise ValueError(f"view must be 'axial' or 'coronal', got {view!r}")
    plan = reorient_grid(labels.grid, "LPS")
    g = plan.reoriented
    n_slices = g.size_ijk[2] if view == "axial" else g.size_ijk[1]
    index = n_slices // 2 if index is None else int(np.clip(index, 0, n_slices - 1))
    lab = _plane(plan, labels.array, view, index)
    if image is not None:
        image.grid.require_same(labels.grid, "label map")
        ct = _plane(plan, image.array, view, index).astype(np.float32)
        lo = WINDOW[0] - WINDOW[1] / 2
        gray = np.clip((ct - lo) / WINDOW[1], 0.0, 1.0)
    else:
        gray = np.zeros(lab.shape, dtype=np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    lut = np.zeros((int(lab.max(initial=0)) + 1, 3), dtype=np.float32)
    has = np.zeros(len(lut), dtype=bool)
    for value, name in table.items():
        if value < len(lut):
            lut[value] = get_structure(name).color
            has[value] = True
    present = has[lab]
    fill = lut[lab]
    if resected is not None:
        cut = _plane(plan, np.asarray(resected.array, dtype=bool), view, index)
        liver_values = [v for v, n in table.items() if n == "liver" and v < len(lut)]
        tint = cut & np.isin(lab, liver_values)
        fill[tint] = _RESECTED_RGB
    rgb[present] = (1 - alpha) * rgb[present] + alpha * fill[present]
    edge = np.zeros(lab.shape, dtype=bool)
    edge[:-1] |= lab[:-1] != lab[1:]
    edge[1:] |= lab[:-1] != lab[1:]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:, 1:] |= lab[:, :-1] != lab[:, 1:]
    edge &= present
    rgb[edge] = fill[edge]
    pixels = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    # physical pixel size of this plane: cols along i (si); rows along j (sj) or k (sk)
    si, sj, sk = g.spacing
    row_mm = sj if view == "axial" else sk
    height_mm, width_mm = lab.shape[0] * row_mm, lab.shape[1] * si
    out_w = int(width)
    out_h = max(1, round(out_w * height_mm / width_mm))
    pic = Image.fromarray(pixels, "RGB").resize((out_w, out_h), Image.Resampling.NEAREST)
    if lines_ras:
        draw = ImageDraw.Draw(pic)
        for a, b in lines_ras:
            pa, pb = (_to_pixel(g, p, view, lab.shape, out_w / width_mm, si, row_mm) for p in (a, b))
            draw.line([pa, pb], fill=(255, 255, 255), width=2)
            for p in (pa, pb):
                draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], outline=(255, 255, 255), width=2)
    buf = io.BytesIO()
    pic.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _to_pixel(grid, point_ras, view: str, shape, scale: float, si: float, row_mm: float) -> tuple[float, float]:
    i, j, k = grid.ras_to_index(point_ras)
    col = (i + 0.5) * si * scale
    row = (j + 0.5) * row_mm * scale if view == "axial" else (shape[0] - 1 - k + 0.5) * row_mm * scale
    return float(col), float(row)


def volume_chart_svg(
    volumes_ml: Mapping[str, float], colors: Mapping[str, Sequence[float]] | None = None, width: int = 640
) -> str:
    """A horizontal bar chart of volumes (mL) as inline SVG (no external files or fonts)."""
    items = [(k, float(v)) for k, v in volumes_ml.items() if v and v > 0]
    if not items:
        return "<p>No volumes to chart.</p>"
    bar_h, gap, label_w, value_w = 22, 8, 170, 90
    height = len(items) * (bar_h + gap) + gap
    scale = (width - label_w - value_w - 10) / max(v for _, v in items)
    rows = []
    for n, (name, vol) in enumerate(items):
        y = gap + n * (bar_h + gap)
        rgb = (colors or {}).get(name) or get_structure(name).color
        fill = "#{:02x}{:02x}{:02x}".format(*tuple(round(255 * c) for c in rgb))
        display = html.escape(get_structure(name).display)
        w = max(1.0, vol * scale)
        rows.append(
            f'<text x="{label_w - 6}" y="{y + bar_h * 0.7:.1f}" text-anchor="end">{display}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{fill}" stroke="#333" stroke-width="0.5"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h * 0.7:.1f}">{vol:.1f} mL</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="sans-serif" font-size="13" role="img" aria-label="structure volumes in mL">'
        + "".join(rows)
        + "</svg>"
    )
