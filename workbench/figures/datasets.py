"""Figures and frames of results over a Dataset: the mean heatmap with each cell's standard error in the
hover, the per-example values of a DatasetValue, and frames with mean, sem and n (or one row per example
and cell, `per_example=True`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .frames import _finish, _pd, sweep_frame
from .heatmap import SWEEP_OPTIONS, plot_sweep
from .theme import SEQUENTIAL, check_unknown, clamp, escape, fmt, layout, prompt_text, title_line

DATASET_VALUE_OPTIONS = ["template", "title", "width", "height", "color"]


def _over(result) -> str:
    return f"mean over {result.n_examples} examples (align {escape(result.options.get('align', 'exact'))})"


def plot_dataset_sweep(result, **options: Any):
    """`plot_sweep` of the mean grid (same options), its hover adding each cell's standard error (sem) and
    the number of examples; the title says how many examples and which alignment."""
    check_unknown(
        "DatasetSweepResult.plot()",
        {k: v for k, v in options.items() if k not in SWEEP_OPTIONS},
        SWEEP_OPTIONS,
    )
    if options.get("title") is None:
        what = options.get("what")
        if what is None:
            c, k = result.clean_mean, result.corrupt_mean
            what = "normalized" if np.isfinite(c) and np.isfinite(k) and c != k else "change"
        options = {**options, "title": title_line(result.options, what, extra=_over(result))}
    return plot_sweep(result, **options)


def dataset_sweep_frame(result, *, per_example: bool = False, **unknown: Any):
    """One row per cell (the SweepResult layout, value = the mean) plus `sem` and `n`; `per_example=True`:
    one row per (example, cell) with `example`, `value` (that example's), `normalized` (by its own
    baselines), `clean`, `corrupt`."""
    check_unknown("DatasetSweepResult.to_frame()", unknown, ["per_example"])
    if not isinstance(per_example, bool):
        raise WorkbenchError(f"per_example= must be True or False, got {per_example!r}.")
    df = sweep_frame(result)
    if not per_example:
        df["sem"] = np.asarray(result.sem, dtype=np.float32).reshape(-1)
        df["n"] = result.n_examples
        return _finish(df, result)
    per = np.asarray(result.per_example)
    norm = np.asarray(result.per_example_normalized)
    n, cells = per.shape[0], int(np.prod(per.shape[1:]))
    long = df.loc[np.tile(np.arange(cells), n)].reset_index(drop=True)
    long.insert(0, "example", np.repeat(np.arange(n), cells))
    long["value"] = per.reshape(-1)
    long["normalized"] = norm.reshape(-1)
    long["clean"] = np.repeat(np.asarray(result.clean, np.float32), cells)
    long["corrupt"] = np.repeat(np.asarray(result.corrupt, np.float32), cells)
    return _finish(long, result)


def dataset_value_frame(v, *, per_example: bool = False, **unknown: Any):
    """The Value layout (value = the mean, clean/corrupt = the means of the baselines) plus `sem` and `n`;
    `per_example=True`: one row per example: example, prompt, value, clean, corrupt, normalized."""
    pd = _pd()
    check_unknown("DatasetValue.to_frame()", unknown, ["per_example"])
    if not isinstance(per_example, bool):
        raise WorkbenchError(f"per_example= must be True or False, got {per_example!r}.")
    if not per_example:
        o = v.options
        places = o.get("cells") or o.get("senders") or [e[:4] for e in o.get("edits") or []]
        if not places:
            places = [(o.get("site"), o.get("layer"), o.get("position"), o.get("head"))]
        n = len(places)
        df = pd.DataFrame(
            {
                "op": [o.get("op")] * n,
                "site": [p[0] for p in places],
                "layer": pd.array([p[1] for p in places], dtype="Int64"),
                "column": [p[2] for p in places],  # a column index or a role name (None: every position)
                "head": pd.array([p[3] for p in places], dtype="Int64"),
                "metric": [o.get("metric")] * n,
                "value": [float(v)] * n,
                "sem": [v.sem] * n,
                "n": [v.n_examples] * n,
                "clean": [v.clean_mean] * n,
                "corrupt": [v.corrupt_mean] * n,
                "normalized": [v.normalized] * n,
            }
        )
        return _finish(df, v)
    per = np.asarray(v.per_example, np.float64)
    clean, corrupt = np.asarray(v.clean, np.float64), np.asarray(v.corrupt, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = (per - corrupt) / (clean - corrupt)
    prompts = [e.clean for e in v.dataset] if v.dataset is not None else [None] * len(per)
    df = pd.DataFrame(
        {
            "example": np.arange(len(per)),
            "prompt": pd.array(prompts, dtype="string"),
            "value": per.astype(np.float32),
            "clean": clean.astype(np.float32),
            "corrupt": corrupt.astype(np.float32),
            "normalized": np.where(np.isfinite(norm), norm, np.nan).astype(np.float32),
        }
    )
    return _finish(df, v)


def plot_dataset_value(
    v,
    *,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    color: str | None = None,
    **unknown: Any,
):
    """Each example's metric as a point (hover: the example's prompt, its value and baselines), with the
    mean and its standard error as a line and a band."""
    import plotly.colors
    import plotly.graph_objects as go

    check_unknown("DatasetValue.plot()", unknown, DATASET_VALUE_OPTIONS)
    per = np.asarray(v.per_example, np.float64)
    if per.size == 0:
        raise WorkbenchError("This DatasetValue has no examples to plot.")
    dot = color or plotly.colors.sample_colorscale(SEQUENTIAL, [0.6])[0]
    prompts = [e.clean for e in v.dataset] if v.dataset is not None else [""] * len(per)
    clean, corrupt = np.asarray(v.clean, np.float64), np.asarray(v.corrupt, np.float64)
    hover = [
        f"example {i}: {prompt_text(prompts[i], 60)}<br>value {fmt(per[i])} · clean {fmt(clean[i])}"
        + (f" · corrupt {fmt(corrupt[i])}" if np.isfinite(corrupt[i]) else "")
        for i in range(len(per))
    ]
    mean, err = float(v), v.sem
    fig = go.Figure(
        go.Scatter(
            x=per,
            y=list(range(len(per))),
            mode="markers",
            marker=dict(color=dot, size=9),
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            name="examples",
        )
    )
    if np.isfinite(err):
        fig.add_vrect(x0=mean - err, x1=mean + err, opacity=0.18, line_width=0, fillcolor=dot)
    fig.add_vline(x=mean, line_dash="dash", annotation_text=f"mean {fmt(mean)} ± {fmt(err)} (sem)")
    metric = escape(v.options.get("metric", "metric"))
    fig.update_xaxes(title=dict(text=metric))
    fig.update_yaxes(title=dict(text="example"), autorange="reversed", dtick=1 if len(per) <= 30 else None)
    layout(
        fig,
        title=title if title is not None else title_line(v.options, extra=_over(v)),
        template=template,
        width=width,
        height=height,
        auto_width=640,
        auto_height=clamp(160 + 22 * len(per), 300, 1200),
    )
    return fig
