"""Causal traces (ROME's figure): tokens down the y axis (subject tokens marked *), layers along the x axis,
colour = p(target) with one state restored, from `.low` (subject noised, nothing restored) to `.high` (the
clean run). Over a Dataset: ROME's six position groups down the y axis, hover mean ± sem and counts.

Frames: CausalTrace -> one row per (layer, position): layer, position, token, is_subject, value, effect,
kind, target. DatasetCausalTrace -> one row per (layer, group): layer, group, group_index, value, effect,
sem, count, kind (`per_example=True`: every fact's own rows with `example` and `group`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .frames import _finish, _grid, _pd
from .theme import check_unknown, clamp, escape, fmt, label, layout, prompt_text

TRACE_OPTIONS = ["effect", "template", "title", "width", "height", "colorscale", "zmin", "zmax"]
DATASET_TRACE_OPTIONS = ["example", *TRACE_OPTIONS]
# ROME's colours: hidden state purple, MLP green, attention red (single-hue, colour-blind safe sequences)
KIND_COLORS = {"resid": "Purples", "mlp": "Greens", "attn": "Reds"}
SHARED_COLOR = "Viridis"


def restored_text(options: dict[str, Any]) -> str:
    """What a trace restores: 'hidden state', 'MLP (window 10)', 'attention (window 10)'; ', severed mlp'."""
    kind = str(options.get("kind", "resid"))
    window = options.get("window")
    what = {"resid": "hidden state", "mlp": f"MLP (window {window})", "attn": f"attention (window {window})"}
    text = what.get(kind, kind)
    if options.get("sever"):
        text += f", severed {options['sever']}"
    return text


def _x_title(options: dict[str, Any]) -> str:
    kind = str(options.get("kind", "resid"))
    if kind == "resid":
        return "layer (hidden state restored)"
    name = "MLP" if kind == "mlp" else "attention"
    return f"layer (centre of {options.get('window')} restored {name} layers)"


def _noise_text(result) -> str:
    o = result.options
    n = f"{o.get('samples')} samples"
    if o.get("noise_given"):
        return f"noise given, {n}"
    std = getattr(result, "noise_std", float("nan"))
    return f"noise {fmt(o.get('noise'))} \u00d7 std {fmt(std)}, {n}"


def _trace_z(result, effect: bool) -> tuple[np.ndarray, str]:
    if not isinstance(effect, bool):
        raise WorkbenchError(f"effect= must be True or False, got {effect!r}.")
    if effect:
        return np.asarray(result.effect, dtype=np.float64), "effect on p(target)"
    return np.asarray(result.values, dtype=np.float64), "p(target)"


def _range(result, effect: bool, zmin: float | None, zmax: float | None) -> tuple[float, float]:
    """low .. high (effect: 0 .. high - low), unless given; widened when high <= low."""
    lo, hi = (0.0, result.high - result.low) if effect else (result.low, result.high)
    lo = float(lo) if zmin is None else float(zmin)
    hi = float(hi) if zmax is None else float(zmax)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        z = np.asarray(result.effect if effect else result.values, dtype=np.float64)
        finite = z[np.isfinite(z)]
        lo = float(finite.min()) if zmin is None and finite.size else lo
        hi = float(finite.max()) if zmax is None and finite.size else hi
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            hi = (lo if math.isfinite(lo) else 0.0) + 1e-6
    return lo, hi


def _trace_hover(result, z: np.ndarray) -> list[list[str]]:
    """[T][L] hover lines: layer, token, p(target) and the effect (and the layers a window restores)."""
    from ..ops.tracing import window_layers

    values, eff = np.asarray(result.values), np.asarray(result.effect)
    n_layers, n_tokens = values.shape
    kind, window = result.kind, int(result.options.get("window") or 1)
    labels = result.labels
    rows = []
    for t in range(n_tokens):
        row = []
        for layer in range(n_layers):
            line = f"layer {layer}, position {t} ({label(labels[t])})"
            if kind != "resid":
                span = window_layers(layer, window, n_layers)
                line += f"<br>restores {kind}_out L{span.start}..L{span.stop - 1}"
            line += f"<br>p(target) {fmt(values[layer, t])} \u00b7 effect {fmt(eff[layer, t])}"
            row.append(line)
        rows.append(row)
    return rows


def _title(result, extra: str | None = None) -> str:
    head = f"<b>causal_trace</b> \u00b7 restoring {escape(restored_text(result.options))}"
    head += f" \u00b7 target {label(result.target)}"
    if extra:
        head += f" \u00b7 {extra}"
    sub = prompt_text(result.options.get("prompt"))
    sub += (
        f" \u00b7 p(target) clean {fmt(result.high)}, noised {fmt(result.low)} \u00b7 {_noise_text(result)}"
    )
    return f"{head}<br>{sub}"


def _token_axis(fig, ticktext: list[str], axis: str = "yaxis", title: str | None = "token") -> None:
    fig.layout[axis].update(
        tickmode="array",
        tickvals=list(range(len(ticktext))),
        ticktext=ticktext,
        autorange="reversed",  # the first token at the top, as in ROME's figure
        title=dict(text=title) if title else None,
        showgrid=False,
        zeroline=False,
    )


def _layer_axis(fig, n_layers: int, title: str, axis: str = "xaxis") -> None:
    fig.layout[axis].update(
        title=dict(text=title),
        showgrid=False,
        zeroline=False,
        dtick=1 if n_layers <= 16 else (2 if n_layers <= 36 else 5),
    )


def plot_causal_trace(
    result,
    *,
    effect: bool = False,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    colorscale: Any = None,
    zmin: float | None = None,
    zmax: float | None = None,
    **unknown: Any,
):
    """ROME's causal-trace heatmap: tokens top to bottom (subject tokens marked *), layers left to right,
    colour = p(target) with that state restored, from `.low` to `.high` (colour bar "p(target)").

    effect=True draws `.effect` (values - low, from 0 to high - low) instead. The title says what was
    restored (hidden state, MLP (window w), attention (window w); "severed mlp" with sever=), the target
    token and the prompt; hover gives p(target) and the effect of each cell. Default colours are ROME's
    (hidden state purple, MLP green, attention red). Common options: template, title, width, height,
    colorscale, zmin, zmax."""
    import plotly.graph_objects as go

    check_unknown("CausalTrace.plot()", unknown, TRACE_OPTIONS)
    values = np.asarray(result.values)
    if values.ndim != 2 or 0 in values.shape:
        raise WorkbenchError(f"This causal trace is empty (values shape {values.shape}); nothing to plot.")
    n_layers, n_tokens = values.shape
    z, unit = _trace_z(result, effect)
    lo, hi = _range(result, effect, zmin, zmax)
    fig = go.Figure(
        go.Heatmap(
            z=z.T,  # [T, L]: one row per token
            x=list(range(n_layers)),
            y=list(range(n_tokens)),
            hovertext=_trace_hover(result, z),
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=colorscale or KIND_COLORS.get(result.kind, SHARED_COLOR),
            zmin=lo,
            zmax=hi,
            colorbar=dict(title=dict(text=unit, side="right"), thickness=14),
            name=result.kind,
        )
    )
    _token_axis(fig, [label(t, 14) for t in result.labels])
    _layer_axis(fig, n_layers, _x_title(result.options))
    layout(
        fig,
        title=title if title is not None else _title(result),
        template=template,
        width=width,
        height=height,
        auto_width=clamp(230 + n_layers * 18, 520, 1400),
        auto_height=clamp(140 + n_tokens * 26, 300, 1400),
    )
    return fig


def plot_causal_traces(
    traces: Sequence[Any],
    *,
    effect: bool = False,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    colorscale: Any = None,
    zmin: float | None = None,
    zmax: float | None = None,
    **unknown: Any,
):
    """Causal traces of one prompt side by side (ROME's three panels: `[resid, mlp, attn]` traces), the
    tokens shared down the y axis and ONE colour scale (from the lowest `.low` to the highest `.high`; with
    effect=True from 0 to the largest high - low). Each panel is titled with what it restored."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..ops.tracing import CausalTrace

    check_unknown("plot_causal_traces()", unknown, TRACE_OPTIONS)
    traces = list(traces) if not isinstance(traces, CausalTrace) else [traces]
    if not traces or not all(isinstance(t, CausalTrace) for t in traces):
        raise WorkbenchError(
            "plot_causal_traces takes a list of CausalTrace results of one prompt, e.g. "
            "[wb.causal_trace(model, prompt, subject=s, kind=k) for k in ('resid', 'mlp', 'attn')]."
        )
    first = traces[0]
    for t in traces[1:]:
        if list(t.tokens) != list(first.tokens) or t.values.shape != first.values.shape:
            raise WorkbenchError(
                "plot_causal_traces draws traces of the same prompt (shared token axis): these traces have "
                f"tokens {first.tokens} and {t.tokens}; plot them one at a time with .plot()."
            )
    if not isinstance(effect, bool):
        raise WorkbenchError(f"effect= must be True or False, got {effect!r}.")
    if effect:
        lo, hi = 0.0, max(t.high - t.low for t in traces)
    else:
        lo, hi = min(t.low for t in traces), max(t.high for t in traces)
    lo = lo if zmin is None else float(zmin)
    hi = hi if zmax is None else float(zmax)
    if not hi > lo:
        hi = lo + 1e-6
    n_layers, n_tokens = first.values.shape
    n = len(traces)
    fig = make_subplots(
        rows=1,
        cols=n,
        shared_yaxes=True,
        subplot_titles=[escape(restored_text(t.options)) for t in traces],
        horizontal_spacing=0.03 if n > 1 else 0.0,
    )
    unit = "effect on p(target)" if effect else "p(target)"
    for i, t in enumerate(traces):
        z, _ = _trace_z(t, effect)
        fig.add_trace(
            go.Heatmap(
                z=z.T,
                x=list(range(n_layers)),
                y=list(range(n_tokens)),
                hovertext=_trace_hover(t, z),
                hovertemplate="%{hovertext}<extra></extra>",
                coloraxis="coloraxis",
                name=restored_text(t.options),
            ),
            row=1,
            col=i + 1,
        )
        axis_n = "" if i == 0 else str(i + 1)
        _layer_axis(fig, n_layers, "layer" if n > 1 else _x_title(t.options), f"xaxis{axis_n}")
        _token_axis(fig, [label(t, 14) for t in first.labels], f"yaxis{axis_n}", "token" if i == 0 else None)
    fig.update_layout(
        coloraxis=dict(
            colorscale=colorscale or SHARED_COLOR,
            cmin=lo,
            cmax=hi,
            colorbar=dict(title=dict(text=unit, side="right"), thickness=14),
        )
    )
    targets = sorted({t.target for t in traces})
    if title is None:
        head = "<b>causal_trace</b> \u00b7 target " + ", ".join(label(t) for t in targets)
        sub = prompt_text(first.options.get("prompt"))
        sub += (
            f" \u00b7 p(target) clean {fmt(first.high)}, noised {fmt(first.low)} \u00b7 {_noise_text(first)}"
        )
        title = f"{head}<br>{sub}"
    layout(
        fig,
        title=title,
        template=template,
        width=width,
        height=height,
        auto_width=clamp(200 + n * (n_layers * 12 + 30), 520, 1800),
        auto_height=clamp(150 + n_tokens * 26, 300, 1400),
        top=60,  # room for the panels' titles
    )
    return fig


def causal_trace_frame(result, **unknown: Any):
    """One row per (layer, position), C order of `.values`: layer, position, token, is_subject, value
    (p(target) restored there), effect (value - low), kind, target."""
    pd = _pd()
    check_unknown("CausalTrace.to_frame()", unknown, [])
    values = np.asarray(result.values, dtype=np.float32)
    li, ti = _grid(values.shape)
    a, b = result.subject
    tokens = np.asarray(list(result.tokens), dtype=object)
    df = pd.DataFrame(
        {
            "layer": li,
            "position": ti,
            "token": pd.array(tokens[ti], dtype="string"),
            "is_subject": (ti >= a) & (ti < b),
            "value": values.reshape(-1),
            "effect": np.asarray(result.effect, dtype=np.float32).reshape(-1),
            "kind": pd.array([result.kind] * values.size, dtype="string"),
            "target": pd.array([result.target] * values.size, dtype="string"),
        }
    )
    return _finish(df, result)


def _dataset_title(result) -> str:
    o = result.options
    head = f"<b>causal_trace</b> \u00b7 restoring {escape(restored_text(o))}"
    head += f" \u00b7 mean over {len(result.per_example)} facts"
    sub = (
        f"each fact's own target \u00b7 p(target) clean {fmt(result.high)}, noised {fmt(result.low)} (means)"
        f" \u00b7 noise {fmt(o.get('noise'))} \u00d7 std {fmt(result.noise_std)}, {o.get('samples')} samples"
    )
    return f"{head}<br>{sub}"


def plot_dataset_causal_trace(
    result,
    *,
    example: int | None = None,
    effect: bool = False,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    colorscale: Any = None,
    zmin: float | None = None,
    zmax: float | None = None,
    **unknown: Any,
):
    """ROME's averaged causal trace: the six position groups top to bottom (first / middle / last subject
    token, first subsequent token, further tokens, last token), layers left to right, colour = the mean
    p(target) from the mean `.low` to the mean `.high`; hover shows mean ± sem and how many (fact, token)
    values the group pools. `effect=True` draws `.effect`; `example=i` draws fact i's own trace."""
    import plotly.graph_objects as go

    check_unknown("DatasetCausalTrace.plot()", unknown, DATASET_TRACE_OPTIONS)
    n_facts = len(result.per_example)
    if example is not None:
        if (
            isinstance(example, bool)
            or not isinstance(example, int | np.integer)
            or not 0 <= example < n_facts
        ):
            raise WorkbenchError(f"example= must be a fact index 0..{n_facts - 1}, got {example!r}.")
        common = dict(template=template, title=title, width=width, height=height, colorscale=colorscale)
        return plot_causal_trace(
            result.per_example[int(example)], effect=effect, zmin=zmin, zmax=zmax, **common
        )
    values = np.asarray(result.values, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise WorkbenchError(f"This causal trace is empty (values shape {values.shape}); nothing to plot.")
    n_layers, n_groups = values.shape
    z, unit = _trace_z(result, effect)
    lo, hi = _range(result, effect, zmin, zmax)
    sem = np.asarray(result.sem, dtype=np.float64)
    counts = np.asarray(result.counts)
    groups = list(result.groups)
    hover = []
    for g in range(n_groups):
        row = []
        for layer in range(n_layers):
            line = (
                f"layer {layer}, {escape(groups[g])}<br>p(target) {fmt(values[layer, g])}"
                + (f" \u00b1 {fmt(sem[layer, g])} (sem)" if np.isfinite(sem[layer, g]) else "")
                + f" \u00b7 effect {fmt(values[layer, g] - result.low)}"
                + f"<br>mean of {int(counts[g])} (fact, token) values over {n_facts} facts"
            )
            row.append(line)
        hover.append(row)
    fig = go.Figure(
        go.Heatmap(
            z=z.T,
            x=list(range(n_layers)),
            y=list(range(n_groups)),
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=colorscale or KIND_COLORS.get(result.kind, SHARED_COLOR),
            zmin=lo,
            zmax=hi,
            colorbar=dict(title=dict(text=unit, side="right"), thickness=14),
            name=result.kind,
        )
    )
    names = [escape(f"{g} (n={int(c)})") for g, c in zip(groups, counts, strict=True)]
    _token_axis(fig, names, title="position group")
    _layer_axis(fig, n_layers, _x_title(result.options))
    layout(
        fig,
        title=title if title is not None else _dataset_title(result),
        template=template,
        width=width,
        height=height,
        auto_width=clamp(330 + n_layers * 18, 620, 1400),
        auto_height=clamp(140 + n_groups * 34, 320, 900),
    )
    return fig


def dataset_causal_trace_frame(result, *, per_example: bool = False, **unknown: Any):
    """One row per (layer, group): layer, group, group_index, value (the mean p(target)), effect (value -
    mean low), sem, count, kind. `per_example=True`: one row per (fact, layer, position) of every fact's
    own trace (the CausalTrace layout) with `example` and `group` (ROME's group of that position; a
    one-token subject's position is its first and last subject token: 'last subject token' here)."""
    pd = _pd()
    check_unknown("DatasetCausalTrace.to_frame()", unknown, ["per_example"])
    if not isinstance(per_example, bool):
        raise WorkbenchError(f"per_example= must be True or False, got {per_example!r}.")
    if per_example:
        from ..ops.tracing import group_columns

        parts = []
        for i, tr in enumerate(result.per_example):
            df = causal_trace_frame(tr)
            names = np.empty(len(tr.tokens), dtype=object)
            for k, cols in enumerate(group_columns(tr.subject, len(tr.tokens))):
                names[cols] = result.groups[k]  # later groups win: the last subject token, the last token
            df.insert(0, "example", i)
            df.insert(4, "group", pd.array(names[df["position"].to_numpy()], dtype="string"))
            parts.append(df)
        return _finish(pd.concat(parts, ignore_index=True), result)
    values = np.asarray(result.values, dtype=np.float32)
    li, gi = _grid(values.shape)
    groups = np.asarray(list(result.groups), dtype=object)
    df = pd.DataFrame(
        {
            "layer": li,
            "group": pd.array(groups[gi], dtype="string"),
            "group_index": gi,
            "value": values.reshape(-1),
            "effect": np.asarray(result.effect, dtype=np.float32).reshape(-1),
            "sem": np.asarray(result.sem, dtype=np.float32).reshape(-1),
            "count": np.asarray(result.counts, dtype=np.int32)[gi],
            "kind": pd.array([result.kind] * values.size, dtype="string"),
        }
    )
    return _finish(df, result)
