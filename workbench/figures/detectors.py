"""Head detectors and direct logit attribution.

Figures: HeadDetectorScores -> one [layer, head] heatmap per detector side by side (0..1, the top heads
outlined); LogitAttribution -> the heads' [layer, head] map (diverging at 0) beside a bar per MLP and the
embeddings.

Frames: HeadDetectorScores -> one row per (detector, layer, head): detector, layer, head, score, rank (1 = the
highest of its detector), n_queries. LogitAttribution -> one row per part: kind ("head", "mlp", "embed",
"rest"), layer, head, value, sem, n (`per_example=True`: one row per (example, part) with example, metric).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .frames import _finish, _pd
from .theme import DIVERGING, check_unknown, clamp, escape, fmt, layout, symmetric_range

DETECTOR_OPTIONS = ["outline", "template", "title", "width", "height", "colorscale"]
DLA_OPTIONS = ["template", "title", "width", "height", "colorscale", "zmax"]
SEQUENTIAL = "Blues"


def plot_head_detectors(
    result, *, outline: int = 5, template: Any = None, title: str | None = None, width: int | None = None,
    height: int | None = None, colorscale: Any = None, **unknown: Any,
):  # fmt: skip
    """One heatmap per detector [layer (down), head (across)], scores 0..1, its `outline` top heads outlined."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    check_unknown("HeadDetectorScores.plot()", unknown, DETECTOR_OPTIONS)
    if isinstance(outline, bool) or not isinstance(outline, int | np.integer) or outline < 0:
        raise WorkbenchError(
            f"outline= takes a number of top heads to outline (0 for none), got {outline!r}."
        )
    names = result.names
    if not names:
        raise WorkbenchError(
            "These scores hold no detector (none was defined on the prompts): nothing to plot."
        )
    L, H = result.n_layers, result.n_heads
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[n.replace("_", " ") for n in names],
                        horizontal_spacing=0.06)  # fmt: skip
    for i, name in enumerate(names):
        z = np.asarray(result.scores[name], np.float64)
        hover = [
            [f"L{layer}H{head}<br>{name} {fmt(z[layer, head])}" for head in range(H)] for layer in range(L)
        ]
        fig.add_trace(
            go.Heatmap(
                z=z, x=list(range(H)), y=list(range(L)), zmin=0.0, zmax=1.0, colorscale=colorscale or SEQUENTIAL,
                hovertext=hover, hovertemplate="%{hovertext}<extra></extra>", showscale=i == len(names) - 1,
                colorbar=dict(title=dict(text="score")),
            ),
            row=1, col=i + 1,
        )  # fmt: skip
        for (layer, head), _ in result.top(name, int(outline)):
            fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                          line=dict(color="black", width=2), fillcolor="rgba(0,0,0,0)", row=1, col=i + 1)  # fmt: skip
        fig.update_xaxes(title="head", row=1, col=i + 1)
        fig.update_yaxes(autorange="reversed", row=1, col=i + 1, title="layer" if i == 0 else None)
    o = result.options
    if title is None:
        where = (
            f"repeated random tokens: {o.get('n_seqs')} sequences of 2 x {o.get('seq_len')} (seed {o.get('seed')})"
            if o.get("random")
            else f"{len(result.prompts)} prompts"
        )
        title = (
            f"<b>head_detectors</b> \u00b7 mean attention on each detector's target keys<br>{escape(where)}"
        )
    layout(fig, title=title, template=template, width=width, height=height,
           auto_width=clamp(120 + len(names) * (60 + 28 * H), 420, 1500),
           auto_height=clamp(120 + 16 * L, 300, 1200))  # fmt: skip
    return fig


def head_detectors_frame(result, **unknown: Any):
    pd = _pd()
    check_unknown("HeadDetectorScores.to_frame()", unknown, [])
    rows = []
    L, H = result.n_layers, result.n_heads
    layer, head = (ix.reshape(-1) for ix in np.indices((L, H)))
    for name in result.names:
        flat = np.asarray(result.scores[name], np.float64).reshape(-1)
        rank = np.empty(flat.size, np.int64)
        rank[np.argsort(-flat, kind="stable")] = np.arange(1, flat.size + 1)
        rows.append(
            pd.DataFrame(
                {
                    "detector": name,
                    "layer": layer,
                    "head": head,
                    "score": flat.astype(np.float32),
                    "rank": rank,
                    "n_queries": result.counts[name],
                }
            )  # fmt: skip
        )
    df = (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["detector", "layer", "head", "score"])
    )
    return _finish(df, result)


def plot_logit_attribution(
    result, *, template: Any = None, title: str | None = None, width: int | None = None, height: int | None = None,
    colorscale: Any = None, zmax: float | None = None, **unknown: Any,
):  # fmt: skip
    """The heads' attributions [layer, head] (diverging at 0) beside a bar per MLP (by layer) and the embeddings."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    check_unknown("LogitAttribution.plot()", unknown, DLA_OPTIONS)
    heads = np.asarray(result.heads, np.float64)
    L, H = heads.shape
    mlps = np.asarray(result.mlps, np.float64)
    err = result.sem
    m = (
        symmetric_range(np.concatenate([heads.reshape(-1), mlps, [result.embed]]))
        if zmax is None
        else float(zmax)
    )
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.12,
                        subplot_titles=["heads", "MLPs and embeddings"])  # fmt: skip

    def pm(e: Any) -> str:
        return f" \u00b1 {fmt(e)} (sem)" if np.isfinite(e) else ""

    hover = [[f"L{layer}H{h}: {fmt(heads[layer, h])}{pm(err['heads'][layer, h])}" for h in range(H)]
             for layer in range(L)]  # fmt: skip
    fig.add_trace(
        go.Heatmap(z=heads, x=list(range(H)), y=list(range(L)), zmin=-m, zmax=m, colorscale=colorscale or DIVERGING,
                   hovertext=hover, hovertemplate="%{hovertext}<extra></extra>",
                   colorbar=dict(title=dict(text="direct effect"), x=0.5)),
        row=1, col=1,
    )  # fmt: skip
    labels = [f"MLP {layer}" for layer in range(L)] + ["embed"]
    vals = list(mlps) + [result.embed]
    errs = list(np.asarray(err["mlps"], np.float64)) + [err["embed"]]
    fig.add_trace(
        go.Bar(x=vals, y=labels, orientation="h", marker=dict(color=["#4c78a8" if v >= 0 else "#e45756" for v in vals]),
               error_x=dict(type="data", array=[e if np.isfinite(e) else 0 for e in errs], visible=result.n_examples > 1),
               hovertemplate="%{y}: %{x:.4g}<extra></extra>", showlegend=False),
        row=1, col=2,
    )  # fmt: skip
    fig.update_xaxes(title="head", row=1, col=1)
    fig.update_yaxes(title="layer", autorange="reversed", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_xaxes(title="direct effect on the metric", row=1, col=2)
    o = result.options
    if title is None:
        over = (
            f"mean over {result.n_examples} examples"
            if o.get("dataset")
            else escape(repr(result.prompts[0])[:80])
        )
        how = "exact" if result.exact else "first-order"
        title = (
            f"<b>logit_attribution</b> \u00b7 {escape(o.get('metric', ''))} = {fmt(result.metric)} ({how}; rest "
            f"{fmt(result.rest)})<br>direct effect of each part at the last position, final norm scale frozen \u00b7 {over}"
        )
    layout(fig, title=title, template=template, width=width, height=height,
           auto_width=clamp(300 + 30 * H + 260, 600, 1400), auto_height=clamp(120 + 16 * L, 320, 1200))  # fmt: skip
    return fig


def logit_attribution_frame(result, *, per_example: bool = False, **unknown: Any):
    pd = _pd()
    check_unknown("LogitAttribution.to_frame()", unknown, ["per_example"])
    if not isinstance(per_example, bool):
        raise WorkbenchError(f"per_example= must be True or False, got {per_example!r}.")
    L, H = result.heads.shape

    def table(heads, mlps, embed, rest, errs=None) -> Any:
        layer, head = (ix.reshape(-1) for ix in np.indices((L, H)))
        kind = ["head"] * (L * H) + ["mlp"] * L + ["embed", "rest"]
        layers = list(layer) + list(range(L)) + [None, None]
        hs = list(head) + [None] * L + [None, None]
        values = np.concatenate([np.asarray(heads).reshape(-1), np.asarray(mlps).reshape(-1), [embed, rest]])
        df = pd.DataFrame({"kind": kind, "layer": pd.array(layers, dtype="Int64"), "head": pd.array(hs, dtype="Int64"),
                           "value": values.astype(np.float32)})  # fmt: skip
        if errs is not None:
            df["sem"] = np.concatenate([np.asarray(errs["heads"]).reshape(-1), np.asarray(errs["mlps"]).reshape(-1),
                                        [errs["embed"], errs["rest"]]]).astype(np.float32)  # fmt: skip
        return df

    if per_example:
        p = result.per_example
        parts = []
        for i in range(result.n_examples):
            df = table(p["heads"][i], p["mlps"][i], p["embed"][i], p["rest"][i])
            df.insert(0, "example", i)
            df["metric"] = np.float32(p["metric"][i])
            parts.append(df)
        return _finish(pd.concat(parts, ignore_index=True), result)
    df = table(result.heads, result.mlps, result.embed, result.rest, result.sem)
    df["n"] = result.n_examples
    return _finish(df, result)
