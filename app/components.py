"""Render-only helpers: numpy in, pictures and plotly figures out. No engine calls, no state.

Colours: the Okabe-Ito palette (safe for the common colour-vision deficiencies) for categories,
Cividis / Viridis for magnitudes, and a blue-white-red diverging scale centred on zero for signed values.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# Re-exported for the views: pictures (tipcore.common.pictures, numpy and Pillow only) and display names
# (app.labels) live in their own modules, so that app.resources can use the first and this module needs no
# engine lookup of its own.
from tipcore.common.pictures import png_bytes, to_uint8, upscale  # noqa: F401
from app.labels import (  # noqa: F401
    ATTACK_LABELS, MODEL_LABELS, adaptive_labels, attack_label, attacker_name, defense_label, defense_labels,
    knob_symbol, split_attack,
)

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
SELECTED = "#D55E00"  # vermillion: channels TIP noises
UNSELECTED = "#9AA5B1"  # grey-blue: the rest
DIVERGING = "RdBu_r"  # blue (negative) – white – red (positive); readable with red-green deficiencies

def defense_colour(name: str) -> str:
    names = list(defense_labels())
    i = names.index(name) if name in names else len(names)
    return OKABE_ITO[i % len(OKABE_ITO)]


# ------------------------------------------------------------------------------------------ images


def rows_of(items: Sequence[object], per_row: int = 4) -> list[list[object]]:
    """``items`` in rows of at most ``per_row``: any number of panels stays readable on a page."""
    items = list(items)
    per_row = max(int(per_row), 1)
    return [items[i:i + per_row] for i in range(0, len(items), per_row)]


def _wrap(draw: object, text: str, font: object, width: int) -> list[str]:
    """Words of ``text`` in lines no wider than ``width`` pixels (a single long word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:  # type: ignore[attr-defined]
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def comparison_png(panels: Sequence[tuple[str, str, np.ndarray]], scale: int = 5, per_row: int = 4) -> bytes:
    """PNG of labelled panels: each (title, subtitle, (H, W, 3) image in [0, 1]) with its title above and its
    subtitle (e.g. PSNR and SSIM) below, in rows of at most ``per_row``. Pixels stay pixels."""
    from PIL import Image, ImageDraw, ImageFont

    panels = list(panels)
    if not panels:
        raise ValueError("comparison_png needs at least one panel")
    font = ImageFont.load_default(size=14)
    small = ImageFont.load_default(size=12)
    pics = [upscale(img, scale) for _, _, img in panels]
    side_h, side_w = max(p.shape[0] for p in pics), max(p.shape[1] for p in pics)
    pad, line = 12, 18
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    titles = [_wrap(probe, t, font, side_w) for t, _, _ in panels]
    subs = [_wrap(probe, sub, small, side_w) for _, sub, _ in panels]
    top = max(len(t) for t in titles) * line + 4
    bottom = max(len(b) for b in subs) * line + 4
    grid = rows_of(range(len(panels)), per_row)
    cols = max(len(r) for r in grid)
    cell_w, cell_h = side_w + pad, top + side_h + bottom + pad
    canvas = Image.new("RGB", (cols * cell_w + pad, len(grid) * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(grid):
        for c, i in enumerate(row):
            x, y = pad + c * cell_w, pad + r * cell_h
            for n, text in enumerate(titles[i]):
                draw.text((x, y + n * line), text, fill="black", font=font)
            canvas.paste(Image.fromarray(pics[i]), (x, y + top))
            for n, text in enumerate(subs[i]):
                draw.text((x, y + top + side_h + 4 + n * line), text, fill="#333333", font=small)
    return png_bytes(canvas)


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "…"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_db(psnr: float) -> str:
    """PSNR for a metric tile whose label already says dB."""
    return "∞" if not np.isfinite(psnr) else f"{psnr:.1f}"


def fmt_ratio(value: object) -> str:
    """A ratio such as noise-to-signal: '52×', '0.31×', '—' when unknown, '∞' when the clean part was 0."""
    if value is None:
        return "—"
    v = float(value)  # type: ignore[arg-type]
    if not np.isfinite(v):
        return "∞"
    return f"{v:.3g}×" if v < 100 else f"{v:,.0f}×"


def fmt_psnr(psnr: float) -> str:
    return "∞ dB" if not np.isfinite(psnr) else f"{psnr:.1f} dB"


def formula_lines(tex: str) -> str | None:
    """A display formula broken into lines for a phone: one line per part separated by ``\\quad`` or
    ``\\qquad`` (a lone ``\\Rightarrow`` part starts the next line), stacked and centred; None when it has
    a single part. A formula wider than a phone's screen was cut off (or hid its end behind a scroll bar)."""
    parts = [part.strip() for part in re.split(r"\\q?quad(?![A-Za-z])", tex)]
    lines: list[str] = []
    for part in parts:
        if lines and lines[-1] == r"\Rightarrow":
            lines[-1] = rf"\Rightarrow\ {part}"
        elif part:
            lines.append(part)
    if len(lines) < 2:
        return None
    return r"\begin{gathered}" + r" \\ ".join(lines) + r"\end{gathered}"


# ------------------------------------------------------------------------------------------ figures

_MARGIN = dict(l=10, r=10, t=40, b=10)


def _title_above(text: str, gap: int = 0) -> dict:
    """A chart title placed just above the plot area, ``gap`` pixels higher to clear subplot titles, the top
    margin grown to hold all its lines (a title placed in the middle of a fixed margin ran into two-line
    subplot titles on a phone). Lines are broken with <br> where a phone's 390 px needs it."""
    return dict(text=text, yref="paper", y=1, yanchor="bottom", pad=dict(b=gap), automargin=True)


def _square_axes(fig: go.Figure, row: int | None = None, col: int | None = None) -> None:
    """Square pixels, row 0 at the top, no ticks (for images and kernels)."""
    kw = {} if row is None else dict(row=row, col=col)
    anchor = "x" if col in (None, 1) else f"x{col}"
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain", **kw)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed",
                     scaleanchor=anchor, constrain="domain", **kw)


def _tickformat(magnitude: float) -> str:
    """Ticks for values that may be tiny (gradients) or large (noise): plain decimals, scientific notation
    for very small or large ones (d3's "g"), never SI prefixes ("20µ" reads as micrometres, "1M" as millions)."""
    return ".3~g"


# Plotly's default exponent format ("B") writes SI prefixes on automatic ticks, log axes included ("1m",
# "500µ", "1M"); "power" writes 10⁻³ instead.
EXPONENT_FORMAT = "power"


def plain_numbers(fig: go.Figure) -> go.Figure:
    """Every axis and colour bar of ``fig`` in plain or scientific notation, never SI prefixes."""
    fig.update_xaxes(exponentformat=EXPONENT_FORMAT)
    fig.update_yaxes(exponentformat=EXPONENT_FORMAT)
    fig.update_traces(colorbar_exponentformat=EXPONENT_FORMAT, selector=dict(type="heatmap"))
    return fig


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, title: str = "Grad-CAM", opacity: float = 0.55) -> go.Figure:
    """The private image with a Grad-CAM heatmap (Cividis, [0, 1]) laid over it."""
    img = to_uint8(image)
    h, w = heat.shape
    fig = go.Figure()
    fig.add_trace(go.Image(z=img, hoverinfo="skip"))
    fig.add_trace(go.Heatmap(
        z=np.asarray(heat, dtype=float), x=np.arange(w), y=np.arange(h), colorscale="Cividis", zmin=0, zmax=1,
        opacity=opacity, colorbar=dict(thickness=8, len=0.8),
        hovertemplate="x %{x}, y %{y}<br>relevance %{z:.2f}<extra></extra>",
    ))
    fig.update_layout(title=title, margin=dict(l=0, r=0, t=40, b=0), height=300)
    _square_axes(fig)
    return plain_numbers(fig)


# Bars per channel, in channel units. Without an explicit width plotly sizes each trace's bars by the gap
# between that trace's own x values, so two selected channels 5 apart would be drawn 5 channels wide.
BAR_WIDTH = 0.8


def alpha_bars(alpha: np.ndarray, selected: Iterable[int], layer: str, k: int) -> go.Figure:
    """Signed Grad-CAM weight α per output channel; the channels TIP noises in vermillion."""
    alpha = np.asarray(alpha, dtype=float).reshape(-1)
    chosen = set(int(c) for c in selected)
    idx = np.arange(alpha.size)
    is_sel = np.array([i in chosen for i in idx])
    fig = go.Figure()
    fig.add_trace(go.Bar(
        x=idx[~is_sel], y=alpha[~is_sel], name="left clean", marker_color=UNSELECTED, width=BAR_WIDTH,
        hovertemplate="channel %{x}<br>α = %{y:.3g}<extra>clean</extra>",
    ))
    fig.add_trace(go.Bar(
        x=idx[is_sel], y=alpha[is_sel], name=f"selected: noised (k = {k})", marker_color=SELECTED,
        width=BAR_WIDTH,
        marker_line=dict(color="#000000", width=1),
        hovertemplate="channel %{x}<br>α = %{y:.3g}<extra>selected</extra>",
    ))
    fig.update_layout(
        title=f"Grad-CAM channel weight α in {layer}", barmode="overlay", bargap=0.1,
        margin=dict(l=10, r=10, t=40, b=10), height=320, xaxis_title="output channel", yaxis_title="α (signed)",
        yaxis_tickformat=_tickformat(float(np.abs(alpha).max()) if alpha.size else 1.0),
        legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0.0),
    )
    return plain_numbers(fig)


def mask_outline(mask: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Line segments around the bins the mask leaves clean (mask == 0), in cell coordinates."""
    m = np.asarray(mask) > 0.5
    h, w = m.shape
    xs: list[float | None] = []
    ys: list[float | None] = []

    def clean(i: int, j: int) -> bool:
        return 0 <= i < h and 0 <= j < w and not m[i, j]

    for i in range(h):
        for j in range(w):
            if not clean(i, j):
                continue
            # one segment for every side that borders a noised bin or the edge
            if not clean(i - 1, j):
                xs += [j - 0.5, j + 0.5, None]; ys += [i - 0.5, i - 0.5, None]  # noqa: E702
            if not clean(i + 1, j):
                xs += [j - 0.5, j + 0.5, None]; ys += [i + 0.5, i + 0.5, None]  # noqa: E702
            if not clean(i, j - 1):
                xs += [j - 0.5, j - 0.5, None]; ys += [i - 0.5, i + 0.5, None]  # noqa: E702
            if not clean(i, j + 1):
                xs += [j + 0.5, j + 0.5, None]; ys += [i - 0.5, i + 0.5, None]  # noqa: E702
    return xs, ys


def _colorbar_x(fig: go.Figure, col: int) -> float:
    axis = "xaxis" if col == 1 else f"xaxis{col}"
    return float(fig.layout[axis].domain[1]) + 0.01


def kernel_figure(before: np.ndarray, after: np.ndarray, difference: np.ndarray, title: str) -> go.Figure:
    """A kernel slice before and after the defense, and their difference; each with its own symmetric scale
    (the noise can be orders of magnitude larger than the update itself)."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("before", "after", "difference (noise)"),
                        horizontal_spacing=0.12)
    for col, z in enumerate((before, after, difference), 1):
        z = np.asarray(z, dtype=float)
        peak = float(np.abs(z).max()) if z.size else 0.0
        colorbar = dict(thickness=8, len=0.85, x=_colorbar_x(fig, col))
        if peak > 0:
            zmax = peak
            colorbar["tickformat"] = _tickformat(zmax)
        else:  # all zero (a channel the defense left alone): one honest tick instead of a pico-scale ruler
            zmax = 1.0
            colorbar.update(tickvals=[0.0], ticktext=["unchanged"])
        fig.add_trace(go.Heatmap(
            z=z, colorscale=DIVERGING, zmid=0, zmin=-zmax, zmax=zmax, colorbar=colorbar,
            hovertemplate="row %{y}, col %{x}<br>%{z:.3g}<extra></extra>",
        ), row=1, col=col)
        _square_axes(fig, 1, col)
    fig.update_layout(title=title, margin=dict(l=10, r=30, t=60, b=10), height=270)
    return plain_numbers(fig)


def spectrum_figure(before: np.ndarray, after: np.ndarray, mask: np.ndarray, title: str) -> go.Figure:
    """Centred DFT magnitude before and after on one log colour scale (bins TIP leaves alone look identical);
    the clean low-frequency bins outlined."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("|DFT| before", "|DFT| after"), horizontal_spacing=0.08)
    b, a = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    positive = np.concatenate([b[b > 0], a[a > 0]])
    floor = float(positive.min()) if positive.size else 1e-12
    logs = [np.log10(np.maximum(z, floor)) for z in (b, a)]
    zmin, zmax = float(min(l.min() for l in logs)), float(max(l.max() for l in logs))
    if zmax - zmin < 1e-9:
        zmax = zmin + 1.0
    xs, ys = mask_outline(mask)
    for col, (raw, z) in enumerate(zip((b, a), logs), 1):
        fig.add_trace(go.Heatmap(
            z=z, colorscale="Viridis", zmin=zmin, zmax=zmax, showscale=col == 2,
            colorbar=dict(thickness=8, len=0.85, title="log₁₀|F|", tickformat=".1f"),
            customdata=np.stack([raw, np.asarray(mask, dtype=float)], axis=-1),
            hovertemplate="bin (%{y}, %{x})<br>|F| = %{customdata[0]:.3g}<br>noised: %{customdata[1]}<extra></extra>",
        ), row=1, col=col)
        if xs:
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", line=dict(color="#FFFFFF", width=3), hoverinfo="skip",
                name="clean low-frequency bins (white outline)", showlegend=col == 1,
            ), row=1, col=col)
        _square_axes(fig, 1, col)
    fig.update_layout(title=title, margin=dict(l=10, r=10, t=60, b=10), height=300,
                      legend=dict(orientation="h", yanchor="top", y=-0.02, xanchor="left", x=0.0))
    return plain_numbers(fig)


def noise_energy_bars(names: Sequence[str], energy: Sequence[float], std: Sequence[float]) -> go.Figure:
    """Σ ΔW² per layer (log scale) with the per-element noise std in the hover."""
    e = np.asarray(energy, dtype=float)
    log = bool(np.all(e > 0)) and e.max() / max(e.min(), 1e-300) > 50
    fig = go.Figure(go.Bar(
        x=list(names), y=e, marker_color=OKABE_ITO[0], customdata=np.asarray(std, dtype=float),
        hovertemplate="%{x}<br>noise energy %{y:.3g}<br>per-element std %{customdata:.3g}<extra></extra>",
    ))
    fig.update_layout(title="Noise energy per layer (Σ ΔW²)", margin=_MARGIN, height=300,
                      xaxis_title="conv layer", yaxis_title="Σ ΔW²", yaxis_type="log" if log else "linear")
    return plain_numbers(fig)


def loss_curves(curves: dict[str, tuple[Sequence[int], Sequence[float]]]) -> go.Figure:
    fig = go.Figure()
    for name, (steps, losses) in curves.items():
        fig.add_trace(go.Scatter(x=list(steps), y=list(losses), mode="lines+markers", name=defense_label(name),
                                 line=dict(color=defense_colour(name))))
    positive = all(min(losses, default=1) > 0 for _, losses in curves.values())
    # The legend below the plot: above it, eight defenses' names ran into the title.
    fig.update_layout(title="Attack loss (gradient mismatch)", xaxis_title="attack step", yaxis_title="loss",
                      yaxis_type="log" if positive else "linear", margin=_MARGIN, height=340,
                      legend=dict(orientation="h", yanchor="top", y=-0.3, xanchor="left", x=0.0))
    return plain_numbers(fig)


def roughness_bars(layers: Sequence[object]) -> go.Figure:
    """The adaptive attacker's view of a defended update: per conv layer, each output channel's ratio of
    high- to low-frequency kernel energy (log scale), the channels the defense noised in vermillion and
    the ones the attacker flagged outlined."""
    layers = list(layers)
    fig = make_subplots(rows=1, cols=max(len(layers), 1), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[str(getattr(l, "layer")) for l in layers] or [""])
    for col, layer in enumerate(layers, 1):
        values = np.asarray(getattr(layer, "roughness"), dtype=float)
        noised = set(int(c) for c in getattr(layer, "noised"))
        flagged = set(int(c) for c in getattr(layer, "flagged"))
        idx = np.arange(values.size)
        is_noised = np.array([i in noised for i in idx], dtype=bool)
        for mask, name, colour in ((~is_noised, "sent clean", UNSELECTED), (is_noised, "noised by TIP", SELECTED)):
            if not mask.any():
                continue
            fig.add_trace(go.Bar(
                x=idx[mask], y=np.maximum(values[mask], 1e-12), name=name, marker_color=colour, width=BAR_WIDTH,
                marker_line=dict(color=["#000000" if i in flagged else colour for i in idx[mask]],
                                 width=[2.5 if i in flagged else 0 for i in idx[mask]]),
                showlegend=col == 1, legendgroup=name,
                customdata=[["flagged by the attacker" if i in flagged else "not flagged"] for i in idx[mask]],
                hovertemplate="channel %{x}<br>E_hf / E_lf = %{y:.3g}<br>%{customdata[0]}<extra>" + name + "</extra>",
            ), row=1, col=col)
        # One axis title under the middle panel and automatic ticks: three titles and a tick per channel side
        # by side ran into each other on a phone.
        middle = (len(layers) + 1) // 2
        fig.update_xaxes(title_text="output channel" if col == middle else None, row=1, col=col)
    if layers:  # the black outline in the legend (a swatch only)
        fig.add_trace(go.Bar(x=[None], y=[None], name="flagged as noised by the attacker", marker_color="#FFFFFF",
                             width=BAR_WIDTH, marker_line=dict(color="#000000", width=2.5), hoverinfo="skip"),
                      row=1, col=1)
    fig.update_yaxes(type="log", tickformat=".0e")
    fig.update_yaxes(title_text="E_hf / E_lf (log)", row=1, col=1)
    fig.update_layout(
        title=_title_above("What the attacker sees: each received<br>channel's high- to low-frequency energy",
                           gap=28),
        barmode="overlay", margin=dict(l=10, r=10, t=40, b=10), height=360,
        legend=dict(orientation="h", yanchor="top", y=-0.35, xanchor="left", x=0.0),
    )
    return plain_numbers(fig)


# ------------------------------------------------------------------------------------------ privacy curves

ATTACKER_DASH = {"naive": "dash", "adaptive": "solid"}
ATTACKER_SYMBOL = {"naive": "circle-open", "adaptive": "circle"}
ATTACKER_LABELS = {"naive": "naive attacker", "adaptive": "adaptive attacker"}
CURVE_AXES = {
    "accuracy": ("held-out accuracy after defended FedAvg rounds<br>(utility: right is better)", "linear"),
    "update_cosine": ("cosine of the defended to the clean update<br>(utility proxy: right is better)", "linear"),
    "noise_scale": ("noise scale (log)", "log"),
    "noise_to_signal": ("noise-to-signal on the perturbed slices (log)", "log"),
}


def _curves(points: Sequence[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """Points grouped into curves by (defense, knob, attacker), each sorted by strength."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for p in points:
        groups.setdefault((str(p["defense"]), str(p.get("knob") or ""), str(p["attacker"])), []).append(p)
    order = list(defense_labels())
    keys = sorted(groups, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[0], k[1],
                                         0 if k[2] == "naive" else 1))
    return {k: sorted(groups[k], key=lambda p: float(p["strength"])) for k in keys}


def _curve_hover(defense: str, attacker: str) -> str:
    return (f"<b>{defense_label(defense)}</b> · {ATTACKER_LABELS.get(attacker, attacker)} (%{{customdata[0]}})"
            "<br>%{customdata[1]} = %{customdata[2]:.3g}<br>attack PSNR %{customdata[3]:.1f} ± %{customdata[4]:.1f} dB"
            "<br>SSIM %{customdata[5]:.3f} · label accuracy %{customdata[6]:.2f}"
            "<br>held-out accuracy %{customdata[7]}<br>update cosine %{customdata[8]:.3f}"
            "<br>noise-to-signal %{customdata[9]:.3g} · %{customdata[10]} images<extra></extra>")


def _curve_customdata(pts: Sequence[dict]) -> list[list[object]]:
    return [[p["attack"], knob_symbol(str(p["defense"]), str(p.get("knob") or "")) or "—", float(p["strength"]), float(p["psnr"]),
             float(p["psnr_std"]), float(p["ssim"]), float(p["label_accuracy"]),
             "—" if p.get("accuracy") is None else f"{float(p['accuracy']):.3f}", float(p["update_cosine"]),
             float(p["noise_to_signal"]), int(p["images"])] for p in pts]


def _reference_lines(fig: go.Figure, reference: dict, annotate: bool = True, **where: object) -> None:
    for key, text, dash in (("grey_psnr", "constant grey guess", "dot"), ("random_psnr", "random image", "dashdot")):
        value = reference.get(key)
        if value is None:
            continue
        label = dict(annotation_text=f"{text}: {float(value):.1f} dB", annotation_position="top right",
                     annotation_font=dict(size=10, color="#555555"),
                     annotation_bgcolor="rgba(255,255,255,0.75)") if annotate else {}
        fig.add_hline(y=float(value), line=dict(color="#555555", width=1, dash=dash), **label, **where)


def privacy_curves_figure(points: Sequence[dict], reference: dict, x: str = "accuracy") -> go.Figure:
    """Attack PSNR against utility (or noise), one colour per defense: the naive attacker dashed with open
    markers, the adaptive attacker (who knows the defense) solid; random-image and grey-guess PSNR as lines."""
    title, axis_type = CURVE_AXES.get(x, (x, "linear"))
    curves = _curves(points)
    knobs: dict[str, set[str]] = {}
    for defense, knob, _ in curves:
        knobs.setdefault(defense, set()).add(knob)
    fig = go.Figure()
    # The legend: one entry per defense (its colour; a click hides both of its curves) and one per line style,
    # below the plot. Sixteen "defense · attacker" entries beside it squeezed the plot away on a phone.
    _style_legend(fig)
    shown: set[str] = set()
    for (defense, knob, attacker), pts in curves.items():
        pts = [p for p in pts if p.get(x) is not None and (axis_type != "log" or float(p[x]) > 0)]
        if not pts:
            continue
        if defense not in shown:
            shown.add(defense)
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=defense_label(defense),
                                     legendgroup=defense, hoverinfo="skip",
                                     marker=dict(color=defense_colour(defense), symbol="square", size=10)))
        name = f"{defense_label(defense)} · {ATTACKER_LABELS.get(attacker, attacker)}"
        if len(knobs[defense]) > 1 and knob:
            name += f" ({knob_symbol(defense, knob)})"
        colour = defense_colour(defense)
        fig.add_trace(go.Scatter(
            x=[float(p[x]) for p in pts], y=[float(p["psnr"]) for p in pts], name=name, legendgroup=defense,
            mode="lines+markers" if len(pts) > 1 else "markers",
            line=dict(color=colour, dash=ATTACKER_DASH.get(attacker, "solid"), width=2),
            marker=dict(color=colour, symbol=ATTACKER_SYMBOL.get(attacker, "circle"), size=9,
                        line=dict(color=colour, width=2)),
            customdata=_curve_customdata(pts), hovertemplate=_curve_hover(defense, attacker), showlegend=False,
        ))
    _reference_lines(fig, reference)
    fig.update_layout(
        title="Privacy–utility frontier", xaxis_title=title, xaxis_type=axis_type,
        yaxis_title="attack PSNR (dB), lower is more private", margin=_MARGIN, height=560,
        legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0.0),
    )
    return plain_numbers(fig)


def attacker_style(attacker: str) -> str:
    """How a chart draws an attacker's curves, in words (the tour's text takes it from here)."""
    dash = "dashed" if ATTACKER_DASH[attacker] == "dash" else "solid"
    return f"{dash}, {'open' if ATTACKER_SYMBOL[attacker].endswith('-open') else 'filled'} markers"


def _style_legend(fig: go.Figure, **where: object) -> None:
    """Legend entries for the two line styles, in neutral grey."""
    for attacker in ("naive", "adaptive"):
        fig.add_trace(go.Scatter(
            x=[None], y=[None], mode="lines+markers", name=ATTACKER_LABELS[attacker], hoverinfo="skip",
            line=dict(color="#444444", dash=ATTACKER_DASH[attacker], width=2),
            marker=dict(color="#444444", symbol=ATTACKER_SYMBOL[attacker], size=8, line=dict(color="#444444", width=2)),
        ), **where)


def _wrap_title(text: str) -> str:
    """A subplot title over a narrow panel (a phone's third of 390 px): a line break after each comma."""
    return text.replace(", ", ",<br>")


def strength_facets(points: Sequence[dict], reference: dict) -> go.Figure:
    """One panel per defense knob: attack PSNR against the knob's value, naive (dashed) and adaptive (solid)."""
    curves = _curves(points)
    panels: list[tuple[str, str]] = []
    for defense, knob, _ in curves:
        if knob and (defense, knob) not in panels:  # the baseline has no knob: it is the reference, not a panel
            panels.append((defense, knob))
    if not panels:
        panels = [(next(iter(curves))[0] if curves else "", "")]
    cols = min(len(panels), 3)  # four titles side by side ran into each other on a phone
    rows = (len(panels) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.05, vertical_spacing=0.22,
                        subplot_titles=[_wrap_title(f"{defense_label(d)}: {knob_symbol(d, k)}" if k else defense_label(d))
                                        for d, k in panels])
    fig.update_annotations(font_size=12)
    _style_legend(fig, row=1, col=1)
    for i, (defense, knob) in enumerate(panels):
        row, col = i // cols + 1, i % cols + 1
        values = []
        for attacker in ("naive", "adaptive"):
            pts = curves.get((defense, knob, attacker), [])
            if not pts:
                continue
            values += [float(p["strength"]) for p in pts]
            colour = defense_colour(defense)
            legend = ATTACKER_LABELS.get(attacker, attacker)
            fig.add_trace(go.Scatter(
                x=[float(p["strength"]) for p in pts], y=[float(p["psnr"]) for p in pts],
                error_y=dict(type="data", array=[float(p["psnr_std"]) for p in pts], thickness=1, width=3),
                mode="lines+markers", name=f"{defense_label(defense)} · {legend}", showlegend=False,
                line=dict(color=colour, dash=ATTACKER_DASH.get(attacker, "solid"), width=2),
                marker=dict(color=colour, symbol=ATTACKER_SYMBOL.get(attacker, "circle"), size=8,
                            line=dict(color=colour, width=2)),
                customdata=_curve_customdata(pts), hovertemplate=_curve_hover(defense, attacker),
            ), row=row, col=col)
        positive = [v for v in values if v > 0]
        log = len(positive) == len(values) and positive and max(positive) / min(positive) > 20
        fig.update_xaxes(type="log" if log else "linear", title_text=knob_symbol(defense, knob) or None, row=row, col=col)
        _reference_lines(fig, reference, annotate=i == len(panels) - 1, row=row, col=col)
    fig.update_yaxes(title_text="attack PSNR (dB)", col=1)
    fig.update_layout(title="Attack PSNR against<br>each defense's strength", margin=dict(l=10, r=10, t=110, b=10),
                      height=300 * rows + 110,
                      legend=dict(orientation="h", yanchor="top", y=-0.3 / rows, xanchor="left", x=0.0))
    return plain_numbers(fig)


# ------------------------------------------------------------------------------------------ what leaks

SENT_EXACTLY = "#E5E8EC"  # light grey: a channel the server receives exactly as the client computed it
LEAK_PANELS = ("computed by the client", "received by the server", "difference (what the defense added)")
# The same, over three panels a phone's width: short lines (they ran into each other at 390 px).
LEAK_TITLES = ("computed<br>by client", "received<br>by server", "difference<br>(noise)")


def _ragged(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Rows of different lengths (C_out per layer) as one matrix padded with NaN (drawn blank)."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = np.asarray(r, dtype=float)
    return out


def _log10_positive(z: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)


def channel_energy_map(layers: Sequence[str], clean: Sequence[np.ndarray], received: Sequence[np.ndarray],
                       difference: Sequence[np.ndarray]) -> go.Figure:
    """One row per conv layer, one cell per output channel: Σ g² of the channel's kernel gradient, clean,
    received and their difference, on one log colour scale. Difference cells that are exactly zero (sent
    unchanged) are light grey; cells with no value (0 energy, or past a layer's last channel) stay blank."""
    mats = [_ragged(m) for m in (clean, received, difference)]
    logs = [_log10_positive(m) for m in mats]
    finite = np.concatenate([l[np.isfinite(l)] for l in logs])
    zmin, zmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if zmax - zmin < 1e-9:
        zmax = zmin + 1.0
    fig = make_subplots(rows=1, cols=3, subplot_titles=LEAK_TITLES, shared_yaxes=True, horizontal_spacing=0.03)
    fig.update_annotations(font_size=12)
    y = list(layers)
    for col, (raw, z) in enumerate(zip(mats, logs), 1):
        x = np.arange(raw.shape[1])
        if col == 3:  # first the exactly-unchanged cells, in grey, under the coloured ones
            exact = np.where(raw == 0, 1.0, np.nan)
            fig.add_trace(go.Heatmap(
                z=exact, x=x, y=y, colorscale=[[0, SENT_EXACTLY], [1, SENT_EXACTLY]], showscale=False,
                hovertemplate="%{y}, channel %{x}<br>sent exactly: difference 0<extra></extra>",
                name="sent exactly",
            ), row=1, col=col)
        fig.add_trace(go.Heatmap(
            z=z, x=x, y=y, customdata=raw, colorscale="Viridis", zmin=zmin, zmax=zmax, showscale=col == 3,
            colorbar=dict(thickness=8, len=0.9, title="log₁₀ Σg²", tickformat=".1f"),
            hovertemplate="%{y}, channel %{x}<br>Σ g² = %{customdata:.3g}<extra>" + LEAK_PANELS[col - 1]
                          + "</extra>",
            name=LEAK_PANELS[col - 1],
        ), row=1, col=col)
        # One axis title under the middle panel: three side by side ran into each other on a phone.
        fig.update_xaxes(title_text="output channel" if col == 2 else None, showgrid=False, zeroline=False,
                         row=1, col=col)
    fig.update_yaxes(autorange="reversed", showgrid=False, type="category", row=1, col=1)
    fig.update_layout(title=_title_above("Kernel-gradient energy per output channel,<br>every conv layer "
                                         "(log colour scale)", gap=36),
                      margin=dict(l=10, r=10, t=40, b=10), height=170 + 24 * max(len(y), 6))
    return plain_numbers(fig)


def layer_energy_figure(layer: str, clean: np.ndarray, received: np.ndarray, selected: Iterable[int]) -> go.Figure:
    """One layer's channels: what the client computed (grey circles) and what the server receives (crosses,
    vermillion where the defense noised the channel); on channels sent exactly the two coincide."""
    clean, received = np.asarray(clean, dtype=float), np.asarray(received, dtype=float)
    chosen = set(int(c) for c in selected)
    idx = np.arange(clean.size)
    colours = [SELECTED if i in chosen else OKABE_ITO[0] for i in idx]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=idx, y=clean, mode="markers", name="computed by the client",
                             marker=dict(color=UNSELECTED, size=10, symbol="circle-open", line=dict(width=2)),
                             hovertemplate="channel %{x}<br>Σ g² = %{y:.3g}<extra>client</extra>"))
    fig.add_trace(go.Scatter(x=idx, y=received, mode="markers", name="received (vermillion: noised)",
                             marker=dict(color=colours, size=7, symbol="x"),
                             hovertemplate="channel %{x}<br>Σ g² = %{y:.3g}<extra>server</extra>"))
    positive = np.concatenate([clean[clean > 0], received[received > 0]])
    fig.update_layout(title=f"{layer}: energy of each output<br>channel's kernel gradient",
                      xaxis_title="output channel", yaxis_title="Σ g² (log)",
                      yaxis_type="log" if positive.size else "linear", margin=_MARGIN, height=320,
                      legend=dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0.0))
    return plain_numbers(fig)


def fc_rows_figure(rows: np.ndarray, row_sums: np.ndarray, true_label: int, inferred: int,
                   class_names: Sequence[str]) -> go.Figure:
    """The fc weight gradient as received, one row per class (diverging colours), and each row's sum: iDLG
    takes the class with the most negative sum as the label."""
    rows, sums = np.asarray(rows, dtype=float), np.asarray(row_sums, dtype=float)
    names = [f"{i} {class_names[i]}" if i < len(class_names) else str(i) for i in range(len(sums))]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=("fc weight gradient ∂L/∂W<br>(row: class, column: feature)",
                                        "row sum<br>Σᵢ ∂L/∂W_ci"))
    fig.update_annotations(font_size=12)
    peak = float(np.abs(rows).max()) if rows.size else 0.0
    peak = peak if peak > 0 else 1.0
    fig.add_trace(go.Heatmap(
        z=rows, y=names, colorscale=DIVERGING, zmid=0, zmin=-peak, zmax=peak,
        colorbar=dict(thickness=8, len=0.55, orientation="h", x=0.31, xanchor="center", y=-0.02, yanchor="top",
                      tickformat=_tickformat(peak)),
        hovertemplate="class %{y}, feature %{x}<br>%{z:.3g}<extra></extra>",
    ), row=1, col=1)
    colours = [SELECTED if i == true_label else UNSELECTED for i in range(len(sums))]
    fig.add_trace(go.Bar(x=sums, y=names, orientation="h", marker_color=colours, showlegend=False,
                         hovertemplate="class %{y}<br>row sum %{x:.3g}<extra></extra>"), row=1, col=2)
    # Beside the zero line, on the side away from the (negative) bar, so the bar never hides the text; short,
    # to fit half of a phone's panel (the class is the row's own label, and the page names it below).
    negative = sums[inferred] < 0
    fig.add_annotation(x=0, y=names[inferred], xref="x2", yref="y2", showarrow=False, xshift=4 if negative else -4,
                       xanchor="left" if negative else "right", text="◀ iDLG" if negative else "iDLG ▶",
                       font=dict(size=12))
    fig.update_yaxes(autorange="reversed", type="category", row=1, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, row=1, col=1)
    fig.update_xaxes(tickformat=_tickformat(float(np.abs(sums).max()) if sums.size else 1.0), row=1, col=2)
    fig.update_layout(title=_title_above("The fc layer as the server receives it:<br>the label is in the signs",
                                         gap=36),
                      margin=dict(l=10, r=10, t=40, b=10), height=160 + 24 * max(len(sums), 5))
    return plain_numbers(fig)
