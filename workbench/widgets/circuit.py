"""CircuitView: an edge-attribution graph drawn as a circuit (layers bottom to top), cut to its top edges with a
slider whose faithfulness is measured live, and checked node by node and edge by edge with exact patching.

No science here: the circuit is `graph.top(n)` plus the pins, its faithfulness `wb.faithfulness`, the curve
`wb.faithfulness_curve`, a node's check `wb.patch` over the dataset, an edge's `wb.edge_patch`.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np
import traitlets

from .base import WorkbenchWidget, _errors, _ops, check_int, finite, message_error, pack

MAX_DRAWN = 500  # edges drawn at most (the largest |score| of the circuit); the rest are counted, not drawn
CURVE_SIZES = (10, 20, 50, 100, 200, 500, 1000)  # the curve's circuit sizes (those <= the graph's edges)
PIN_FRACTION = (
    0.1  # a pinned-in node adds its edges with |score| >= this x the current cut's smallest |score|
)
CHECKS_MAX = 50
_HEAD = re.compile(r"^L(\d+)H(\d+)$")
_MLP = re.compile(r"^MLP(\d+)$")
_KV = re.compile(r"^L(\d+)KV(\d+)$")
_RECEIVER = re.compile(r"^L(\d+)H(\d+)\.([qkv])$")


def _metric_of(graph: Any, metric: Any) -> Any:
    """The metric the view measures with: `metric=`, or wb.logit_diff() when the graph was found with it."""
    from ..ops.metrics import as_metric, logit_diff

    if metric is not None:
        return as_metric(metric)
    name = graph.options.get("metric")
    if name == logit_diff().name:
        return logit_diff()
    raise _errors().WorkbenchError(
        f"CircuitView needs metric=: the graph was found with {name!r}, and a graph keeps only the metric's name; "
        "pass the same metric object, e.g. wb.CircuitView(model, ds, graph, metric=wb.logit_diff())."
    )


def _load_line(model: Any) -> str:
    """wb-level Python that loads `model`."""
    source = str(getattr(model, "source", ""))
    info = getattr(model, "load_info", {}) or {}
    if source.startswith("tiny:"):
        return (
            f"from workbench.testing import tiny_model\n\nmodel = tiny_model({source.split(':', 1)[1]!r})\n"
        )
    if "remote" in info:
        return f"model = wb.load({info['remote']!r}, remote=True)\n"
    if "gguf" in info:
        from ..loading import DEFAULT_GGUF

        if str(info["gguf"]).endswith(DEFAULT_GGUF):
            return "model = wb.load()  # the embedded SmolLM2-135M-Instruct\n"
        return f"model = wb.load({str(info['gguf'])!r})\n"
    if "pretrained" in info:
        return f"model = wb.load({info['pretrained']!r})\n"
    return f"model = wb.load({source!r})  # the model the graph was found on\n"


def _dataset_code(ds: Any) -> str:
    """wb-level Python that rebuilds the dataset example by example."""
    ex = list(ds)
    lines = [
        "ds = wb.Dataset(",
        f"    clean={[e.clean for e in ex]!r},",
        f"    corrupt={[e.corrupt for e in ex]!r},",
    ]
    if any(e.target is not None for e in ex):
        lines.append(f"    target={[e.target for e in ex]!r},")
    if any(e.foil is not None for e in ex):
        lines.append(f"    foil={[e.foil for e in ex]!r},")
    if any(e.spans for e in ex):
        lines.append(f"    spans={[dict(e.spans or {}) for e in ex]!r},")
    if getattr(ds, "name", ""):
        lines.append(f"    name={ds.name!r},")
    return "\n".join([*lines, ")"]) + "\n"


class CircuitView(WorkbenchWidget):
    """`CircuitView(model, ds, graph, metric=None, n=50, sizes=None, max_drawn=500, column=None)`: the graph of
    `wb.edge_attribution(model, ds, ...)` as a circuit, layers bottom to top (embed below layer 0, logits above
    the last), a node per attention head (x = head index) and per MLP (right of the heads, half a layer up: it
    reads its own block's heads); under grouped-query attention each key-value head has a small port under its
    query heads, where edges into its `.k` / `.v` inputs end (edges into a query head end at the head; the hover
    names the receiver input).

    The circuit is the top `n` edges by |score| (the slider), with the pins applied:
    - a node **pinned out** loses every edge that touches it (as sender or receiver), whatever its score;
    - a node **pinned in** adds every edge of the graph that touches it with |score| >= 1/10 of the smallest
      |score| kept by the top-n cut (of the largest |score| when n = 0), unless the edge's other end is pinned out.
    Pins apply to the component at every column of a by-position graph. Edges are drawn with width and colour by
    score (red raises the metric, blue lowers it), the `max_drawn` largest of the circuit ("n drawn of m").

    Every circuit's faithfulness is `wb.faithfulness(model, ds, circuit, metric=metric)`, computed in the
    background: a newer circuit (slider, pins) cancels the computation of an older one, and a result that arrives
    for a circuit no longer shown is kept in a cache but not drawn. The faithfulness curve (`wb.faithfulness_curve`
    at `sizes`, default 10, 20, 50, ... 1000 up to the graph's size) is computed once, a size at a time after the
    first faithfulness, so the slider never waits for more than one size; the current size is marked on it.

    Click a node (or Enter on the selected one; arrow keys move the selection): `wb.patch` of its output over the
    dataset (`wb.Cell('head', l, head=h)`, `wb.Cell('mlp_out', l)`, `wb.Cell('embed', 0)`; a key-value port: its
    k and v together; at the shown column of a by-position graph), its exact effect (patched - corrupt mean)
    beside the estimate (`graph.node_scores`; for a port the sum of its incoming edges). Click an edge:
    `wb.edge_patch(model, ds, [edge], metric=metric)`, effect `.raw - .corrupt`, beside `graph.score(edge)`.

    A by-position graph shows one column at a time (`column`, the picker; each column's number of kept edges is
    listed): the circuit and its faithfulness are over all columns, the drawing is one column's edges, which keeps
    the layer x head layout readable (columns side by side would shrink a 30-layer model's nodes to dots).
    `to_code()` is the code of the circuit and its faithfulness.
    """

    _view_kind = traitlets.Unicode("circuit").tag(sync=True)
    # the graph, fixed: {"senders", "receivers", "columns" (None), "n_layers", "n_heads", "n_kv_heads", "n_edges",
    # "method", "metric", "n_examples", "align", "by_position", "clean", "corrupt", "gqa", "names" [N],
    # "kinds" [N] ("embed", "head", "kv", "mlp", "logits"), "layers" int32 [N], "index" int32 [N] (head / kv head),
    # "sender_node" int32 [S], "receiver_node" int32 [R], "receiver_kind" [R] ("q", "k", "v", "mlp", "logits"),
    # "node_in" / "node_out" / "node_in_kv" float32 [N, C] (every edge's sum; C = 1 without positions)}
    graph = traitlets.Dict().tag(sync=True)
    n = traitlets.Int(50).tag(sync=True)  # the top n edges by |score| are kept (before the pins)
    column = traitlets.Int(-1).tag(
        sync=True
    )  # the column drawn of a by-position graph (-1 without positions)
    pinned_in = traitlets.List(traitlets.Unicode()).tag(sync=True)
    pinned_out = traitlets.List(traitlets.Unicode()).tag(sync=True)
    max_drawn = traitlets.Int(MAX_DRAWN).tag(sync=True)
    # the circuit cut: {"key", "n", "size", "added", "dropped", "cut", "pin_threshold", "max_abs", "per_column",
    # "in_column", "drawn", "s" / "r" / "c" int32 [k], "score" float32 [k] (the drawn edges, largest |score| first),
    # "node_in" / "node_out" float32 [N] (the kept edges' sums at the column drawn)}
    circuit = traitlets.Dict().tag(sync=True)
    # the faithfulness shown: {"key" (of the circuit it measured), "value", "raw", "clean", "corrupt", "n_edges",
    # "sem"}
    faithfulness = traitlets.Dict().tag(sync=True)
    # {"sizes" int32 [k], "values" / "raw" float32 [k] (measured so far), "target" [sizes asked], "done"}
    curve = traitlets.Dict().tag(sync=True)
    # the last exact check: {"kind" ("node"/"edge"), "name", "node" | "edge": [s, r, c], "column", "exact",
    # "estimate", "raw", "clean", "corrupt", "normalized", "n"}
    inspected = traitlets.Dict().tag(sync=True)
    checks = traitlets.List().tag(sync=True)  # every check so far (as `inspected`), newest last

    def __init__(
        self,
        model: Any,
        ds: Any,
        graph: Any,
        *,
        metric: Any = None,
        n: int = 50,
        sizes: Any = None,
        max_drawn: int = MAX_DRAWN,
        column: int | str | None = None,
        wait: bool = False,
        **kwargs: Any,
    ):
        from ..ops.circuit_results import Graph
        from ..ops.circuits import check_graph
        from ..ops.over_dataset import is_dataset
        from ..validate import as_int

        errors = _errors()
        if not is_dataset(ds):
            raise errors.WorkbenchError(
                "CircuitView(model, ds, graph) takes the wb.Dataset the graph was found on (e.g. wb.datasets.ioi()), "
                f"got {type(ds).__name__}."
            )
        if not isinstance(graph, Graph):
            raise errors.WorkbenchError(
                "CircuitView(model, ds, graph): graph is the result of wb.edge_attribution(model, ds, metric=...), "
                f"got {type(graph).__name__}."
            )
        check_graph(model, ds, graph)
        if graph.n_edges == 0:
            raise errors.WorkbenchError("This graph has no edges (every score is NaN): nothing to draw.")
        self._graph = graph
        self._ds = ds
        self._metric = _metric_of(graph, metric)
        self._align = str(graph.options.get("align") or "exact")
        n = as_int(n, "n", lo=0, hi=graph.n_edges, hint=f" (the graph has {graph.n_edges} edges)")
        max_drawn = as_int(max_drawn, "max_drawn", lo=1, hi=100_000)
        if sizes is None:
            sizes = [s for s in CURVE_SIZES if s <= graph.n_edges]
            if graph.n_edges <= CURVE_SIZES[-1] and graph.n_edges not in sizes:
                sizes.append(graph.n_edges)
        try:
            self._sizes = sorted({int(s) for s in sizes})
        except (TypeError, ValueError):
            raise errors.WorkbenchError(f"sizes= is a list of edge counts, got {sizes!r}.") from None
        if not self._sizes or self._sizes[0] < 0 or self._sizes[-1] > graph.n_edges:
            raise errors.WorkbenchError(
                f"sizes= needs edge counts 0..{graph.n_edges} (the graph's edges), got {list(sizes)!r}."
            )
        self._structure()
        col = -1
        if graph.columns is not None:
            col = self._column_index(column) if column is not None else -2  # -2: the busiest column, below
        elif column is not None:
            raise errors.WorkbenchError(
                "column= picks a column of a by-position graph; this graph sums over positions (by_position=False)."
            )
        self._faith: dict[tuple, Any] = {}  # circuit key -> Faithfulness
        self._curve_parts: dict[int, Any] = {}  # size -> FaithfulnessCurve of that one size
        self._curve_running = False
        self._running: tuple[tuple, threading.Event] | None = (
            None  # (key, cancel) of the faithfulness running
        )
        self._superseded_runs: set[int] = set()  # ids of the cancel events set because a newer circuit came
        self._inspected_result: Any = None
        self._quiet = False
        self._circuit_obj: Any = None
        self._key_shown: tuple | None = None
        super().__init__(model, graph=self._graph_state(), n=n, column=col, max_drawn=max_drawn, **kwargs)
        self._handlers.update(node=self._on_node, edge=self._on_edge, measure=lambda c, b: self._measure())
        self.observe(self._n_set, names=["n"])
        self.observe(self._pins_set, names=["pinned_in", "pinned_out"])
        self.observe(self._column_set, names=["column"])
        self.observe(self._max_drawn_set, names=["max_drawn"])
        self.curve = {"sizes": pack(np.zeros(0, np.int32)), "values": pack(np.zeros(0, np.float32)),
                      "raw": pack(np.zeros(0, np.float32)), "target": list(self._sizes), "done": False}  # fmt: skip
        self._update(wait=wait)

    # ------------------------------------------------------------------ structure
    def _structure(self) -> None:
        """Nodes, and which node each sender / receiver is."""
        g = self._graph
        L, H, G = g.n_layers, g.n_heads, g.n_kv_heads
        self._gqa = G != H
        names, kinds, layers, index = ["embed"], ["embed"], [-1], [0]
        for layer in range(L):
            for h in range(H):
                names.append(f"L{layer}H{h}"), kinds.append("head"), layers.append(layer), index.append(h)
            if self._gqa:
                for kv in range(G):
                    (
                        names.append(f"L{layer}KV{kv}"),
                        kinds.append("kv"),
                        layers.append(layer),
                        index.append(kv),
                    )
            names.append(f"MLP{layer}"), kinds.append("mlp"), layers.append(layer), index.append(H)
        names.append("logits"), kinds.append("logits"), layers.append(L), index.append(0)
        self._names, self._kinds = names, kinds
        self._layers, self._index = np.asarray(layers, np.int32), np.asarray(index, np.int32)
        self._node = {name: i for i, name in enumerate(names)}
        self._sender_node = np.asarray([self._node[s] for s in g.senders], np.int32)
        rnode, rkind = [], []
        for r in g.receivers:
            m = _RECEIVER.match(r)
            if m:
                layer, h, kind = int(m.group(1)), int(m.group(2)), m.group(3)
                name = f"L{layer}KV{h}" if self._gqa and kind in "kv" else f"L{layer}H{h}"
                rnode.append(self._node[name])
                rkind.append(kind)
            else:
                rnode.append(self._node[r])
                rkind.append("logits" if r == "logits" else "mlp")
        self._receiver_node = np.asarray(rnode, np.int32)
        self._receiver_kind = rkind
        mat = g.matrix if g.columns is not None else g.matrix[..., None]  # [S, R, C]
        self._mat = mat
        self._C = mat.shape[2]
        self._absflat = np.abs(np.nan_to_num(g.matrix, nan=0.0)).reshape(-1)
        self._valid = np.isfinite(g.matrix.reshape(-1))
        finite_mat = np.nan_to_num(mat, nan=0.0).astype(np.float64)
        N = len(names)
        node_out = np.zeros((N, self._C))
        node_in = np.zeros((N, self._C))
        node_in_kv = np.zeros((N, self._C))
        np.add.at(node_out, self._sender_node, finite_mat.sum(axis=1))
        per_receiver = finite_mat.sum(axis=0)  # [R, C]
        np.add.at(node_in, self._receiver_node, per_receiver)
        kv = np.asarray([k in ("k", "v") for k in rkind])
        np.add.at(node_in_kv, self._receiver_node[kv], per_receiver[kv])
        self._node_in, self._node_out, self._node_in_kv = node_in, node_out, node_in_kv
        # flat edge index -> its sender's and receiver's node
        R = len(g.receivers)
        flat = np.arange(self._absflat.size)
        self._flat_s = flat // (R * self._C)
        self._flat_r = (flat // self._C) % R
        self._flat_c = flat % self._C
        self._flat_sn = self._sender_node[self._flat_s]
        self._flat_rn = self._receiver_node[self._flat_r]

    def _graph_state(self) -> dict[str, Any]:
        g = self._graph
        return {
            "senders": list(g.senders),
            "receivers": list(g.receivers),
            "columns": None if g.columns is None else [str(c) for c in g.columns],
            "n_layers": int(g.n_layers),
            "n_heads": int(g.n_heads),
            "n_kv_heads": int(g.n_kv_heads),
            "n_edges": int(g.n_edges),
            "method": str(g.options.get("method", "")),
            "metric": str(g.options.get("metric", "")),
            "n_examples": len(g.clean),
            "align": self._align,
            "by_position": g.columns is not None,
            "clean": finite(g.clean_mean),
            "corrupt": finite(g.corrupt_mean),
            "gqa": bool(self._gqa),
            "names": list(self._names),
            "kinds": list(self._kinds),
            "layers": pack(self._layers),
            "index": pack(self._index),
            "sender_node": pack(self._sender_node),
            "receiver_node": pack(self._receiver_node),
            "receiver_kind": list(self._receiver_kind),
            "node_in": pack(self._node_in),
            "node_out": pack(self._node_out),
            "node_in_kv": pack(self._node_in_kv),
        }

    def _column_index(self, column: Any) -> int:
        cols = [str(c) for c in self._graph.columns or []]
        if (
            isinstance(column, int | np.integer)
            and not isinstance(column, bool)
            and 0 <= int(column) < len(cols)
        ):
            return int(column)
        if str(column) in cols:
            return cols.index(str(column))
        raise _errors().WorkbenchError(
            f"column={column!r} is not a column of this graph: its columns are {cols} (or their index 0..{len(cols) - 1})."
        )

    # ------------------------------------------------------------------ the circuit
    def _key(self) -> tuple:
        return (int(self.n), tuple(sorted(self.pinned_in)), tuple(sorted(self.pinned_out)))

    def _cut(self, key: tuple) -> tuple[np.ndarray, dict[str, Any]]:
        """Flat indices of the circuit's edges (top-n order, then the pinned-in additions by |score|)."""
        n, pin_in, pin_out = key
        order = (
            self._graph._order
        )  # the order graph.top(n) cuts by: |score| descending, ties in forward order
        base = order[:n]
        cut = float(self._absflat[order[n - 1]]) if n > 0 else float(self._absflat[order[0]])
        threshold = cut * PIN_FRACTION
        out_ids = np.asarray([self._node[p] for p in pin_out], np.int32)
        in_ids = np.asarray([self._node[p] for p in pin_in], np.int32)
        touches_out = np.isin(self._flat_sn, out_ids) | np.isin(self._flat_rn, out_ids)
        kept = base[~touches_out[base]]
        added = np.zeros(0, np.int64)
        if in_ids.size:
            touches_in = np.isin(self._flat_sn, in_ids) | np.isin(self._flat_rn, in_ids)
            cand = self._valid & touches_in & ~touches_out & (self._absflat >= threshold)
            cand[base] = False
            added = np.flatnonzero(cand)
            added = added[np.argsort(-self._absflat[added], kind="stable")]
        info = {"cut": cut, "pin_threshold": threshold if in_ids.size else None,
                "dropped": int(base.size - kept.size), "added": int(added.size)}  # fmt: skip
        return np.concatenate([kept, added]).astype(np.int64), info

    def circuit_of(self, n: int | None = None, pinned_in: Any = None, pinned_out: Any = None) -> Any:
        """The wb.Circuit the view measures for these settings (default: the current ones)."""
        from ..ops.circuit_results import Circuit

        key = (
            int(self.n if n is None else n),
            tuple(sorted(self.pinned_in if pinned_in is None else pinned_in)),
            tuple(sorted(self.pinned_out if pinned_out is None else pinned_out)),
        )
        flat, _ = self._cut(key)
        return Circuit([self._graph._edge_at(i) for i in flat], graph=self._graph)

    def _update(self, wait: bool = False) -> None:
        """Cut the circuit for the current settings, draw it, and measure its faithfulness."""
        key = self._key()
        flat, info = self._cut(key)
        from ..ops.circuit_results import Circuit

        self._circuit_obj = Circuit([self._graph._edge_at(i) for i in flat], graph=self._graph)
        self._circuit_key = key
        self._flat = flat
        if int(self.column) == -2:
            counts = np.bincount(self._flat_c[flat], minlength=self._C) if flat.size else np.zeros(self._C)
            self._set_quietly(column=int(np.argmax(counts)))
        self._draw(key, flat, info)
        self._measure(wait=wait)

    def _draw(self, key: tuple, flat: np.ndarray, info: dict[str, Any]) -> None:
        c = max(0, int(self.column))
        in_col = flat[self._flat_c[flat] == c] if self._C > 1 else flat
        per_column = (
            np.bincount(self._flat_c[flat], minlength=self._C).tolist() if flat.size else [0] * self._C
        )
        drawn = in_col[np.argsort(-self._absflat[in_col], kind="stable")][: int(self.max_drawn)]
        scores = self._graph.matrix.reshape(-1)[in_col].astype(np.float64)
        N = len(self._names)
        node_in = np.zeros(N)
        node_out = np.zeros(N)
        np.add.at(node_out, self._flat_sn[in_col], scores)
        np.add.at(node_in, self._flat_rn[in_col], scores)
        self.circuit = {
            "key": repr(key),
            "n": int(key[0]),
            "size": int(flat.size),
            **info,
            "max_abs": finite(self._absflat[drawn].max()) if drawn.size else None,
            "per_column": [int(x) for x in per_column],
            "in_column": int(in_col.size),
            "drawn": int(drawn.size),
            "s": pack(self._flat_s[drawn].astype(np.int32)),
            "r": pack(self._flat_r[drawn].astype(np.int32)),
            "c": pack(self._flat_c[drawn].astype(np.int32)),
            "score": pack(self._graph.matrix.reshape(-1)[drawn].astype(np.float32)),
            "node_in": pack(node_in.astype(np.float32)),
            "node_out": pack(node_out.astype(np.float32)),
        }

    # ------------------------------------------------------------------ faithfulness, live
    def _measure(self, wait: bool = False) -> None:
        key = self._circuit_key
        circuit = self._circuit_obj
        if key in self._faith:
            self._show_faith(key, self._faith[key])
            if not self.runner.busy_for(self):
                self._clear_error()
                self.status = "done"
            self._continue_curve(wait=wait)
            return
        running = self._running
        if running is not None and running[0] != key:  # a newer circuit: the older computation stops
            self._superseded_runs.add(id(running[1]))
            running[1].set()

        def run(progress, cancel):
            if self._circuit_key != key:  # the user moved on before this started: the newer job follows
                raise _errors().CancelledError("superseded by a newer circuit")
            self._running = (key, cancel)
            try:
                progress(0.0, f"faithfulness of {len(circuit)} edges")
                return _ops().faithfulness(self.model, self._ds, circuit, metric=self._metric, align=self._align,
                                           progress=progress, cancel=cancel)  # fmt: skip
            finally:
                if self._running is not None and self._running[1] is cancel:
                    self._running = None

        def done(f):
            self._faith[key] = f
            if (
                self._circuit_key == key
            ):  # else: stale (a newer circuit is shown); kept for when it comes back
                self._show_faith(key, f)
                self._record(
                    f"faithfulness of {len(circuit)} edges (top {key[0]}"
                    + (f", pinned in {', '.join(key[1])}" if key[1] else "")
                    + (f", pinned out {', '.join(key[2])}" if key[2] else "")
                    + f"): {float(f):.3f}",
                    f,
                    args={
                        "n": key[0],
                        **({"pinned_in": list(key[1])} if key[1] else {}),
                        **({"pinned_out": list(key[2])} if key[2] else {}),
                    },  # fmt: skip
                    value=finite(float(f)),
                    top=[],
                )
                self.code = self.to_code()
            self._continue_curve()

        self.submit("faithfulness", "", run, done, slot="faith", wait=wait, failed=lambda exc: "")

    def _cancelled(self, job: Any) -> None:
        """A run stopped by a newer circuit keeps the view running (the newer one is queued); else as usual."""
        if id(job.cancel) in self._superseded_runs or (job.slot == "faith" and self.runner.pending_for(self)):
            self._superseded_runs.discard(id(job.cancel))
            if self.runner.pending_for(self):
                self.progress_text = "a newer circuit is next"
                return
        super()._cancelled(job)

    def _show_faith(self, key: tuple, f: Any) -> None:
        self._key_shown = key
        self.faithfulness = {
            "key": repr(key),
            "value": finite(float(f)),
            "raw": finite(f.raw),
            "clean": finite(f.clean),
            "corrupt": finite(f.corrupt),
            "n_edges": int(f.n_edges),
            "sem": finite(np.std(f.per_example) / np.sqrt(max(1, len(f.per_example)))),
        }
        self.last_result = f

    @property
    def faithfulness_result(self) -> Any:
        """The wb.Faithfulness of the circuit shown (None until measured)."""
        return self._faith.get(self._circuit_key)

    @property
    def circuit_result(self) -> Any:
        """The wb.Circuit shown (the top n edges and the pins)."""
        return self._circuit_obj

    # ------------------------------------------------------------------ the curve, lazily, a size at a time
    def _continue_curve(self, wait: bool = False) -> None:
        todo = [s for s in self._sizes if s not in self._curve_parts]
        if not todo or self._curve_running:
            return
        size = todo[0]
        self._curve_running = True

        def run(progress, cancel):
            progress(
                0.0, f"faithfulness curve: {len(self._curve_parts) + 1}/{len(self._sizes)} ({size} edges)"
            )
            return _ops().faithfulness_curve(self.model, self._ds, self._graph, metric=self._metric, sizes=[size],
                                             align=self._align, progress=progress, cancel=cancel)  # fmt: skip

        def done(part):
            self._curve_running = False
            self._curve_parts[size] = part
            self._show_curve()
            self._continue_curve()

        def failed(exc):
            self._curve_running = False  # cancelled or failed: resumes after the next faithfulness
            return ""

        self.submit("faithfulness curve", "", run, done, slot="curve", wait=wait, failed=failed)

    def _show_curve(self) -> None:
        sizes = sorted(self._curve_parts)
        parts = [self._curve_parts[s] for s in sizes]
        self.curve = {
            "sizes": pack(np.asarray(sizes, np.int32)),
            "values": pack(np.asarray([float(p.values[0]) for p in parts], np.float32)),
            "raw": pack(np.asarray([float(p.raw[0]) for p in parts], np.float32)),
            "target": list(self._sizes),
            "done": len(sizes) == len(self._sizes),
        }

    @property
    def curve_result(self) -> Any:
        """The wb.FaithfulnessCurve at the sizes measured so far (None before the first)."""
        import dataclasses

        if not self._curve_parts:
            return None
        sizes = sorted(self._curve_parts)
        parts = [self._curve_parts[s] for s in sizes]
        first = parts[0]
        options = {**first.options, "sizes": sizes}
        from ..ops.circuits import _code

        model, m, graph = self.model, self._metric, self._graph
        return dataclasses.replace(
            first,
            sizes=np.asarray(sizes, np.int64),
            values=np.asarray([p.values[0] for p in parts], np.float32),
            raw=np.asarray([p.raw[0] for p in parts], np.float32),
            options=options,
            _code=lambda: _code("faithfulness_curve", model, m, options, graph=graph),
        )

    # ------------------------------------------------------------------ settings from the view
    def _set_quietly(self, **traits: Any) -> None:
        self._quiet = True
        try:
            with self.hold_trait_notifications():
                for k, v in traits.items():
                    setattr(self, k, v)
        finally:
            self._quiet = False

    def _n_set(self, change: Any) -> None:
        if self._quiet:
            return
        n = change["new"]
        total = self._graph.n_edges
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= total:
            self._set_quietly(n=change["old"])
            self._fail(_errors().WorkbenchError(f"n = {n!r}: keep 0..{total} edges (the graph's edges)."))
            return
        self._update()

    def _pins_set(self, change: Any) -> None:
        if self._quiet:
            return
        name = change["name"]
        bad = [p for p in change["new"] if p not in self._node]
        other = self.pinned_out if name == "pinned_in" else self.pinned_in
        both = [p for p in change["new"] if p in other]
        if bad or both:
            self._set_quietly(**{name: change["old"]})
            if bad:
                msg = (f"{name}: {bad[0]!r} is not a node of this graph (nodes: 'embed', 'L{{layer}}H{{head}}', "
                       f"'MLP{{layer}}', 'logits'{', key-value ports L{layer}KV{g}' if self._gqa else ''}).")  # fmt: skip
            else:
                msg = f"{both[0]!r} is pinned {'out' if name == 'pinned_in' else 'in'}: unpin it first."
            self._fail(_errors().WorkbenchError(msg))
            return
        dedup = list(dict.fromkeys(change["new"]))
        if dedup != list(change["new"]):
            self._set_quietly(**{name: dedup})
        self._update()

    def pin(self, node: str, mode: str | None = "in") -> CircuitView:
        """Pin `node` in ("in") or out ("out") of the circuit, or unpin it (None); faithfulness recomputes."""
        if node not in self._node:
            raise _errors().WorkbenchError(
                f"pin: {node!r} is not a node of this graph (e.g. 'L1H0', 'MLP2')."
            )
        if mode not in ("in", "out", None, "none"):
            raise _errors().WorkbenchError(f"pin(node, mode): mode is 'in', 'out' or None, got {mode!r}.")
        pin_in = [p for p in self.pinned_in if p != node] + ([node] if mode == "in" else [])
        pin_out = [p for p in self.pinned_out if p != node] + ([node] if mode == "out" else [])
        self._set_quietly(pinned_in=pin_in, pinned_out=pin_out)
        self._update()
        return self

    def _column_set(self, change: Any) -> None:
        if self._quiet:
            return
        c = change["new"]
        if self._graph.columns is None:
            ok = c == -1
        else:
            ok = isinstance(c, int) and not isinstance(c, bool) and 0 <= c < self._C
        if not ok:
            self._set_quietly(column=change["old"])
            hi = self._C - 1
            self._fail(_errors().WorkbenchError(
                f"column = {c!r}: " + (f"the graph's columns are 0..{hi}." if self._graph.columns is not None
                                        else "this graph has no columns (by_position=False): -1.")))  # fmt: skip
            return
        _, info = self._cut(self._circuit_key)
        self._draw(self._circuit_key, self._flat, info)

    def _max_drawn_set(self, change: Any) -> None:
        if self._quiet:
            return
        v = change["new"]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100_000:
            self._set_quietly(max_drawn=change["old"])
            self._fail(_errors().WorkbenchError(f"max_drawn = {v!r}: draw 1..100000 edges."))
            return
        _, info = self._cut(self._circuit_key)
        self._draw(self._circuit_key, self._flat, info)

    # ------------------------------------------------------------------ exact checks
    def _column_label(self) -> str | None:
        if self._graph.columns is None:
            return None
        return str(self._graph.columns[max(0, int(self.column))])

    def _on_node(self, content: dict, _buffers: list) -> None:
        node = content.get("node")
        if not isinstance(node, str) or node not in self._node:
            raise message_error(
                f"The view asked to patch node {str(node)[:40]!r}, which this graph does not have."
            )
        self.patch_node(node, request_id=str(content.get("id") or ""))

    def patch_node(self, node: str, *, request_id: str = "", wait: bool = False) -> CircuitView:
        """Exact patch of `node`'s output over the dataset (at the column shown), beside the estimate."""
        from ..engine.edits import Cell

        errors = _errors()
        i = self._node.get(node)
        if i is None:
            raise errors.WorkbenchError(
                f"{node!r} is not a node of this graph (e.g. 'L1H0', 'MLP2', 'embed')."
            )
        kind = self._kinds[i]
        layer, idx = int(self._layers[i]), int(self._index[i])
        label = self._column_label()
        c = max(0, int(self.column))
        pos = None if label is None else c  # a dataset Cell's position is a column index (any align=)
        g = self._graph
        if kind == "logits":
            raise errors.WorkbenchError(
                "logits is the output the metric reads: there is nothing to patch; click a head, an MLP or an edge."
            )
        if kind == "head":
            cells = [Cell("head", layer, pos, idx)]
            estimate = g.node_scores("head")[layer, idx]
        elif kind == "mlp":
            cells = [Cell("mlp_out", layer, pos)]
            estimate = g.node_scores("mlp_out")[layer]
        elif kind == "embed":
            cells = [Cell("embed", 0, pos)]
            estimate = g.node_scores("embed")
        else:  # a key-value port: its k and v together; the estimate is every edge into them
            cells = [Cell("k", layer, pos, idx), Cell("v", layer, pos, idx)]
            estimate = self._node_in[i, c]
        estimate = float(np.asarray(estimate).reshape(-1)[c] if np.ndim(estimate) else estimate)
        ds, m, align = self._ds, self._metric, self._align

        def run(progress, cancel):
            return _ops().patch(
                self.model, ds, metric=m, cells=cells, align=align, progress=progress, cancel=cancel
            )

        def done(p):
            exact = float(p) - float(p.corrupt_mean)
            self._show_check({
                "kind": "node", "name": node, "node": i, "column": label, "exact": finite(exact),
                "estimate": finite(estimate), "raw": finite(float(p)), "clean": finite(p.clean_mean),
                "corrupt": finite(p.corrupt_mean), "normalized": finite(p.normalized), "n": int(p.n_examples),
                "site": "+".join(cell.site for cell in cells),
            }, p)  # fmt: skip

        self.submit("patch node", request_id, run, done, slot="inspect", wait=wait)
        return self

    def _on_edge(self, content: dict, _buffers: list) -> None:
        g = self._graph
        s = check_int(content, "sender", 0, len(g.senders) - 1)
        r = check_int(content, "receiver", 0, len(g.receivers) - 1)
        c = check_int(content, "column", -1, max(0, self._C - 1), optional=True)
        if g.columns is None and c not in (None, -1):
            raise message_error(f"The view sent column={c} for a graph without columns (by_position=False).")
        col = c if c is not None and c >= 0 else int(self.column)
        pos = (
            None if g.columns is None else g.columns[max(0, col)]
        )  # the column's label, as the graph's edges
        from ..ops.circuit_results import Edge

        self.patch_edge(Edge(g.senders[s], g.receivers[r], pos), request_id=str(content.get("id") or ""))

    def patch_edge(self, edge: Any, *, request_id: str = "", wait: bool = False) -> CircuitView:
        """Exact patch of one edge over the dataset (wb.edge_patch), beside its estimate graph.score(edge)."""
        from ..ops.circuit_results import as_edge

        e = as_edge(edge)
        g = self._graph
        loc = g.locate(e)  # a WorkbenchError naming the problem when the edge is not in the graph
        estimate = float(g.matrix[loc])
        ds, m, align = self._ds, self._metric, self._align

        def run(progress, cancel):
            return _ops().edge_patch(
                self.model, ds, [e], metric=m, align=align, progress=progress, cancel=cancel
            )

        def done(f):
            exact = float(f.raw) - float(f.corrupt)
            self._show_check({
                "kind": "edge", "name": str(e), "edge": [int(loc[0]), int(loc[1]), int(loc[2]) if len(loc) > 2 else -1],
                "column": None if e.position is None else str(e.position), "exact": finite(exact),
                "estimate": finite(estimate), "raw": finite(f.raw), "clean": finite(f.clean),
                "corrupt": finite(f.corrupt), "normalized": finite(float(f)), "n": len(f.per_example),
                "receiver_kind": self._receiver_kind[int(loc[1])],
            }, f)  # fmt: skip

        self.submit("patch edge", request_id, run, done, slot="inspect", wait=wait)
        return self

    def _show_check(self, entry: dict[str, Any], result: Any) -> None:
        self._inspected_result = result
        self.inspected = entry
        self.checks = [*self.checks, entry][-CHECKS_MAX:]
        self._record(
            f"exact patch of {entry['kind']} {entry['name']}: {entry['exact']:+.4g} (estimate {entry['estimate']:+.4g})"
            if entry["exact"] is not None and entry["estimate"] is not None
            else f"exact patch of {entry['kind']} {entry['name']}",
            result,
            args={entry["kind"]: entry["name"]},
            value=entry["exact"],
            top=[],
        )
        self.code = self.to_code()

    @property
    def inspected_result(self) -> Any:
        """The result of the last exact check (a DatasetValue for a node, a Faithfulness for an edge)."""
        return self._inspected_result

    # ------------------------------------------------------------------ code
    def to_code(self) -> str:
        """The code that rebuilds the circuit shown and measures its faithfulness."""
        c = self._circuit_obj
        f = self.faithfulness_result
        try:
            from .. import codegen_circuits  # noqa: F401 - the nnsight code generator of the circuit ops

            parts = [f"# ---- the circuit ({len(c)} edges) ----\n{c.to_code()}circuit = result\n"]
            if f is not None:
                parts.append(f"# ---- its faithfulness (wb.faithfulness) ----\n{f.to_code()}")
            return "\n\n".join(parts)
        except ImportError:
            return self._wb_code()

    def _wb_code(self) -> str:
        """wb-level Python: the dataset, the graph, the circuit (top n and the pins) and wb.faithfulness."""
        g, m, key = self._graph, self._metric, self._circuit_key
        o = g.options
        method = o.get("method", "eap")
        args = [f"method={method!r}"]
        if o.get("steps"):
            args.append(f"steps={o['steps']!r}")
        if o.get("by_position"):
            args.append("by_position=True")
        if self._align != "exact":
            args.append(f"align={self._align!r}")
        metric_line = (
            f"metric = wb.{m.name}\n" if re.fullmatch(r"\w+\(.*\)", m.name) else
            f"metric = ...  # the metric the graph was found with ({m.name}): a wb metric or callable(logits) -> [B]\n"
        )  # fmt: skip
        n, pin_in, pin_out = key
        if pin_in or pin_out:
            edges = ",\n".join(f"    {str(e)!r}" for e in self._circuit_obj.edges)
            cut = (f"# the top {n} edges by |score|, with pins: pinned out {list(pin_out)} (every edge touching them "
                   f"dropped), pinned in {list(pin_in)} (their edges with |score| >= {PIN_FRACTION:g} x the cut's "
                   f"smallest kept |score| added)\ncircuit = wb.Circuit(edges=[\n{edges}\n], graph=graph)\n")  # fmt: skip
        else:
            cut = f"circuit = graph.top({n})  # the {n} edges with the largest |score|\n"
        align = f", align={self._align!r}" if self._align != "exact" else ""
        return (
            "import workbench as wb\n\n"
            + _load_line(self.model)
            + _dataset_code(self._ds)
            + metric_line
            + f"graph = wb.edge_attribution(model, ds, metric=metric, {', '.join(args)})\n"
            + cut
            + f"result = wb.faithfulness(model, ds, circuit, metric=metric{align})\n"
            + "print(float(result), result.raw)  # normalised (1 = clean, 0 = corrupt) and the metric itself\n"
        )
