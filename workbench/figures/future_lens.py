"""Future Lens: the tokens a single hidden state anticipates for t+1..t+n, and its accuracy per layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import WorkbenchError
from ..validate import as_int
from .theme import SEQUENTIAL, check_choice, check_unknown, clamp, fmt, label, layout, title_line

FUTURE_OPTIONS = ["what", "step", "template", "title", "width", "height", "colorscale"]


def plot_future_lens(
    r,
    *,
    what: str = "grid",
    step: int = 2,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    colorscale: Any = None,
    **unknown: Any,
):
    """what="grid": heatmap over (layer, position), each cell the probability of the decoded token for
    t+`step` (1..n_future), its text the decoded token, hover all n_future decoded tokens and the model's own
    continuation. what="accuracy": accuracy per layer, one line per step, the bigram baselines dashed."""
    import plotly.graph_objects as go

    check_unknown("FutureLensResult.plot()", unknown, FUTURE_OPTIONS)
    check_choice("what", what, ("grid", "accuracy"))
    n_layers, n_tokens, n_future, _ = r.top_ids.shape
    if n_layers == 0 or n_tokens == 0:
        raise WorkbenchError("This Future Lens result has no cells; nothing to plot.")
    step = as_int(step, "step", lo=1, hi=n_future) if n_future > 1 else 1
    if what == "accuracy":
        fig = go.Figure()
        for s in range(n_future):
            fig.add_trace(
                go.Scatter(x=r.layer_ids, y=r.accuracy[:, s], mode="lines+markers", name=f"t+{s + 1}")
            )
            fig.add_hline(y=float(r.bigram_baseline[s]), line=dict(dash="dash", width=1),
                          annotation_text=f"bigram t+{s + 1}")  # fmt: skip
        fig.update_xaxes(title=dict(text="layer"))
        fig.update_yaxes(title=dict(text="accuracy vs the model's own continuation"), range=[0, 1.02])
        layout(fig, title=title if title is not None else title_line(r.options, "Future Lens accuracy"),
               template=template, width=width, auto_width=720, height=height, auto_height=440)  # fmt: skip
        return fig
    s = step - 1
    # probability of the decoded token at step s: the top-1 unless EOS was the raw top-1
    probs = np.asarray(r.top_probs)[:, :, s, 0]
    text = [[label(r.predicted[i][j][s], 8) for j in range(n_tokens)] for i in range(n_layers)]
    hover = [
        [
            f"layer {r.layer_ids[i]}, position {r.positions[j]} {label(r.tokens[j])}<br>"
            f"decoded: {' · '.join(label(t) for t in r.predicted[i][j])}<br>"
            f"own: {' · '.join(label(t) for t in r.own[j])}<br>p(t+{step}) {fmt(probs[i, j])}"
            for j in range(n_tokens)
        ]
        for i in range(n_layers)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=probs,
            x=list(range(n_tokens)),
            y=list(range(n_layers)),
            text=text,
            texttemplate="%{text}",
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=colorscale or SEQUENTIAL,
            zmin=0.0,
            zmax=1.0,
            colorbar=dict(title=dict(text=f"p(t+{step})", side="right")),
        )
    )
    fig.update_xaxes(tickmode="array", tickvals=list(range(n_tokens)),
                     ticktext=[label(t, 12) for t in r.tokens], tickangle=-45, showgrid=False, zeroline=False)  # fmt: skip
    fig.update_yaxes(tickmode="array", tickvals=list(range(n_layers)), ticktext=[str(x) for x in r.layer_ids],
                     title=dict(text="layer"), showgrid=False, zeroline=False)  # fmt: skip
    layout(
        fig,
        title=title
        if title is not None
        else title_line(r.options, f"Future Lens: decoded token for t+{step}"),
        template=template,
        width=width,
        auto_width=clamp(170 + n_tokens * 60, 560, 1800),
        height=height,
        auto_height=clamp(170 + n_layers * 22, 400, 1600),
    )
    return fig


def future_lens_frame(r, *, what: str = "predicted", **unknown: Any):
    """what="predicted": one row per (layer, position, step): layer, position, token, step (1 = t+1),
    predicted, predicted_id, own, own_id, correct, prob (of the raw top-1). what="topk": one row per
    (layer, position, step, rank) with token, token_id, prob. what="accuracy": one row per (layer, step)
    with accuracy and bigram_baseline."""
    import pandas as pd

    check_unknown("FutureLensResult.to_frame()", unknown, ["what"])
    check_choice("what", what, ("predicted", "topk", "accuracy"))
    top_ids = np.asarray(r.top_ids)
    n_layers, n_tokens, n_future, k = top_ids.shape
    if what == "accuracy":
        li, si = (ix.reshape(-1) for ix in np.indices((n_layers, n_future)))
        df = pd.DataFrame({"layer": np.asarray(r.layer_ids)[li], "step": si + 1,
                           "accuracy": np.asarray(r.accuracy)[li, si],
                           "bigram_baseline": np.asarray(r.bigram_baseline)[si]})  # fmt: skip
    elif what == "predicted":
        li, ti, si = (ix.reshape(-1) for ix in np.indices((n_layers, n_tokens, n_future)))
        pred = np.asarray(r.predicted_ids)[li, ti, si]
        own = np.asarray(r.own_ids)[ti, si]
        df = pd.DataFrame(
            {
                "layer": np.asarray(r.layer_ids)[li],
                "position": np.asarray(r.positions)[ti],
                "token": pd.array([r.tokens[t] for t in ti], dtype="string"),
                "step": si + 1,
                "predicted": pd.array(
                    [r.predicted[a][b][c] for a, b, c in zip(li, ti, si, strict=True)], dtype="string"
                ),
                "predicted_id": pred,
                "own": pd.array([r.own[b][c] for b, c in zip(ti, si, strict=True)], dtype="string"),
                "own_id": own,
                "correct": pred == own,
                "prob": np.asarray(r.top_probs)[li, ti, si, 0],
            }
        )
    else:
        li, ti, si, ki = (ix.reshape(-1) for ix in np.indices((n_layers, n_tokens, n_future, k)))
        df = pd.DataFrame(
            {
                "layer": np.asarray(r.layer_ids)[li],
                "position": np.asarray(r.positions)[ti],
                "step": si + 1,
                "rank": ki,
                "token": pd.array(
                    [r.top_tokens[a][b][c][d] for a, b, c, d in zip(li, ti, si, ki, strict=True)],
                    dtype="string",
                ),  # fmt: skip
                "token_id": top_ids[li, ti, si, ki].astype(np.int64),
                "prob": np.asarray(r.top_probs)[li, ti, si, ki],
            }
        )
    df.attrs["options"] = dict(r.options)
    return df
