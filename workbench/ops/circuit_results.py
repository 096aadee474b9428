"""What circuit discovery returns: an attribution Graph over every edge, a Circuit (a set of edges), and the
faithfulness of a circuit (one value, or the curve over circuit sizes)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .results import Coded, Figured

_EDGE = re.compile(r"^\s*(\S+)\s*->\s*(\S+?)\s*(?:@\s*(\S+)\s*)?$")


@dataclass(frozen=True)
class Edge:
    """sender -> receiver (at one column of a by-position graph): "L3H2 -> L5H1.q", "MLP0 -> logits @ S2"."""

    sender: str
    receiver: str
    position: int | str | None = None

    def __str__(self) -> str:
        at = "" if self.position is None else f" @ {self.position}"
        return f"{self.sender} -> {self.receiver}{at}"

    def __repr__(self) -> str:
        return f"Edge({str(self)!r})"


def as_edge(x: Any) -> Edge:
    """An Edge from an Edge, a string "A -> B" / "A -> B @ col", or a tuple (sender, receiver[, position])."""
    if isinstance(x, Edge):
        return x
    if isinstance(x, str):
        m = _EDGE.match(x)
        if m:
            pos: int | str | None = m.group(3)
            if isinstance(pos, str) and re.fullmatch(r"-?\d+", pos):
                pos = int(pos)
            return Edge(m.group(1), m.group(2), pos)
    if isinstance(x, tuple | list) and len(x) in (2, 3) and all(isinstance(v, str) for v in x[:2]):
        return Edge(x[0], x[1], x[2] if len(x) == 3 else None)
    raise WorkbenchError(
        f"Not an edge: {x!r}. Write an edge as 'L3H2 -> L5H1.q' (sender -> receiver; receivers are a head's "
        "'.q', '.k' or '.v', an MLP 'MLP4' or 'logits'), with ' @ column' for a by-position graph, or as a "
        "tuple (sender, receiver)."
    )


class Circuit(Coded):
    """A set of edges: `wb.Circuit(edges=["embed -> L0H1.q", ...])`, or `graph.top(n)` / `graph.threshold(t)`."""

    def __init__(self, edges: Iterable[Any] = (), *, graph: Graph | None = None) -> None:
        if isinstance(edges, str | Edge):
            edges = [edges]
        try:
            items = list(edges)
        except TypeError:
            raise WorkbenchError(
                f"wb.Circuit(edges=...) takes a list of edges, got {type(edges).__name__}."
            ) from None
        self.edges: tuple[Edge, ...] = tuple(dict.fromkeys(as_edge(e) for e in items))
        self.graph = graph  # the graph it was cut from (None for a hand-made circuit)
        self._code = lambda: _circuit_code(self)

    def __len__(self) -> int:
        return len(self.edges)

    def __iter__(self) -> Iterator[Edge]:
        return iter(self.edges)

    def __contains__(self, edge: Any) -> bool:
        return as_edge(edge) in set(self.edges)

    @property
    def nodes(self) -> list[str]:
        """Every node an edge of the circuit touches (receivers without their .q/.k/.v)."""
        out: dict[str, None] = {}
        for e in self.edges:
            out[e.sender] = None
            out[e.receiver.split(".")[0]] = None
        return list(out)

    def __or__(self, other: Circuit) -> Circuit:
        return Circuit([*self.edges, *other.edges], graph=self.graph)

    def __sub__(self, other: Circuit) -> Circuit:
        drop = set(other.edges)
        return Circuit([e for e in self.edges if e not in drop], graph=self.graph)

    def __repr__(self) -> str:
        shown = ", ".join(str(e) for e in self.edges[:3]) + (", ..." if len(self.edges) > 3 else "")
        return f"<wb.Circuit: {len(self.edges)} edges, {len(self.nodes)} nodes ({shown})>"

    def to_frame(self, **options: Any) -> Any:
        """One row per edge (layout: workbench/figures/circuits.py); score from the graph, NaN for a hand-made one."""
        from .. import figures

        return figures.circuit_frame(self, **options)

    def plot(self, **options: Any) -> Any:
        from .. import figures

        return figures.plot_circuit(self, **options)


def _circuit_code(c: Circuit) -> str:
    edges = ",\n".join(f"    {str(e)!r}" for e in c.edges)
    return f"import workbench as wb\n\nresult = wb.Circuit(edges=[\n{edges}\n])\n"


@dataclass(repr=False)
class Graph(Figured, Coded):
    """Edge attribution scores of every edge of a model's graph over a dataset (mean over examples).

    `matrix` [S, R] (or [S, R, C] by position) holds the score of sender s -> receiver r (NaN where s does not
    reach r); `senders` / `receivers` name the rows and columns, `columns` the dataset columns of a
    by-position graph. `scores` maps each Edge to its score; `top(n)` / `threshold(t)` cut circuits by |score|."""

    _figure_name = "graph"

    matrix: np.ndarray
    senders: list[str]
    receivers: list[str]
    columns: list[str] | None
    clean: np.ndarray  # each example's metric on the clean run [N]
    corrupt: np.ndarray  # ... and on the corrupt run
    options: dict[str, Any]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    model_key: tuple = ()
    dataset_key: tuple = ()
    metric: Any = field(default=None, compare=False)  # the Metric it was found with (the curve's default)
    _code: Callable[[], str] = field(default=lambda: "")

    def __getstate__(self) -> dict[str, Any]:
        import pickle

        state = super().__getstate__()
        try:
            pickle.dumps(state.get("metric"))
        except Exception:  # a metric built on a lambda: the graph pickles without it (pass metric= again)
            state["metric"] = None
        return state

    # ----------------------------------------------------------------- structure
    @property
    def by_position(self) -> bool:
        return self.columns is not None

    @cached_property
    def _index(self) -> tuple[dict[str, int], dict[str, int], dict[Any, int]]:
        cols = {} if self.columns is None else {c: j for j, c in enumerate(self.columns)}
        if self.columns is not None:
            cols.update({j: j for j in range(len(self.columns))})
        return (
            {s: i for i, s in enumerate(self.senders)},
            {r: i for i, r in enumerate(self.receivers)},
            cols,
        )

    @property
    def nodes(self) -> list[str]:
        """embed, every head, every MLP and logits (each 'name @ column' for a by-position graph)."""
        base = [*self.senders, "logits"]
        if self.columns is None:
            return base
        return [f"{n} @ {c}" for c in self.columns for n in base]

    @cached_property
    def _order(self) -> np.ndarray:
        """Flat indices of every existing edge, by |score| descending (ties: forward order)."""
        flat = np.abs(np.nan_to_num(self.matrix, nan=-1.0).reshape(-1))
        valid = np.isfinite(self.matrix.reshape(-1))
        idx = np.flatnonzero(valid)
        return idx[np.argsort(-flat[idx], kind="stable")]

    @property
    def n_edges(self) -> int:
        return int(self._order.size)

    def _edge_at(self, flat: int) -> Edge:
        if self.columns is None:
            s, r = divmod(int(flat), len(self.receivers))
            return Edge(self.senders[s], self.receivers[r])
        s, rest = divmod(int(flat), len(self.receivers) * len(self.columns))
        r, c = divmod(rest, len(self.columns))
        return Edge(self.senders[s], self.receivers[r], self.columns[c])

    @property
    def edges(self) -> list[Edge]:
        """Every edge, in forward order."""
        idx = np.flatnonzero(np.isfinite(self.matrix.reshape(-1)))
        return [self._edge_at(i) for i in idx]

    @property
    def scores(self) -> dict[Edge, float]:
        """Every edge's estimated effect of patching it from clean into corrupt (the metric's units)."""
        flat = self.matrix.reshape(-1)
        idx = np.flatnonzero(np.isfinite(flat))
        return {self._edge_at(i): float(flat[i]) for i in idx}

    def locate(self, edge: Any) -> tuple[int, ...]:
        """(sender row, receiver column[, data column]) of an edge of this graph, or a WorkbenchError."""
        e = as_edge(edge)
        senders, receivers, cols = self._index
        if e.sender not in senders:
            raise WorkbenchError(
                f"No sender {e.sender!r} in this graph: senders are 'embed', heads 'L{{layer}}H{{head}}' "
                f"(layers 0..{self.n_layers - 1}, heads 0..{self.n_heads - 1}) and MLPs 'MLP{{layer}}'."
            )
        if e.receiver not in receivers:
            raise WorkbenchError(
                f"No receiver {e.receiver!r} in this graph: receivers are a head's input 'L{{layer}}H{{head}}.q' "
                f"(key/value: '.k'/'.v' of key-value heads 0..{self.n_kv_heads - 1}), an MLP 'MLP{{layer}}' "
                "or 'logits'."
            )
        s, r = senders[e.sender], receivers[e.receiver]
        if not np.isfinite(self.matrix[s, r].reshape(-1)[0]):
            raise WorkbenchError(
                f"{e.sender} does not reach {e.receiver} directly (a sender only feeds receivers that read the "
                "stream after it: later layers, or its own block's MLP); pick a later receiver."
            )
        if self.columns is None:
            if e.position is not None:
                raise WorkbenchError(
                    f"Edge {e} names a position, but this graph sums over positions (by_position=False); drop "
                    "the ' @ ...' or find the graph with by_position=True."
                )
            return (s, r)
        if e.position not in cols:
            raise WorkbenchError(
                f"Edge {e} needs a column of this by-position graph ({self.columns}): add ' @ column'."
            )
        return (s, r, cols[e.position])

    def score(self, edge: Any) -> float:
        return float(self.matrix[self.locate(edge)])

    # ------------------------------------------------------------------ node scores
    def node_scores(self, kind: str = "head") -> np.ndarray:
        """Each node's summed outgoing effect: "head" [L, H], "mlp_out" [L], "embed" [] (by position:
        an extra last axis over the columns)."""
        out = np.nansum(self.matrix, axis=1)  # [S] or [S, C]
        per = self.n_heads + 1
        body = out[1:].reshape(self.n_layers, per, *out.shape[1:])
        if kind == "head":
            return body[:, : self.n_heads].astype(np.float32)
        if kind in ("mlp_out", "mlp"):
            return body[:, self.n_heads].astype(np.float32)
        if kind == "embed":
            return np.asarray(out[0], np.float32)
        raise WorkbenchError(f"node_scores(kind) is 'head', 'mlp_out' or 'embed', got {kind!r}.")

    # ------------------------------------------------------------------ circuits
    def top(self, n: int) -> Circuit:
        """The n edges with the largest |score|."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise WorkbenchError(f"top(n) takes a number of edges >= 0, got {n!r}.")
        if n > self.n_edges:
            raise WorkbenchError(
                f"top({n}): this graph has only {self.n_edges} edges; ask for at most {self.n_edges}."
            )
        return Circuit([self._edge_at(i) for i in self._order[: int(n)]], graph=self)

    def threshold(self, t: float) -> Circuit:
        """Every edge with |score| >= t."""
        if isinstance(t, bool) or not isinstance(t, int | float) or not np.isfinite(t) or t < 0:
            raise WorkbenchError(f"threshold(t) takes a finite |score| >= 0, got {t!r}.")
        flat = np.abs(self.matrix.reshape(-1))
        keep = [i for i in self._order if flat[i] >= t]
        return Circuit([self._edge_at(i) for i in keep], graph=self)

    def _rebind(self, model: Any) -> None:
        """Name `model` as this graph's model (a workshop-cache hit: the key held the same weights)."""
        from .circuits import model_key

        self.model_key = model_key(model)

    @property
    def clean_mean(self) -> float:
        return float(np.mean(self.clean))

    @property
    def corrupt_mean(self) -> float:
        return float(np.mean(self.corrupt))

    def __repr__(self) -> str:
        where = f" x {len(self.columns)} columns" if self.columns is not None else ""
        top = self._edge_at(self._order[0]) if self.n_edges else None
        best = f"; top {top} ({self.score(top):+.3g})" if top is not None else ""
        return (
            f"<wb.Graph {self.options.get('method', '?')}: {self.n_edges} edges{where} over "
            f"{len(self.clean)} examples{best}>"
        )


class Faithfulness(Figured, Coded, float):
    """A circuit's faithfulness: float(f) is normalised (1 = the full model's clean metric, 0 = the corrupt
    baseline); `.raw` the mean metric with every edge outside the circuit patched from the corrupt run."""

    _figure_name = "faithfulness"

    raw: float
    clean: float
    corrupt: float
    per_example: np.ndarray
    clean_per_example: np.ndarray | None = None  # each example's clean metric
    corrupt_per_example: np.ndarray | None = None  # ... and corrupt metric
    n_edges: int
    options: dict[str, Any]
    _code: Callable[[], str]

    def __new__(cls, value: float, **attrs: Any) -> Faithfulness:
        obj = super().__new__(cls, value)
        for k, v in attrs.items():
            setattr(obj, k, v)
        return obj

    def __reduce__(self) -> Any:
        return (_rebuild_faithfulness, (float(self), self.__getstate__()))

    def __repr__(self) -> str:
        return (
            f"<wb.Faithfulness {float(self):.3f} ({self.n_edges} edges): metric {self.raw:.4g} "
            f"(clean {self.clean:.4g}, corrupt {self.corrupt:.4g})>"
        )


def _rebuild_faithfulness(value: float, state: dict[str, Any]) -> Faithfulness:
    return Faithfulness(value, **state)


@dataclass(repr=False)
class FaithfulnessCurve(Figured, Coded):
    """Faithfulness over circuit sizes (the top-n edges of a graph, MIB style) and the area under it.

    `values` normalised, `raw` the mean metric, per size; `area` = the trapezoid integral of the normalised
    faithfulness over the fraction of the graph's edges kept, from the empty circuit (0, 0) to the largest size,
    divided by that fraction (so a circuit that is fully faithful at every size scores 1)."""

    _figure_name = "faithfulness_curve"

    sizes: np.ndarray
    values: np.ndarray
    raw: np.ndarray
    clean: float
    corrupt: float
    n_edges: int
    options: dict[str, Any]
    _code: Callable[[], str] = field(default=lambda: "")

    @property
    def fractions(self) -> np.ndarray:
        return (self.sizes / max(1, self.n_edges)).astype(np.float64)

    @property
    def area(self) -> float:
        x = np.concatenate([[0.0], self.fractions])
        y = np.concatenate([[0.0], np.asarray(self.values, np.float64)])
        if x[-1] <= 0:
            return float("nan")
        return float(np.trapezoid(y, x) / x[-1])

    def __repr__(self) -> str:
        pairs = ", ".join(f"{int(n)}: {v:.2f}" for n, v in zip(self.sizes[:6], self.values[:6], strict=False))
        more = ", ..." if len(self.sizes) > 6 else ""
        return f"<wb.FaithfulnessCurve area {self.area:.3f} over {self.n_edges} edges ({pairs}{more})>"
