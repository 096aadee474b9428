"""The generation lens: each generated token's probability at every layer, and the layer where it committed."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .theme import SEQUENTIAL, check_choice, check_unknown, clamp, fmt, label, layout, title_line

GENERATION_OPTIONS = ["what", "template", "title", "width", "height", "colorscale"]


def plot_generation_lens(
    g,
    *,
    what: str = "prob",
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    colorscale: Any = None,
    **unknown: Any,
):
    """Heatmap: rows layers, columns the generated tokens; each cell the token's probability (what="prob")
    or log10(1 + rank) (what="rank") at that layer, read where it is predicted. Markers: the commit layer."""
    import plotly.graph_objects as go

    check_unknown("GenerationLens.plot()", unknown, GENERATION_OPTIONS)
    check_choice("what", what, ("prob", "rank"))
    prob, rank = np.asarray(g.prob), np.asarray(g.rank)
    if prob.size == 0:
        raise WorkbenchError("This generation lens has no generated tokens; nothing to plot.")
    n_layers, n = prob.shape
    z = prob if what == "prob" else np.log10(1.0 + rank.astype(np.float64))
    hover = [
        [
            f"{label(g.tokens[i])} (token {i}), layer {r}<br>p {fmt(prob[r, i])} · rank {int(rank[r, i])}"
            f"<br>commits at layer {int(g.commit_layer[i])}"
            for i in range(n)
        ]
        for r in range(n_layers)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(n)),
            y=list(range(n_layers)),
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=colorscale or SEQUENTIAL,
            reversescale=what == "rank" and colorscale is None,
            colorbar=dict(title=dict(text="p" if what == "prob" else "log10(1 + rank)", side="right")),
            **(dict(zmin=0.0, zmax=1.0) if what == "prob" else {}),
        )
    )
    committed = [i for i in range(n) if g.commit_layer[i] >= 0]
    fig.add_trace(
        go.Scatter(
            x=committed,
            y=[int(g.commit_layer[i]) for i in committed],
            mode="markers",
            marker=dict(symbol="line-ew-open", size=18, line=dict(width=3, color="#d62728")),
            name="commit layer",
            hoverinfo="skip",
        )
    )
    fig.update_xaxes(
        tickmode="array",
        tickvals=list(range(n)),
        ticktext=[label(t, 12) for t in g.tokens],
        tickangle=-45,
        title=dict(text="generated token"),
        showgrid=False,
        zeroline=False,
    )
    fig.update_yaxes(title=dict(text="layer"), showgrid=False, zeroline=False)
    layout(
        fig,
        title=title if title is not None else title_line(g.options, f"{what} of each generated token"),
        template=template,
        width=width,
        auto_width=clamp(170 + n * 50, 560, 1800),
        height=height,
        auto_height=clamp(170 + n_layers * 20, 400, 1600),
    )
    return fig


def generation_lens_frame(g, **unknown: Any):
    """One row per (layer, generated token): layer, index, token, token_id, prob, rank, commit_layer,
    confident_layer."""
    import pandas as pd

    check_unknown("GenerationLens.to_frame()", unknown, [])
    prob = np.asarray(g.prob)
    n_layers, n = prob.shape
    li, ii = (ix.reshape(-1) for ix in np.indices((n_layers, n)))
    df = pd.DataFrame(
        {
            "layer": li,
            "index": ii,
            "token": pd.array([g.tokens[i] for i in ii], dtype="string"),
            "token_id": np.asarray(g.token_ids, dtype=np.int64)[ii] if n else np.zeros(0, np.int64),
            "prob": prob.reshape(-1),
            "rank": np.asarray(g.rank).reshape(-1),
            "commit_layer": np.asarray(g.commit_layer)[ii],
            "confident_layer": np.asarray(g.confident_layer)[ii],
        }
    )
    df.attrs["options"] = dict(g.options)
    return df
