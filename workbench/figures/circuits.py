"""Circuits: the attribution graph as a layered drawing (embed at the bottom, layers upward, heads across, each
layer's MLP at its right, logits at the top; edges coloured and sized by score), a circuit's edges, a circuit's
faithfulness per example against the clean / corrupt baselines, and the faithfulness curve over circuit sizes.

Frames: Graph -> one row per edge (forward order; `n=` keeps the top n by |score|, in rank order): sender,
receiver, position, score, rank (1 = largest |score|), sender_kind (embed/head/mlp), sender_layer (-1 for
embed), sender_head, receiver_kind (q/k/v/mlp/logits), receiver_layer (n_layers for logits), receiver_head (the
key-value head for k/v). Circuit -> the same columns for its edges (score NaN for a hand-made circuit).
Faithfulness -> one row per example: example, metric (the circuit's run), clean, corrupt, normalized (over the
mean baselines, so its mean is float(f)). FaithfulnessCurve -> one row per size: edges, fraction, faithfulness
(normalised), metric, clean, corrupt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .frames import _finish, _pd
from .theme import DIVERGING, check_choice, check_unknown, clamp, escape, fmt, layout, symmetric_range

GRAPH_OPTIONS = ["n", "template", "title", "width", "height", "colorscale", "max_width", "show_nodes"]
FAITHFULNESS_OPTIONS = ["template", "title", "width", "height"]
CURVE_OPTIONS = ["x", "log_x", "template", "title", "width", "height"]

_NODE = re.compile(r"^L(\d+)H(\d+)(?:\.([qkv]))?$")
_MLP = re.compile(r"^MLP(\d+)$")


def node_parts(name: str, n_layers: int | None = None) -> tuple[str, int, int | None]:
    """(kind, layer, head) of a node name: embed (layer -1), head / q / k / v (the key-value head for k, v),
    mlp, logits (layer n_layers, or -2 when unknown)."""
    if name == "embed":
        return "embed", -1, None
    if name == "logits":
        return "logits", (n_layers if n_layers is not None else -2), None
    m = _NODE.match(name)
    if m:
        return (m.group(3) or "head"), int(m.group(1)), int(m.group(2))
    m = _MLP.match(name)
    if m:
        return "mlp", int(m.group(1)), None
    raise WorkbenchError(f"Not a circuit node: {name!r} (nodes are embed, L3H2, L3H2.q/.k/.v, MLP3, logits).")


# ------------------------------------------------------------------------------------------------ frames
def _edge_rows(edges: Sequence[Any], scores: np.ndarray, n_layers: int) -> dict[str, Any]:
    pd = _pd()
    senders = [node_parts(e.sender, n_layers) for e in edges]
    receivers = [node_parts(e.receiver, n_layers) for e in edges]
    absolute = np.abs(np.nan_to_num(np.asarray(scores, np.float64), nan=-1.0))
    rank = np.empty(len(edges), np.int64)
    rank[np.argsort(-absolute, kind="stable")] = np.arange(1, len(edges) + 1)
    return {
        "sender": pd.array([e.sender for e in edges], dtype="string"),
        "receiver": pd.array([e.receiver for e in edges], dtype="string"),
        "position": pd.array(
            [None if e.position is None else str(e.position) for e in edges], dtype="string"
        ),
        "score": np.asarray(scores, np.float32),
        "rank": rank,
        "sender_kind": pd.array([s[0] for s in senders], dtype="string"),
        "sender_layer": np.array([s[1] for s in senders], np.int64),
        "sender_head": pd.array([s[2] for s in senders], dtype="Int64"),
        "receiver_kind": pd.array([r[0] for r in receivers], dtype="string"),
        "receiver_layer": np.array([r[1] for r in receivers], np.int64),
        "receiver_head": pd.array([r[2] for r in receivers], dtype="Int64"),
    }


def graph_frame(graph, *, n: int | None = None, **unknown: Any):
    """One row per edge of the graph (forward order), or its top n by |score| (rank order)."""
    pd = _pd()
    check_unknown("Graph.to_frame()", unknown, ["n"])
    scores = graph.scores
    edges = list(scores)
    df = pd.DataFrame(_edge_rows(edges, np.array([scores[e] for e in edges], np.float64), graph.n_layers))
    if n is not None:
        k = _check_n(n, graph.n_edges)
        df = df.sort_values("rank", kind="stable").head(k).reset_index(drop=True)
    return _finish(df, graph)


def circuit_frame(circuit, **unknown: Any):
    """One row per edge of the circuit, its score from the graph it was cut from (NaN for a hand-made one)."""
    pd = _pd()
    check_unknown("Circuit.to_frame()", unknown, [])
    g = circuit.graph
    edges = list(circuit.edges)
    scores = np.array([g.score(e) for e in edges] if g is not None else [np.nan] * len(edges), np.float64)
    n_layers = g.n_layers if g is not None else _dims(edges)[0]
    df = pd.DataFrame(_edge_rows(edges, scores, n_layers))
    df.attrs["options"] = dict(g.options) if g is not None else {}
    return df


def faithfulness_frame(result, **unknown: Any):
    """One row per example: the circuit's metric and the example's clean and corrupt metrics."""
    pd = _pd()
    check_unknown("Faithfulness.to_frame()", unknown, [])
    raw = np.asarray(result.per_example, np.float32)
    clean, corrupt = _baselines(result, len(raw))
    denom = result.clean - result.corrupt
    normalized = (raw.astype(np.float64) - result.corrupt) / denom if denom else np.full(len(raw), np.nan)
    df = pd.DataFrame(
        {
            "example": np.arange(len(raw)),
            "metric": raw,
            "clean": clean,
            "corrupt": corrupt,
            "normalized": normalized.astype(np.float32),
        }
    )
    return _finish(df, result)


def faithfulness_curve_frame(curve, **unknown: Any):
    """One row per circuit size: edges kept, their fraction of the graph, normalised and raw faithfulness."""
    pd = _pd()
    check_unknown("FaithfulnessCurve.to_frame()", unknown, [])
    k = len(curve.sizes)
    df = pd.DataFrame(
        {
            "edges": np.asarray(curve.sizes, np.int64),
            "fraction": np.asarray(curve.fractions, np.float64),
            "faithfulness": np.asarray(curve.values, np.float32),
            "metric": np.asarray(curve.raw, np.float32),
            "clean": np.full(k, curve.clean, np.float32),
            "corrupt": np.full(k, curve.corrupt, np.float32),
        }
    )
    df.attrs["area"] = curve.area
    return _finish(df, curve)


def _baselines(result, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each example's clean and corrupt metric (the means repeated for results that did not keep them)."""
    clean = getattr(result, "clean_per_example", None)
    corrupt = getattr(result, "corrupt_per_example", None)
    if clean is None or corrupt is None or len(clean) != n:
        return np.full(n, result.clean, np.float32), np.full(n, result.corrupt, np.float32)
    return np.asarray(clean, np.float32), np.asarray(corrupt, np.float32)


def _check_n(n: Any, total: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise WorkbenchError(f"n= is a number of edges >= 0, got {n!r}.")
    return min(int(n), total)


# ---------------------------------------------------------------------------------------------- drawing
def _dims(edges: Sequence[Any]) -> tuple[int, int, int]:
    """(layers, heads, key-value heads) a hand-made circuit needs at least."""
    n_layers, n_heads, n_kv = 1, 1, 1
    for e in edges:
        for name in (e.sender, e.receiver):
            kind, layer, head = node_parts(name)
            n_layers = max(n_layers, layer + 1)
            if kind in ("head", "q"):
                n_heads = max(n_heads, (head or 0) + 1)
            elif kind in ("k", "v"):
                n_kv = max(n_kv, (head or 0) + 1)
    return n_layers, max(n_heads, n_kv), n_kv


class _Grid:
    """Where each node sits: x = column block + head (the MLP at the right of its layer, raised when it reads
    its block's heads), y = layer + 1 (embed 0, logits n_layers + 1); a head's q/k/v inputs are ports below it."""

    def __init__(
        self, n_layers: int, n_heads: int, n_kv: int, columns: list[Any] | None, sequential: bool = True
    ) -> None:
        self.n_layers, self.n_heads, self.n_kv = n_layers, n_heads, max(1, n_kv)
        self.columns = columns
        self.mlp_lift = (
            0.45 if sequential else 0.0
        )  # a sequential MLP reads after its block's heads: above them
        self.block = n_heads + 2.0  # one column's width (heads, the MLP, a gap)

    def _col(self, position: Any) -> int:
        if self.columns is None or position is None:
            return 0
        if position in self.columns:
            return self.columns.index(position)
        if isinstance(position, int) and -len(self.columns) <= position < len(self.columns):
            return position % len(self.columns)
        return self.columns.index(str(position)) if str(position) in self.columns else 0

    def at(self, name: str, position: Any = None) -> tuple[float, float]:
        x0 = self._col(position) * self.block
        kind, layer, head = node_parts(name, self.n_layers)
        mid = (self.n_heads - 1) / 2
        if kind == "embed":
            return x0 + mid, 0.0
        if kind == "logits":
            return x0 + mid, self.n_layers + 1.0
        y = layer + 1.0
        if kind == "head":
            return x0 + float(head), y
        if kind == "mlp":
            return x0 + self.n_heads + 0.2, y + self.mlp_lift
        group = self.n_heads // self.n_kv
        if kind == "q":
            return x0 + head - (0.22 if group == 1 else 0.0), y - 0.28
        centre = head * group + (group - 1) / 2  # the key-value head sits under its group of query heads
        return x0 + centre + (0.0 if kind == "k" else 0.22) + (0.0 if group == 1 else -0.11), y - 0.28 - (
            0.0 if group == 1 else 0.1
        )

    def nodes(self) -> list[tuple[str, Any]]:
        cols = self.columns if self.columns is not None else [None]
        out: list[tuple[str, Any]] = []
        for c in cols:
            out.append(("embed", c))
            for layer in range(self.n_layers):
                out += [(f"L{layer}H{h}", c) for h in range(self.n_heads)] + [(f"MLP{layer}", c)]
            out.append(("logits", c))
        return out


def _draw(
    edges: Sequence[Any],
    scores: np.ndarray | None,
    grid: _Grid,
    *,
    colorscale: Any,
    max_width: float,
    show_nodes: bool,
    node_totals: dict[tuple[str, Any], float] | None = None,
):
    """The layered drawing of `edges` (coloured by score on a symmetric diverging scale, or grey)."""
    import plotly.colors as pc
    import plotly.graph_objects as go

    fig = go.Figure()
    used = {(e.sender, e.position) for e in edges} | {(e.receiver.split(".")[0], e.position) for e in edges}
    if show_nodes:
        xs, ys, text, colours = [], [], [], []
        for name, c in grid.nodes():
            x, y = grid.at(name, c)
            xs.append(x)
            ys.append(y)
            where = "" if c is None else f" @ {escape(c)}"
            line = f"<b>{escape(name)}</b>{where}"
            if node_totals is not None and (name, c) in node_totals:
                line += f"<br>out of this node in the drawing: {fmt(node_totals[(name, c)])}"
            text.append(line)
            colours.append("#444444" if (name, c) in used else "#d0d0d0")
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name="nodes",
                showlegend=False,
                hovertext=text,
                hovertemplate="%{hovertext}<extra></extra>",
                marker=dict(size=9, color=colours, symbol="circle", line=dict(width=0)),
            )  # fmt: skip
        )
    m = symmetric_range(np.asarray(scores, np.float64)) if scores is not None and len(scores) else 1.0
    scale = colorscale or DIVERGING
    # edges drawn weakest first, so the strongest lie on top; one trace per edge keeps its own width and colour
    order = (
        np.argsort(np.abs(np.nan_to_num(scores)), kind="stable") if scores is not None else range(len(edges))
    )
    mid_x, mid_y, mid_text, mid_c = [], [], [], []
    for i in order:
        e = edges[int(i)]
        (x0, y0), (x1, y1) = grid.at(e.sender, e.position), grid.at(e.receiver, e.position)
        s = float(scores[int(i)]) if scores is not None else float("nan")
        if np.isfinite(s):
            colour = pc.sample_colorscale(scale, [0.5 + 0.5 * max(-1.0, min(1.0, s / m))])[0]
            width = 0.6 + (max_width - 0.6) * min(1.0, abs(s) / m)
        else:
            colour, width = "rgba(90,90,90,0.6)", 1.2
        fig.add_trace(
            go.Scatter(
                x=[x0, x1],
                y=[y0, y1],
                mode="lines",
                line=dict(color=colour, width=width),
                hoverinfo="skip",
                showlegend=False,
            )  # fmt: skip
        )
        mid_x.append((x0 + x1) / 2)
        mid_y.append((y0 + y1) / 2)
        mid_text.append(f"{escape(str(e))}<br>score {fmt(s, 4)}" if np.isfinite(s) else escape(str(e)))
        mid_c.append(s if np.isfinite(s) else 0.0)
    receivers = sorted({(e.receiver, e.position) for e in edges if "." in e.receiver}, key=str)
    if receivers:
        pts = [grid.at(r, c) for r, c in receivers]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pts],
                y=[p[1] for p in pts],
                mode="markers",
                showlegend=False,
                name="inputs",
                marker=dict(size=5, color="#444444", symbol="triangle-up"),
                hovertext=[
                    f"{escape(r)}{'' if c is None else ' @ ' + escape(c)} (input)" for r, c in receivers
                ],
                hovertemplate="%{hovertext}<extra></extra>",
            )  # fmt: skip
        )
    # one hover point per edge (plotly hovers points, not lines), carrying the colour bar
    fig.add_trace(
        go.Scatter(
            x=mid_x,
            y=mid_y,
            mode="markers",
            showlegend=False,
            name="edges",
            hovertext=mid_text,
            hovertemplate="%{hovertext}<extra></extra>",
            marker=dict(
                size=6,
                opacity=0.0 if scores is None else 0.9,
                color=mid_c,
                colorscale=scale,
                cmin=-m,
                cmax=m,
                showscale=scores is not None,
                colorbar=dict(title=dict(text="edge score")),
            ),
        )  # fmt: skip
    )
    n_cols = 1 if grid.columns is None else len(grid.columns)
    ticks = [0] + [layer + 1 for layer in range(grid.n_layers)] + [grid.n_layers + 1]
    names = ["embed"] + [f"layer {layer}" for layer in range(grid.n_layers)] + ["logits"]
    fig.update_yaxes(tickmode="array", tickvals=ticks, ticktext=names, range=[-0.6, grid.n_layers + 1.6],
                     showgrid=False, zeroline=False)  # fmt: skip
    tickvals, ticktext = [], []
    for c in range(n_cols):
        x0 = c * grid.block
        tickvals += [x0 + h for h in range(grid.n_heads)] + [x0 + grid.n_heads + 0.2]
        head = [f"H{h}" for h in range(grid.n_heads)]
        if grid.columns is not None:
            head[len(head) // 2] += f"<br>{escape(grid.columns[c])}"
        ticktext += head + ["MLP"]
    fig.update_xaxes(tickmode="array", tickvals=tickvals, ticktext=ticktext, showgrid=False, zeroline=False,
                     range=[-0.8, n_cols * grid.block - 1.2])  # fmt: skip
    return fig


def _sequential(graph) -> bool:
    """Whether a graph's MLPs read their own block's heads (an edge L0H0 -> MLP0 exists)."""
    s, r = graph.senders.index("L0H0"), graph.receivers.index("MLP0")
    return bool(np.isfinite(np.asarray(graph.matrix[s, r]).reshape(-1)[0]))


def _size(grid: _Grid) -> tuple[int, int]:
    n_cols = 1 if grid.columns is None else len(grid.columns)
    return clamp(160 + 46 * n_cols * grid.block, 520, 1600), clamp(100 + 64 * (grid.n_layers + 2), 360, 1400)


def _totals(edges: Sequence[Any], scores: np.ndarray) -> dict[tuple[str, Any], float]:
    out: dict[tuple[str, Any], float] = {}
    for e, s in zip(edges, scores, strict=True):
        out[(e.sender, e.position)] = out.get((e.sender, e.position), 0.0) + float(s)
    return out


def plot_graph(
    graph,
    *,
    n: int = 200,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    colorscale: Any = None,
    max_width: float = 6.0,
    show_nodes: bool = True,
    **unknown: Any,
):
    """The graph's top n edges by |score| as a layered drawing: embed at the bottom, layers upward with their
    heads across and the MLP at the right, logits at the top (one block per column of a by-position graph).
    Edge colour (diverging at 0) and width by score; hover an edge's midpoint for its name and score."""
    check_unknown("Graph.plot()", unknown, GRAPH_OPTIONS)
    k = _check_n(n, graph.n_edges)
    circuit = graph.top(k)
    edges = list(circuit.edges)
    scores = np.array([graph.score(e) for e in edges], np.float64)
    grid = _Grid(graph.n_layers, graph.n_heads, graph.n_kv_heads, graph.columns, _sequential(graph))
    fig = _draw(edges, scores, grid, colorscale=colorscale, max_width=max_width, show_nodes=show_nodes,
                node_totals=_totals(edges, scores))  # fmt: skip
    o = graph.options
    if title is None:
        steps = f" ({o.get('steps')} steps)" if o.get("method") == "eap-ig" else ""
        title = (
            f"<b>edge_attribution</b> \u00b7 method {escape(o.get('method', '?'))}{steps} \u00b7 metric "
            f"{escape(o.get('metric', '?'))} \u00b7 top {k} of {graph.n_edges} edges"
            f"<br>mean over {len(graph.clean)} examples \u00b7 metric clean {fmt(graph.clean_mean)}, corrupt "
            f"{fmt(graph.corrupt_mean)} \u00b7 score = estimated effect of patching the edge clean \u2192 corrupt"
        )
    w, h = _size(grid)
    layout(fig, title=title, template=template, width=width, height=height, auto_width=w, auto_height=h)
    return fig


def plot_circuit(
    circuit,
    *,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    colorscale: Any = None,
    max_width: float = 6.0,
    show_nodes: bool = True,
    **unknown: Any,
):
    """A circuit's edges in the graph's layered drawing, coloured by their scores when the circuit was cut
    from a graph (a hand-made circuit: grey edges on the grid its node names need)."""
    check_unknown("Circuit.plot()", unknown, [o for o in GRAPH_OPTIONS if o != "n"])
    g = circuit.graph
    edges = list(circuit.edges)
    if g is not None:
        scores: np.ndarray | None = np.array([g.score(e) for e in edges], np.float64)
        grid = _Grid(g.n_layers, g.n_heads, g.n_kv_heads, g.columns, _sequential(g))
    else:
        scores = None
        columns = sorted({str(e.position) for e in edges if e.position is not None})
        grid = _Grid(*_dims(edges), columns or None)
    fig = _draw(edges, scores, grid, colorscale=colorscale, max_width=max_width, show_nodes=show_nodes,
                node_totals=_totals(edges, scores) if scores is not None else None)  # fmt: skip
    if title is None:
        title = f"<b>circuit</b> \u00b7 {len(edges)} edges, {len(circuit.nodes)} nodes"
        if g is not None:
            o = g.options
            title += (
                f" \u00b7 of {g.n_edges} ({escape(o.get('method', '?'))}, metric {escape(o.get('metric', '?'))})"
                f"<br>edge colour and width: the edge's attribution score (sum {fmt(float(np.sum(scores)))})"
            )
    w, h = _size(grid)
    layout(fig, title=title, template=template, width=width, height=height, auto_width=w, auto_height=h)
    return fig


def plot_faithfulness(
    result,
    *,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    **unknown: Any,
):
    """Per example: the metric with the circuit (everything outside it from the corrupt run; for edge_patch
    the corrupt run with the edges patched clean) between that example's clean and corrupt metrics."""
    import plotly.graph_objects as go

    check_unknown(f"{type(result).__name__}.plot()", unknown, FAITHFULNESS_OPTIONS)
    df = faithfulness_frame(result)
    x = df["example"].to_numpy()
    fig = go.Figure()
    patched = result.options.get("op") == "edge_patch"
    name = "edges patched" if patched else "circuit"
    for col, label_, symbol, colour in (
        ("clean", "clean", "triangle-up", "#b2182b"),
        ("corrupt", "corrupt", "triangle-down", "#2166ac"),
        ("metric", name, "circle", "#1a1a1a"),
    ):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=df[col].to_numpy(np.float64),
                mode="markers",
                name=label_,
                marker=dict(symbol=symbol, size=9 if col == "metric" else 8, color=colour),
                hovertemplate=f"example %{{x}}: {label_} %{{y:.4g}}<extra></extra>",
            )  # fmt: skip
        )
    for value, label_, colour, dash in (
        (result.clean, "clean mean", "#b2182b", "dot"),
        (result.corrupt, "corrupt mean", "#2166ac", "dot"),
        (result.raw, f"{name} mean", "#1a1a1a", "dash"),
    ):
        fig.add_hline(y=value, line=dict(color=colour, dash=dash, width=1), annotation_text=label_,
                      annotation_position="top left")  # fmt: skip
    fig.update_xaxes(title="example", tickmode="linear" if len(x) <= 40 else "auto")
    fig.update_yaxes(title=f"metric {escape(result.options.get('metric', ''))}")
    if title is None:
        op = "edge_patch" if patched else "faithfulness"
        title = (
            f"<b>{op}</b> \u00b7 {result.n_edges} edges \u00b7 normalised {fmt(float(result))}"
            f"<br>metric {fmt(result.raw)} (clean {fmt(result.clean)}, corrupt {fmt(result.corrupt)}) over "
            f"{len(x)} examples"
        )
    layout(fig, title=title, template=template, width=width, height=height,
           auto_width=clamp(360 + 14 * len(x), 560, 1400), auto_height=380)  # fmt: skip
    return fig


def plot_faithfulness_curve(
    curve,
    *,
    x: str = "edges",
    log_x: bool = True,
    template: Any = None,
    title: str | None = None,
    width: int | None = None,
    height: int | None = None,
    **unknown: Any,
):
    """Normalised faithfulness of the top-n circuits against n (x="edges") or the fraction of the graph's
    edges (x="fraction"), log-scaled by default; 1 (the clean metric) and 0 (corrupt) as reference lines."""
    import plotly.graph_objects as go

    check_unknown("FaithfulnessCurve.plot()", unknown, CURVE_OPTIONS)
    check_choice("x", x, ("edges", "fraction"))
    if not isinstance(log_x, bool):
        raise WorkbenchError(f"log_x= must be True or False, got {log_x!r}.")
    df = faithfulness_curve_frame(curve)
    xs = df["edges" if x == "edges" else "fraction"].to_numpy(np.float64)
    if log_x and (xs <= 0).any():
        keep = xs > 0  # a log axis cannot show the empty circuit
        df, xs = df[keep], xs[keep]
    fig = go.Figure(
        go.Scatter(
            x=xs,
            y=df["faithfulness"].to_numpy(np.float64),
            mode="lines+markers",
            name="faithfulness",
            customdata=np.stack([df["edges"].to_numpy(), df["metric"].to_numpy(np.float64)], axis=1)
            if len(df)
            else None,
            hovertemplate="%{customdata[0]} edges: faithfulness %{y:.3f} (metric %{customdata[1]:.4g})"
            "<extra></extra>",
        )  # fmt: skip
    )
    fig.add_hline(y=1.0, line=dict(color="#b2182b", dash="dot", width=1), annotation_text="clean",
                  annotation_position="top left")  # fmt: skip
    fig.add_hline(y=0.0, line=dict(color="#2166ac", dash="dot", width=1), annotation_text="corrupt",
                  annotation_position="top left")  # fmt: skip
    fig.update_xaxes(title="edges kept" if x == "edges" else "fraction of the graph's edges kept",
                     type="log" if log_x else "linear")  # fmt: skip
    fig.update_yaxes(title="normalised faithfulness")
    o = curve.options
    if title is None:
        title = (
            f"<b>faithfulness_curve</b> \u00b7 metric {escape(o.get('metric', '?'))} \u00b7 area "
            f"{fmt(curve.area)}<br>top-n circuits of a graph of {curve.n_edges} edges \u00b7 mean over "
            f"{o.get('n_examples', '?')} examples \u00b7 clean {fmt(curve.clean)}, corrupt {fmt(curve.corrupt)}"
        )
    layout(fig, title=title, template=template, width=width, height=height, auto_width=640, auto_height=380)
    return fig
