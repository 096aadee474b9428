"""Sweeps ([layer, position], [layer, head], [layer, position, head]) as heatmaps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .theme import (
    DIVERGING,
    SEQUENTIAL,
    check_choice,
    check_index,
    check_unknown,
    clamp,
    escape,
    fmt,
    label,
    layout,
    symmetric_range,
    title_line,
)

SWEEP_WHAT = ("normalized", "value", "change")
SWEEP_OPTIONS = ["what", "head", "template", "title", "width", "height", "colorscale", "zmin", "zmax"]


def _has_normalized(result) -> bool:
    c, k = result.clean_mean, result.corrupt_mean
    return math.isfinite(c) and math.isfinite(k) and c != k


def sweep_z(result, what: str) -> tuple[np.ndarray, str]:
    """The array a sweep figure shows for `what`, and its colour-bar title (units)."""
    metric = str(result.options.get("metric", "metric"))
    if what == "normalized":
        if not _has_normalized(result):
            raise WorkbenchError(
                "what='normalized' needs finite, different clean and corrupt baselines "
                f"(clean={fmt(result.clean_mean)}, corrupt={fmt(result.corrupt_mean)}); use what='value' or 'change'."
            )
        return result.normalized, "normalised effect"
    if what == "change":
        return (result.values - np.float32(result.clean_mean)).astype(np.float32), f"\u0394 {metric} vs clean"
    return result.values, metric


def plot_sweep(
    result,
    *,
    what: str | None = None,
    head: int | None = None,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    colorscale: Any = None,
    zmin: float | None = None,
    zmax: float | None = None,
    **unknown: Any,
):
    """Heatmap of a sweep.

    what: "normalized" (the default when clean and corrupt differ: (m - corrupt) / (clean - corrupt)),
    "change" (m - clean; the default for ablation sweeps, which have no corrupt run) or "value" (the raw
    metric). [layer, position, head] sweeps draw one panel per head sharing one colour scale; `head=h`
    draws that head alone. Effects use a diverging scale centred at 0; raw values of one sign a
    sequential one. Common options (every figure): template (a plotly template name or object; default:
    plotly's default), title (used as given: your own text may use plotly's markup; the first "<br>"
    starts the subtitle), width, height (pixels; default from the grid's size), colorscale, zmin, zmax.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    check_unknown("SweepResult.plot()", unknown, SWEEP_OPTIONS)
    values = np.asarray(result.values)
    axes = tuple(result.axes)
    if values.size == 0:
        raise WorkbenchError(f"This sweep has no cells (shape {values.shape}); there is nothing to plot.")
    if values.ndim != len(axes):
        raise WorkbenchError(f"The sweep's values have shape {values.shape} but its axes are {axes}.")
    if what is None:
        what = "normalized" if _has_normalized(result) else "change"
    check_choice("what", what, SWEEP_WHAT)
    z, unit = sweep_z(result, what)

    heads: list[int] | None = None
    if "head" in axes:
        n_heads = values.shape[axes.index("head")]
        if head is not None:
            h = check_index("head", head, n_heads, "sweep's head axis")
            heads = [h]
        elif len(axes) == 3:
            heads = list(range(n_heads))
    elif head is not None:
        raise WorkbenchError(f"head= applies to head sweeps; this sweep's axes are {axes}.")

    tokens = list(result.tokens)
    n_layers = values.shape[0]
    metric = escape(result.options.get("metric", "metric"))
    # Over a Dataset: the hover shows each cell's standard error (of the metric's mean, and of what is drawn)
    err = (
        np.asarray(result.sem, dtype=np.float64) if getattr(result, "per_example", None) is not None else None
    )
    n_examples = int(getattr(result, "n_examples", 0) or 0)
    z_scale = 1.0
    if err is not None and what == "normalized":
        z_scale = 1.0 / (result.clean_mean - result.corrupt_mean)

    # panels: (z2d [L, C], column labels, column name, hover of one cell)
    e = err if err is not None else np.full(values.shape, np.nan)
    if axes == ("layer", "position"):
        panels = [(z, values, "position", e)]
    elif axes == ("layer", "head"):
        pick = (lambda a: a[:, [heads[0]]]) if heads else (lambda a: a)
        panels = [(pick(z), pick(values), "head", pick(e))]
    elif axes == ("layer", "position", "head"):
        panels = [(z[:, :, h], values[:, :, h], "position", e[:, :, h]) for h in heads]
    else:
        raise WorkbenchError(f"Unknown sweep axes {axes}.")

    finite = z[np.isfinite(z)]
    if finite.size == 0:
        raise WorkbenchError(f"Every cell of this sweep is NaN (what={what!r}); there is nothing to plot.")
    diverging = what != "value" or (finite.size and finite.min() < 0 < finite.max())
    if diverging:
        m = symmetric_range(z)
        lo, hi = (-m if zmin is None else zmin), (m if zmax is None else zmax)
        scale = colorscale or DIVERGING
    else:
        lo = float(finite.min()) if zmin is None else zmin
        hi = float(finite.max()) if zmax is None else zmax
        scale = colorscale or SEQUENTIAL

    n = len(panels)
    ncols = min(n, 3 if n <= 9 else 4)
    nrows = math.ceil(n / ncols)
    subtitles = [f"head {h}" for h in heads] if heads and len(axes) == 3 else None
    fig = make_subplots(
        rows=nrows,
        cols=ncols,
        shared_yaxes=True,
        subplot_titles=subtitles,
        horizontal_spacing=0.04 if n > 1 else 0.0,
        vertical_spacing=min(0.11, 0.36 / max(nrows, 1)) if nrows > 1 else 0.0,
    )
    col_name = panels[0][2]
    for i, (zz, raw, cname, ee) in enumerate(panels):
        n_cols = zz.shape[1]
        if cname == "position":
            col_labels = [label(t, 12) for t in tokens[:n_cols]]
            col_hover = [
                (f"column {escape(tokens[c])}" if err is not None else f"position {c} ({label(tokens[c])})")
                if c < len(tokens)
                else f"position {c}"
                for c in range(n_cols)
            ]
        else:
            idx = heads if heads else list(range(n_cols))
            col_labels = [str(h) for h in idx]
            col_hover = [f"head {h}" for h in idx]
        prefix = f"head {heads[i]}, " if subtitles else ""
        hover = []
        for r in range(n_layers):
            row = []
            for c in range(n_cols):
                line = f"{prefix}layer {r}, {col_hover[c]}<br>{escape(unit)} {fmt(zz[r, c])}"
                if err is not None:
                    line += f" \u00b1 {fmt(abs(ee[r, c] * z_scale))} (sem)"
                if what != "value":
                    line += f"<br>{metric} {fmt(raw[r, c])}"
                    if err is not None:
                        line += f" \u00b1 {fmt(ee[r, c])}"
                if err is not None:
                    line += f"<br>mean over {n_examples} examples"
                row.append(line)
            hover.append(row)
        fig.add_trace(
            go.Heatmap(
                z=zz,
                x=list(range(n_cols)),
                y=list(range(n_layers)),
                hovertext=hover,
                hovertemplate="%{hovertext}<extra></extra>",
                coloraxis="coloraxis",
                xgap=0,
                ygap=0,
                name=f"head {heads[i]}" if subtitles else col_name,
            ),
            row=i // ncols + 1,
            col=i % ncols + 1,
        )
        axis_n = "" if i == 0 else str(i + 1)
        fig.layout[f"xaxis{axis_n}"].update(
            tickmode="array",
            tickvals=list(range(n_cols)),
            ticktext=col_labels,
            tickangle=-45 if cname == "position" else 0,
            title=dict(text="position (token)" if cname == "position" else "head")
            if i // ncols == nrows - 1
            else None,
            showgrid=False,
            zeroline=False,
        )
        fig.layout[f"yaxis{axis_n}"].update(
            title=dict(text="layer") if i % ncols == 0 else None,
            showgrid=False,
            zeroline=False,
            dtick=1 if n_layers <= 16 else (2 if n_layers <= 36 else 5),
        )
    fig.update_layout(
        coloraxis=dict(
            colorscale=scale,
            cmin=lo,
            cmax=hi,
            **({"cmid": 0.0} if diverging and zmin is None and zmax is None else {}),
            colorbar=dict(title=dict(text=escape(unit), side="right"), thickness=14),
        )
    )
    cols_per_panel = panels[0][0].shape[1]
    cell_w = 40 if col_name == "position" else 28
    layout(
        fig,
        title=title if title is not None else title_line(result.options, what),
        template=template,
        width=width,
        height=height,
        auto_width=clamp(150 + ncols * (cols_per_panel * cell_w + 20), 520, 1600),
        auto_height=clamp(130 + nrows * (n_layers * (16 if n == 1 else 10) + 50), 380, 1800),
        top=80 if subtitles else 36,  # room for the panels' "head h" titles
    )
    return fig
