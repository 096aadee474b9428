"""Function vectors: the [layer, head] map of causal indirect effects (the chosen heads outlined), the vector's
heads and decoded tokens, and zero-shot accuracy by layer with the vector against the unsteered baseline.

Frames: HeadEffects -> one row per (layer, head): layer, head, effect, sem, normalized, rank (1 = largest),
top_token (the head's mean output decoded), n (`per_example=True`: one row per (example, layer, head) with
example, effect, patched, clean, corrupt). FunctionVector -> one row per chosen head: rank, layer, head, score
(mean indirect effect, NaN if not computed), output_norm. VectorEvaluation -> one row per layer: layer,
accuracy, sem, mean_prob, baseline, baseline_prob, n (`per_example=True`: one row per (example, layer):
example, prompt, answer, layer, correct, prob, top_token, baseline_correct).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .frames import _finish, _pd
from .theme import (
    DIVERGING,
    check_choice,
    check_unknown,
    clamp,
    escape,
    fmt,
    label,
    layout,
    symmetric_range,
)

HEAD_EFFECT_OPTIONS = [
    "what",
    "outline",
    "template",
    "title",
    "width",
    "height",
    "colorscale",
    "zmin",
    "zmax",
]
VECTOR_OPTIONS = ["top_k", "template", "title", "width", "height"]
EVALUATION_OPTIONS = ["what", "template", "title", "width", "height"]


def _outlined(result, outline: Any) -> list[tuple[int, int]]:
    """The heads to outline: the top n (an int), the given (layer, head) pairs, or none (0 / None / [])."""
    if outline is None or outline is False:
        return []
    if isinstance(outline, int | np.integer) and not isinstance(outline, bool):
        return [lh for lh, _ in result.top_heads(int(outline))]
    heads = getattr(outline, "heads", outline)  # a FunctionVector outlines its heads
    try:
        out = [(int(a), int(b)) for a, b in heads]
    except (TypeError, ValueError):
        raise WorkbenchError(
            f"outline= takes a number of top heads, a list of (layer, head) pairs or a FunctionVector; got {outline!r:.40}."
        ) from None
    return out


def plot_head_effects(
    result,
    *,
    what: str = "effect",
    outline: Any = 10,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    colorscale: Any = None,
    zmin: float | None = None,
    zmax: float | None = None,
    **unknown: Any,
):
    """Heatmap of the mean indirect effect [layer (down), head (across)], diverging at 0, the top `outline`
    heads (or given heads, or a FunctionVector's) outlined. what: "effect" (p(answer) rise) or "normalized"
    (over the clean - shuffled gap). The hover: effect ± sem, normalised effect, the head's decoded tokens."""
    import plotly.graph_objects as go

    check_unknown("HeadEffects.plot()", unknown, HEAD_EFFECT_OPTIONS)
    check_choice("what", what, ("effect", "normalized"))
    z = np.asarray(result.normalized if what == "normalized" else result.values, np.float64)
    n_layers, n_heads = z.shape
    err = np.asarray(result.sem, np.float64)
    norm = np.asarray(result.normalized, np.float64)
    m = symmetric_range(z)
    lo, hi = (-m if zmin is None else zmin), (m if zmax is None else zmax)
    hover = []
    for layer in range(n_layers):
        row = []
        for head in range(n_heads):
            toks = ", ".join(
                label(t, 14)
                for t in (result.head_top_tokens[layer][head][:5] if result.head_top_tokens else [])
            )
            line = (
                f"layer {layer}, head {head}<br>effect on p(answer) {fmt(result.values[layer, head])}"
                f" \u00b1 {fmt(err[layer, head])} (sem)<br>normalised {fmt(norm[layer, head])}"
            )
            if toks:
                line += f"<br>mean output decodes to {toks}"
            row.append(line)
        hover.append(row)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=colorscale or DIVERGING,
            zmin=lo,
            zmax=hi,
            colorbar=dict(
                title=dict(text="normalised effect" if what == "normalized" else "effect on p(answer)")
            ),
        )
    )
    for layer, head in _outlined(result, outline):
        fig.add_shape(
            type="rect",
            x0=head - 0.5,
            x1=head + 0.5,
            y0=layer - 0.5,
            y1=layer + 0.5,
            line=dict(color="black", width=2),
            fillcolor="rgba(0,0,0,0)",
        )
    fig.update_xaxes(title="head", tickmode="array", tickvals=list(range(n_heads)), constrain="domain")
    fig.update_yaxes(title="layer", autorange="reversed")
    o = result.options
    if title is None:
        title = (
            f"<b>head_effects</b> \u00b7 {escape(o.get('task', ''))} \u00b7 causal indirect effect of each head"
            f"<br>{o.get('n_shots')}-shot prompts, mean over {result.n_examples}; p(answer) clean "
            f"{fmt(result.clean_mean)}, labels shuffled {fmt(result.corrupt_mean)}"
        )
    layout(fig, title=title, template=template, width=width, height=height,
           auto_width=clamp(200 + 40 * n_heads, 420, 1200), auto_height=clamp(120 + 18 * n_layers, 300, 1400))  # fmt: skip
    return fig


def head_effects_frame(result, *, per_example: bool = False, **unknown: Any):
    pd = _pd()
    check_unknown("HeadEffects.to_frame()", unknown, ["per_example"])
    if not isinstance(per_example, bool):
        raise WorkbenchError(f"per_example= must be True or False, got {per_example!r}.")
    n_layers, n_heads = result.values.shape
    layer, head = (ix.reshape(-1) for ix in np.indices((n_layers, n_heads)))
    if per_example:
        n = result.n_examples
        cells = n_layers * n_heads
        df = pd.DataFrame(
            {
                "example": np.repeat(np.arange(n), cells),
                "layer": np.tile(layer, n),
                "head": np.tile(head, n),
                "effect": np.asarray(result.per_example, np.float32).reshape(-1),
                "patched": np.asarray(result.patched, np.float32).reshape(-1),
                "clean": np.repeat(np.asarray(result.clean, np.float32), cells),
                "corrupt": np.repeat(np.asarray(result.corrupt, np.float32), cells),
            }
        )
        return _finish(df, result)
    flat = np.asarray(result.values, np.float64).reshape(-1)
    rank = np.empty(flat.size, np.int64)
    rank[np.argsort(-flat, kind="stable")] = np.arange(1, flat.size + 1)
    top = [
        result.head_top_tokens[lyr][h][0] if result.head_top_tokens else None
        for lyr, h in zip(layer, head, strict=True)
    ]
    df = pd.DataFrame(
        {
            "layer": layer,
            "head": head,
            "effect": flat.astype(np.float32),
            "sem": np.asarray(result.sem, np.float32).reshape(-1),
            "normalized": np.asarray(result.normalized, np.float32).reshape(-1),
            "rank": rank,
            "top_token": pd.array(top, dtype="string"),
            "n": result.n_examples,
        }
    )
    return _finish(df, result)


def plot_function_vector(
    result, *, top_k: int = 10, template: Any = None, title: str | None = None, width: int | None = None,
    height: int | None = None, **unknown: Any,
):  # fmt: skip
    """Two panels: the chosen heads (bar = mean indirect effect, or the norm of the head's output when no
    effects were computed) and the vector's top_k decoded tokens (probability through the final norm and
    unembedding)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    check_unknown("FunctionVector.plot()", unknown, VECTOR_OPTIONS)
    decoded = result.decode(top_k)
    scores = np.asarray(result.scores, np.float64)
    norms = np.linalg.norm(np.asarray(result.head_outputs, np.float64), axis=1)
    use_scores = np.isfinite(scores).all() and len(scores) > 0
    heads_label = [f"L{layer} H{head}" for layer, head in result.heads]
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("heads: " + ("mean indirect effect" if use_scores else "norm of the mean output"),
                        f"decoded: top {len(decoded)} tokens"),
        horizontal_spacing=0.18,
    )  # fmt: skip
    fig.add_trace(
        go.Bar(
            x=scores if use_scores else norms,
            y=heads_label,
            orientation="h",
            hovertext=[
                f"{h}: effect {fmt(s)}, output norm {fmt(n)}"
                for h, s, n in zip(heads_label, scores, norms, strict=True)
            ],
            hovertemplate="%{hovertext}<extra></extra>",
            name="heads",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=[p for _, p in decoded],
            y=[f"{i + 1}. {label(t, 16)}" for i, (t, _) in enumerate(decoded)],
            orientation="h",
            hovertext=[f"{label(t)}: p {fmt(p)}" for t, p in decoded],
            hovertemplate="%{hovertext}<extra></extra>",
            name="decoded",
        ),
        row=1,
        col=2,
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(showlegend=False)
    o = result.options
    if title is None:
        title = (
            f"<b>function_vector</b> \u00b7 {escape(o.get('task', ''))} \u00b7 {len(result.heads)} heads"
            f"<br>norm {fmt(result.norm)} \u00b7 {o.get('n_shots')}-shot means over {o.get('n_prompts')} prompts"
        )
    layout(fig, title=title, template=template, width=width, height=height, auto_width=760,
           auto_height=clamp(140 + 22 * max(len(result.heads), len(decoded)), 300, 900))  # fmt: skip
    return fig


def function_vector_frame(result, **unknown: Any):
    pd = _pd()
    check_unknown("FunctionVector.to_frame()", unknown, [])
    df = pd.DataFrame(
        {
            "rank": np.arange(1, len(result.heads) + 1),
            "layer": [layer for layer, _ in result.heads],
            "head": [head for _, head in result.heads],
            "score": np.asarray(result.scores, np.float32),
            "output_norm": np.linalg.norm(np.asarray(result.head_outputs, np.float64), axis=1).astype(
                np.float32
            ),
        }
    )
    return _finish(df, result)


def plot_vector_evaluation(
    result, *, what: str = "accuracy", template: Any = None, title: str | None = None, width: int | None = None,
    height: int | None = None, **unknown: Any,
):  # fmt: skip
    """Zero-shot accuracy (or mean p(answer), what="prob") with the vector added at each layer, ± sem, and
    the baseline without it as a dashed line; the best layer marked."""
    import plotly.graph_objects as go

    check_unknown("VectorEvaluation.plot()", unknown, EVALUATION_OPTIONS)
    check_choice("what", what, ("accuracy", "prob"))
    if what == "accuracy":
        y, err, base, unit = result.accuracy, result.sem, result.baseline, "zero-shot accuracy"
    else:
        y = result.mean_probs
        err = (
            np.asarray(result.probs, np.float32).std(0, ddof=1) / np.sqrt(max(result.n_examples, 1))
            if result.n_examples > 1
            else np.full(len(y), np.nan)
        )
        base, unit = result.baseline_prob, "mean p(answer)"
    layers = list(result.layers)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=np.asarray(y, np.float64),
            error_y=dict(type="data", array=np.nan_to_num(np.asarray(err, np.float64)), visible=True),
            mode="lines+markers",
            name="with the vector",
            hovertemplate="layer %{x}: %{y:.3f}<extra>with the vector</extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[layers[0] - 0.5, layers[-1] + 0.5] if len(layers) else [],
            y=[base, base],
            mode="lines",
            line=dict(dash="dash"),
            name="without (baseline)",
            hovertemplate=f"baseline {fmt(base)}<extra></extra>",
        )
    )
    best = result.best_layer
    fig.add_annotation(
        x=best,
        y=float(np.asarray(y)[layers.index(best)]),
        text=f"best: layer {best}",
        showarrow=True,
        arrowhead=2,
    )
    fig.update_xaxes(title="layer (vector added to resid_post, last position)")
    fig.update_yaxes(title=unit, rangemode="tozero")
    o = result.options
    if title is None:
        title = (
            f"<b>evaluate_vector</b> \u00b7 {escape(o.get('task', ''))} \u00b7 {unit} with / without the vector"
            f"<br>{result.n_examples} zero-shot prompts \u00b7 scale {fmt(o.get('scale', 1.0))} \u00b7 baseline "
            f"{fmt(result.baseline)}, best layer {best}: {fmt(result.best_accuracy)}"
        )
    layout(fig, title=title, template=template, width=width, height=height, auto_width=720, auto_height=380)
    return fig


def vector_evaluation_frame(result, *, per_example: bool = False, **unknown: Any):
    pd = _pd()
    check_unknown("VectorEvaluation.to_frame()", unknown, ["per_example"])
    if not isinstance(per_example, bool):
        raise WorkbenchError(f"per_example= must be True or False, got {per_example!r}.")
    layers = list(result.layers)
    if not per_example:
        df = pd.DataFrame(
            {
                "layer": layers,
                "accuracy": np.asarray(result.accuracy, np.float32),
                "sem": np.asarray(result.sem, np.float32),
                "mean_prob": np.asarray(result.mean_probs, np.float32),
                "baseline": np.float32(result.baseline),
                "baseline_prob": np.float32(result.baseline_prob),
                "n": result.n_examples,
            }
        )
        return _finish(df, result)
    n, k = result.n_examples, len(layers)
    df = pd.DataFrame(
        {
            "example": np.repeat(np.arange(n), k),
            "prompt": pd.array(np.repeat(np.asarray(result.prompts, dtype=object), k), dtype="string"),
            "answer": pd.array(np.repeat(np.asarray(result.answers, dtype=object), k), dtype="string"),
            "layer": np.tile(layers, n),
            "correct": np.asarray(result.correct, np.float32).reshape(-1),
            "prob": np.asarray(result.probs, np.float32).reshape(-1),
            "top_token": pd.array([t for row in result.top_tokens for t in row], dtype="string"),
            "baseline_correct": np.repeat(np.asarray(result.baseline_correct, np.float32), k),
        }
    )
    return _finish(df, result)
