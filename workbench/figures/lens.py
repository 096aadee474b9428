"""The logit lens as a layers x positions heatmap: top-1 token in the cells, top-k on hover."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .theme import (
    SEQUENTIAL,
    check_choice,
    check_unknown,
    clamp,
    fmt,
    label,
    layout,
    title_line,
    visible_token,
)

LENS_WHAT = ("prob", "rank", "entropy", "kl")
LENS_OPTIONS = ["what", "token", "cell_text", "template", "title", "width", "height", "colorscale"]


def lens_z(result, what: str, token: str | int | None) -> tuple[np.ndarray, str, str | None]:
    """(array shown, colour-bar title, the token it is about) for `what`.

    prob: the top-1 probability, or `token`'s probability when given. rank: `token`'s rank (0 = top-1;
    default token: the last layer's top-1 at the last position, the model's prediction). entropy and
    kl: nats.
    """
    if what == "entropy":
        return np.asarray(result.entropy), "entropy (nats)", None
    if what == "kl":
        return np.asarray(result.kl), "KL(final \u2016 layer) (nats)", None
    if what == "prob" and token is None:
        return np.asarray(result.top_probs[..., 0]), "top-1 probability", None
    if token is None:
        token = result.top_tokens[-1][-1][0]
    name = token if isinstance(token, str) else f"id {token}"
    try:
        arr = result.prob(token) if what == "prob" else result.rank(token)
    except WorkbenchError:
        raise
    except Exception as e:  # a result without its model (unpickled) cannot compute new tokens
        raise WorkbenchError(f"Cannot compute the lens {what} of token {name!r} for this result: {e}") from e
    unit = f"p({label(name)})" if what == "prob" else f"rank of {label(name)}"
    return np.asarray(arr), unit, name


def plot_lens(
    result,
    *,
    what: str = "prob",
    token: str | int | None = None,
    cell_text: bool | None = None,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    colorscale: Any = None,
    **unknown: Any,
):
    """Heatmap of the lens: rows layers (0 at the bottom), columns positions with token tick labels.

    The cells show the layer's top-1 token (`cell_text=False` hides it; by default shown up to 40
    positions); hover shows the top-k with probabilities, entropy and KL. what="rank" colours by
    log10(1 + rank) with the colour bar labelled in ranks (the figure's customdata holds the ranks).
    """
    import plotly.graph_objects as go

    check_unknown("LensResult.plot()", unknown, LENS_OPTIONS)
    check_choice("what", what, LENS_WHAT)
    top_probs = np.asarray(result.top_probs)
    if top_probs.ndim != 3 or 0 in top_probs.shape:
        raise WorkbenchError(
            f"This lens result is empty (top_probs shape {top_probs.shape}); nothing to plot."
        )
    n_layers, n_pos, k = top_probs.shape
    if token is not None and what in ("entropy", "kl"):
        raise WorkbenchError(f"token= applies to what='prob' or 'rank', not what={what!r}.")
    z, unit, tok_name = lens_z(result, what, token)
    tokens = list(result.tokens)
    top = result.top_tokens

    cell_labels = [[label(top[r][c][0], 8) for c in range(n_pos)] for r in range(n_layers)]
    hover = []
    for r in range(n_layers):
        row = []
        for c in range(n_pos):
            lines = [f"layer {r}, position {c} ({label(tokens[c]) if c < len(tokens) else ''})"]
            for j in range(k):
                lines.append(f"{j + 1}. {label(top[r][c][j])}  {fmt(top_probs[r, c, j])}")
            lines.append(f"entropy {fmt(result.entropy[r, c])} \u00b7 KL {fmt(result.kl[r, c])}")
            if tok_name is not None:
                lines.append(f"{unit} {fmt(z[r, c]) if what == 'prob' else int(z[r, c])}")
            row.append("<br>".join(lines))
        hover.append(row)

    show_text = cell_text if cell_text is not None else n_pos <= 40
    colorbar: dict[str, Any] = dict(title=dict(text=unit, side="right"), thickness=14)
    extra: dict[str, Any] = {}
    if what == "rank":
        shown = np.log10(1.0 + z.astype(np.float64))
        top_tick = max(1, int(np.ceil(shown.max()))) if shown.size else 1
        ranks = [0] + [10**e for e in range(top_tick + 1)]
        names = [str(r) if r < 1000 else f"{r // 1000}k" for r in ranks]
        colorbar.update(tickmode="array", tickvals=[np.log10(1 + r) for r in ranks], ticktext=names)
        # plotly places a side title from the automatic tick labels, over these wider ones: title on top
        colorbar["title"]["side"] = "top"
        extra.update(customdata=z, zmin=0.0, zmax=float(np.log10(1 + 10**top_tick)))
        scale = colorscale or SEQUENTIAL
        reverse = colorscale is None  # low rank (good) bright, like high probability
    else:
        shown = z
        if what == "prob":
            extra.update(zmin=0.0, zmax=1.0)
        scale = colorscale or SEQUENTIAL
        reverse = False
    fig = go.Figure(
        go.Heatmap(
            z=shown,
            x=list(range(n_pos)),
            y=list(range(n_layers)),
            text=cell_labels if show_text else None,
            texttemplate="%{text}" if show_text else None,
            textfont=dict(size=10),
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=scale,
            reversescale=reverse,
            colorbar=colorbar,
            **extra,
        )
    )
    fig.update_xaxes(
        tickmode="array",
        tickvals=list(range(n_pos)),
        ticktext=[label(t, 12) for t in tokens[:n_pos]],
        tickangle=-45,
        title=dict(text="position (token)"),
        showgrid=False,
        zeroline=False,
    )
    fig.update_yaxes(
        title=dict(text="layer"),
        showgrid=False,
        zeroline=False,
        dtick=1 if n_layers <= 16 else (2 if n_layers <= 36 else 5),
    )
    rows = getattr(result, "layer_ids", None)  # a grid over chosen layers / positions (a patchscope)
    if rows and list(rows) != list(range(n_layers)):
        fig.update_yaxes(tickmode="array", tickvals=list(range(n_layers)), ticktext=[str(r) for r in rows])
    cols = getattr(result, "positions", None)
    if cols and list(cols) != list(range(n_pos)):
        fig.update_xaxes(ticktext=[f"{p} {label(t, 10)}" for p, t in zip(cols, tokens[:n_pos], strict=False)])
    what_text = {"prob": "top-1 probability", "rank": "rank", "entropy": "entropy", "kl": "KL"}[what]
    if tok_name is not None:
        what_text = f"{what} of {visible_token(tok_name)}"
    layout(
        fig,
        title=title if title is not None else title_line(result.options, what_text),
        template=template,
        width=width,
        auto_width=clamp(170 + n_pos * 62, 560, 1800),
        height=height,
        auto_height=clamp(170 + n_layers * 20, 400, 1600),
    )
    return fig
