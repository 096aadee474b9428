"""Single values: a patched/ablated run's prediction (Value) and steered text (SteerResult)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .theme import SEQUENTIAL, check_unknown, clamp, escape, fmt, label, layout, title_line, visible_text

VALUE_OPTIONS = ["template", "title", "width", "height", "color"]
STEER_OPTIONS = ["template", "title", "width", "height"]


def _where(options: dict[str, Any]) -> str:
    from ..ops.results import _where as joint_where
    from ..ops.results import joint_places

    if joint_places(options) is not None:  # cells= / intervene's edits: the places, compactly
        return joint_where(options, shown=6)
    parts = []
    for key in ("layer", "position", "head"):
        if options.get(key) is not None:
            parts.append(f"{key} {options[key]}")
    for key in ("source_layer", "source_position"):
        if options.get(key) is not None:
            parts.append(f"{key.replace('_', ' ')} {options[key]}")
    return ", ".join(parts)


def value_summary(v) -> str:
    """'metric 2.31 · clean 3.1 · corrupt -1.2 · normalised 0.73' (ablation: 'unablated' for clean)."""
    metric = escape(v.options.get("metric", "metric"))
    is_ablation = str(v.options.get("op", "")).startswith("ablate")
    parts = [
        f"{metric} = <b>{fmt(float(v))}</b>",
        f"{'unablated' if is_ablation else 'clean'} {fmt(v.clean)}",
    ]
    if not is_ablation or math.isfinite(v.corrupt):
        parts.append(f"corrupt {fmt(v.corrupt)}")
    if math.isfinite(v.normalized):
        parts.append(f"normalised {fmt(v.normalized)}")
    return " \u00b7 ".join(parts)


def plot_value(
    v,
    *,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    color: str | None = None,
    **unknown: Any,
):
    """Horizontal bars of the intervened run's top-k next-token probabilities (most likely on top),
    with the metric, its clean / corrupt baselines and the normalised effect written above the bars."""
    import plotly.colors
    import plotly.graph_objects as go

    check_unknown("Value.plot()", unknown, VALUE_OPTIONS)
    probs = np.asarray(getattr(v, "top_probs", np.zeros(0)), dtype=np.float32).reshape(-1)
    toks = list(getattr(v, "top_tokens", []))
    if probs.size == 0 or not toks:
        raise WorkbenchError(
            "This Value has no top-k prediction to plot (it was computed with top_k=0); "
            "rerun with top_k=5, or read float(v), v.clean and v.corrupt."
        )
    n = min(len(toks), probs.size)
    labels = [label(t, 24) for t in toks[:n]]
    bar = color or plotly.colors.sample_colorscale(SEQUENTIAL, [0.3])[0]
    fig = go.Figure(
        go.Bar(
            x=probs[:n],
            y=list(range(n)),
            orientation="h",
            marker_color=bar,
            text=[fmt(p) for p in probs[:n]],
            textposition="outside",
            cliponaxis=False,
            hovertext=[f"{k + 1}. {labels[k]}<br>probability {fmt(probs[k])}" for k in range(n)],
            hovertemplate="%{hovertext}<extra></extra>",
        )
    )
    fig.update_yaxes(
        tickmode="array",
        tickvals=list(range(n)),
        ticktext=labels,
        autorange="reversed",
        title=dict(text="next token"),
    )
    fig.update_xaxes(range=[0, max(1.0, float(probs[:n].max()) * 1.15)], title=dict(text="probability"))
    fig.add_annotation(
        text=value_summary(v),
        xref="paper",
        yref="paper",
        x=0,
        y=1.0,
        yanchor="bottom",
        xanchor="left",
        showarrow=False,
        font=dict(size=12),
    )
    where = _where(v.options)
    layout(
        fig,
        title=title if title is not None else title_line(v.options, where or None),
        template=template,
        width=width,
        auto_width=640,
        height=height,
        auto_height=clamp(200 + 34 * n, 320, 900),
        top=60,
    )
    return fig


def _wrap(text: str, width: int) -> str:
    """Plotly tables wrap only at spaces: wrap (breaking long words) and escape each line."""
    import textwrap

    out = []
    for para in visible_text(text, keep_newlines=True).split("\n"):
        out.extend(textwrap.wrap(para, width, break_long_words=True, replace_whitespace=False) or [""])
    return "<br>".join(escape(line) for line in out)


def _push(s) -> str:
    """', 0.42x the residual norm' of a SteerResult ('' when it has no norms)."""
    rel = getattr(s, "relative", None)
    return f", {rel:.2g}x resid norm" if isinstance(rel, float) and math.isfinite(rel) else ""


def steer_rows(s) -> list[tuple[str, str]]:
    opts = s.options
    rows = [("prompt", str(opts.get("prompt", "")))]
    if getattr(s, "baseline", ""):
        rows.append(("baseline", str(s.baseline)))
    where = ", last position" if opts.get("positions") == "last" else ""
    rows.append((f"steered (layer {opts.get('layer')}, scale {opts.get('scale')}{where})", str(s)))
    return rows


def steer_sweep_rows(sw) -> list[tuple[str, str]]:
    rows = [("prompt", str(sw.options.get("prompt", ""))), ("baseline", str(sw.baseline))]
    for scale, r in zip(sw.scales, sw.results, strict=True):
        rows.append((f"scale {scale:g}{_push(r)}", str(r)))
    return rows


def _text_table(rows, what: str, opts, *, template, title, width, height):
    """A two-column plotly table (run, wrapped text) sized to its text."""
    import plotly.graph_objects as go

    w = width or 900
    chars_per_line = max(20, int((w - 260) / 7.2))  # the text column's share of the width, ~7 px a char
    lines = sum(1 + len(t) // chars_per_line + t.count("\n") for _, t in rows)
    fig = go.Figure(
        go.Table(
            columnwidth=[1, 4],
            header=dict(values=["<b>run</b>", "<b>text</b>"], align="left"),
            cells=dict(
                values=[[escape(r) for r, _ in rows], [_wrap(t, chars_per_line) for _, t in rows]],
                align="left",
                height=24,
            ),
        )
    )
    layout(
        fig,
        title=title if title is not None else title_line(opts, what),
        template=template,
        width=w,
        height=height,
        auto_width=w,
        auto_height=clamp(110 + 19 * lines + 12 * len(rows), 240, 1400),
    )
    fig.update_layout(margin=dict(l=20, r=20, b=20))
    return fig


def plot_steer(
    s,
    *,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    **unknown: Any,
):
    """A table: the prompt, the baseline continuation (when there is one) and the steered continuation."""
    check_unknown("SteerResult.plot()", unknown, STEER_OPTIONS)
    opts = s.options
    what = f"layer {opts.get('layer')}, scale {opts.get('scale')}"
    return _text_table(steer_rows(s), what, opts, template=template, title=title, width=width, height=height)


def plot_steer_sweep(
    sw,
    *,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    **unknown: Any,
):
    """A table: the prompt, the baseline, then one row per scale (with its push relative to the stream)."""
    check_unknown("SteerSweepResult.plot()", unknown, STEER_OPTIONS)
    opts = sw.options
    what = f"layer {opts.get('layer')}, {len(sw.scales)} scales"
    return _text_table(
        steer_sweep_rows(sw), what, opts, template=template, title=title, width=width, height=height
    )
