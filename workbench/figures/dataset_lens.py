"""The logit lens over a Dataset: a layers x columns heatmap of the mean metric (hover: its standard error,
the number of examples), and its frame (mean, sem, n per cell, or one row per example and cell)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .frames import _finish, _grid, _pd
from .theme import SEQUENTIAL, check_unknown, clamp, escape, fmt, label, layout, title_line

DATASET_LENS_OPTIONS = ["example", "template", "title", "width", "height", "colorscale", "zmin", "zmax"]


def plot_dataset_lens(
    result,
    *,
    example: int | None = None,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    colorscale: Any = None,
    zmin: float | None = None,
    zmax: float | None = None,
    **unknown: Any,
):
    """Heatmap of `.values` (the mean over examples), layer 0 at the bottom, one column per dataset column;
    hover shows mean ± sem and n. `example=i` draws example i's own values (`.per_example[i]`) instead."""
    import plotly.graph_objects as go

    check_unknown("DatasetLensResult.plot()", unknown, DATASET_LENS_OPTIONS)
    values = np.asarray(result.values, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise WorkbenchError(f"This lens result is empty (values shape {values.shape}); nothing to plot.")
    n_layers, n_cols = values.shape
    err = np.asarray(result.sem, dtype=np.float64)
    n = result.n_examples
    metric = escape(result.options.get("metric", "metric"))
    if example is not None:
        if isinstance(example, bool) or not isinstance(example, int | np.integer) or not 0 <= example < n:
            raise WorkbenchError(f"example= must be an example index 0..{n - 1}, got {example!r}.")
        z = np.asarray(result.per_example[int(example)], dtype=np.float64)
        what = f"example {int(example)}"
    else:
        z = values
        what = f"mean over {n} examples (align {escape(result.options.get('align', 'exact'))})"
    columns = [str(c) for c in result.columns]
    hover = []
    for r in range(n_layers):
        row = []
        for c in range(n_cols):
            line = f"layer {r}, column {escape(columns[c])}<br>{metric} {fmt(z[r, c])}"
            if example is None:
                if np.isfinite(err[r, c]):
                    line += f" \u00b1 {fmt(err[r, c])} (sem)"
                line += f"<br>mean over {n} examples"
            else:
                line += f"<br>(mean over {n} examples {fmt(values[r, c])})"
            row.append(line)
        hover.append(row)
    finite = z[np.isfinite(z)]
    lo = zmin if zmin is not None else (0.0 if finite.size and finite.min() >= 0 else None)
    hi = (
        zmax
        if zmax is not None
        else (1.0 if finite.size and finite.min() >= 0 and finite.max() <= 1 else None)
    )
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(n_cols)),
            y=list(range(n_layers)),
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=colorscale or SEQUENTIAL,
            colorbar=dict(title=dict(text=metric, side="right"), thickness=14),
            zmin=lo,
            zmax=hi,
        )
    )
    fig.update_xaxes(
        tickmode="array",
        tickvals=list(range(n_cols)),
        ticktext=[label(t, 14) for t in columns],
        tickangle=-45,
        title=dict(text=f"column (align {escape(result.options.get('align', 'exact'))})"),
        showgrid=False,
        zeroline=False,
    )
    fig.update_yaxes(
        title=dict(text="layer"),
        showgrid=False,
        zeroline=False,
        dtick=1 if n_layers <= 16 else (2 if n_layers <= 36 else 5),
    )
    layout(
        fig,
        title=title if title is not None else title_line(result.options, extra=what),
        template=template,
        width=width,
        auto_width=clamp(170 + n_cols * 62, 560, 1800),
        height=height,
        auto_height=clamp(170 + n_layers * 20, 400, 1600),
    )
    return fig


def dataset_lens_frame(result, *, per_example: bool = False, **unknown: Any):
    """One row per (layer, column): layer, column (index), label, value (the mean), sem, n, metric;
    `per_example=True`: one row per (example, layer, column) with that example's value."""
    pd = _pd()
    check_unknown("DatasetLensResult.to_frame()", unknown, ["per_example"])
    if not isinstance(per_example, bool):
        raise WorkbenchError(f"per_example= must be True or False, got {per_example!r}.")
    values = np.asarray(result.values, dtype=np.float32)
    labels = np.asarray([str(c) for c in result.columns] + [None], dtype=object)
    metric = result.options.get("metric")
    if per_example:
        per = np.asarray(result.per_example, dtype=np.float32)
        ei, li, ci = _grid(per.shape)
        df = pd.DataFrame(
            {
                "example": ei,
                "layer": li,
                "column": ci,
                "label": pd.array(labels[ci], dtype="string"),
                "value": per.reshape(-1),
                "metric": pd.array([metric] * per.size, dtype="string"),
            }
        )
        return _finish(df, result)
    li, ci = _grid(values.shape)
    df = pd.DataFrame(
        {
            "layer": li,
            "column": ci,
            "label": pd.array(labels[ci], dtype="string"),
            "value": values.reshape(-1),
            "sem": np.asarray(result.sem, dtype=np.float32).reshape(-1),
            "n": result.n_examples,
            "metric": pd.array([metric] * values.size, dtype="string"),
        }
    )
    return _finish(df, result)
