"""Attention: one (layer, head) pattern, or a layers x heads grid of thumbnails."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .theme import ATTENTION, check_index, check_unknown, clamp, fmt, label, layout, title_line

ATTENTION_OPTIONS = ["layer", "head", "grid", "template", "title", "width", "height", "colorscale"]
_HOVER_LIMIT = 200_000  # grid cells with a per-cell hover text; larger grids hover per thumbnail


def _layer_index(result, layer: Any) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
        raise WorkbenchError(f"layer must be an int, not {layer!r}.")
    layers = [int(x) for x in result.layers]
    if int(layer) not in layers:
        raise WorkbenchError(
            f"layer={layer} is not in this attention result; it has layers {layers} "
            "(run wb.attention(model, prompt, layers=[...]) to get others)."
        )
    return layers.index(int(layer))


def plot_attention(
    result,
    *,
    layer: int | None = None,
    head: int | None = None,
    grid: bool | None = None,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    colorscale: Any = None,
    **unknown: Any,
):
    """`plot(layer=l, head=h)`: the pattern, queries as rows (top to bottom) and keys as columns.

    `plot()` or `plot(grid=True)`: every (layer, head) pattern as a thumbnail in a layers x heads grid
    (one heatmap; the tiles are separated by empty cells), on one 0..1 scale.
    """
    import plotly.graph_objects as go

    check_unknown("AttentionResult.plot()", unknown, ATTENTION_OPTIONS)
    pat = np.asarray(result.patterns)
    if pat.ndim != 4 or 0 in pat.shape or not result.layers:
        raise WorkbenchError(f"This attention result is empty (patterns shape {pat.shape}); nothing to plot.")
    n_l, n_h, n_q, n_k = pat.shape
    tokens = list(result.tokens)
    if grid is None:
        grid = layer is None and head is None
    if grid:
        if layer is not None or head is not None:
            raise WorkbenchError("grid=True draws every layer and head; drop layer= and head=, or grid=True.")
        return _grid(result, pat, template, title, width, height, colorscale)
    if layer is None or head is None:
        raise WorkbenchError("Give both layer= and head= for one pattern, or grid=True for all of them.")
    li = _layer_index(result, layer)
    h = check_index("head", head, n_h, "model's head axis")
    z = pat[li, h]
    q_labels = [label(t, 12) for t in tokens[:n_q]]
    k_labels = [label(t, 12) for t in tokens[:n_k]]
    hover = [
        [
            f"query {q} ({label(tokens[q])}) \u2192 key {k} ({label(tokens[k])})<br>weight {fmt(z[q, k])}"
            for k in range(n_k)
        ]
        for q in range(n_q)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(n_k)),
            y=list(range(n_q)),
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=colorscale or ATTENTION,
            zmin=0.0,
            zmax=1.0,
            colorbar=dict(title=dict(text="attention weight", side="right"), thickness=14),
        )
    )
    fig.update_xaxes(
        tickmode="array",
        tickvals=list(range(n_k)),
        ticktext=k_labels,
        tickangle=-45,
        title=dict(text="key (token)"),
    )
    fig.update_yaxes(
        tickmode="array",
        tickvals=list(range(n_q)),
        ticktext=q_labels,
        autorange="reversed",
        title=dict(text="query (token)"),
        scaleanchor="x",
        constrain="domain",
    )
    fig.update_xaxes(constrain="domain")
    fig.update_xaxes(showgrid=False, zeroline=False)
    fig.update_yaxes(showgrid=False, zeroline=False)
    side = clamp(n_k * 36, 300, 1000)
    layout(
        fig,
        title=title if title is not None else title_line(result.options, f"layer {layer}, head {h}"),
        template=template,
        width=width,
        auto_width=side + 230,
        height=height,
        auto_height=side + 200,
    )
    return fig


def grid_matrix(pat: np.ndarray) -> np.ndarray:
    """The thumbnails tiled into one matrix: tile (l, h) at rows l*(T+1).., cols h*(T+1).., NaN gaps."""
    n_l, n_h, n_q, n_k = pat.shape
    out = np.full((n_l * (n_q + 1) - 1, n_h * (n_k + 1) - 1), np.nan, dtype=np.float32)
    for li in range(n_l):
        for h in range(n_h):
            out[li * (n_q + 1) : li * (n_q + 1) + n_q, h * (n_k + 1) : h * (n_k + 1) + n_k] = pat[li, h]
    return out


def _grid(result, pat, template, title, width, height, colorscale):
    import plotly.graph_objects as go

    n_l, n_h, n_q, n_k = pat.shape
    tokens = list(result.tokens)
    layers = [int(x) for x in result.layers]
    z = grid_matrix(pat)
    hover = None
    if z.size <= _HOVER_LIMIT:
        hover = [["" for _ in range(z.shape[1])] for _ in range(z.shape[0])]
        for li in range(n_l):
            for h in range(n_h):
                for q in range(n_q):
                    row = hover[li * (n_q + 1) + q]
                    for k in range(n_k):
                        row[h * (n_k + 1) + k] = (
                            f"layer {layers[li]}, head {h}<br>query {q} ({label(tokens[q])}) \u2192 "
                            f"key {k} ({label(tokens[k])})<br>weight {fmt(pat[li, h, q, k])}"
                        )
    fig = go.Figure(
        go.Heatmap(
            z=z,
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>"
            if hover is not None
            else "weight %{z:.3g}<extra></extra>",
            colorscale=colorscale or ATTENTION,
            zmin=0.0,
            zmax=1.0,
            hoverongaps=False,
            colorbar=dict(title=dict(text="attention weight", side="right"), thickness=14),
        )
    )
    fig.update_xaxes(
        tickmode="array",
        tickvals=[h * (n_k + 1) + (n_k - 1) / 2 for h in range(n_h)],
        ticktext=[str(h) for h in range(n_h)],
        title=dict(text="head"),
        showgrid=False,
        zeroline=False,
    )
    fig.update_yaxes(
        tickmode="array",
        tickvals=[li * (n_q + 1) + (n_q - 1) / 2 for li in range(n_l)],
        ticktext=[str(x) for x in layers],
        autorange="reversed",
        title=dict(text="layer"),
        scaleanchor="x",
        constrain="domain",
        showgrid=False,
        zeroline=False,
    )
    fig.update_xaxes(constrain="domain")
    thumb = clamp(600 / max(n_h, 1), 28, 90)
    layout(
        fig,
        title=title if title is not None else title_line(result.options, "layers \u00d7 heads"),
        template=template,
        width=width,
        auto_width=clamp(200 + n_h * thumb, 480, 1400),
        height=height,
        auto_height=clamp(170 + n_l * thumb * n_q / max(n_k, 1), 400, 2400),
    )
    return fig
