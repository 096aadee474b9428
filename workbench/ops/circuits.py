"""Circuits: edge attribution patching (EAP, EAP-IG), circuits cut from the graph, and their faithfulness.

- `edge_attribution`: every sender -> receiver edge's first-order effect of patching it from clean into
  corrupt, (sender's clean - corrupt output) . d metric / d receiver input (Syed et al. 2023); EAP-IG averages
  that gradient over `steps` runs whose token embeddings step from the corrupt to the clean ones (Hanna et al.
  2024, "EAP-IG-inputs" in MIB). The mean over the dataset's examples.
- `faithfulness`: the clean run with every edge outside the circuit carrying its sender's corrupt output
  (the receiver's input rebuilt as the sum of its in-circuit senders' outputs in this run plus its out-of-circuit
  senders' corrupt outputs); normalised so 1 = the clean metric, 0 = the corrupt one.
- `edge_patch`: the exact counterpart of an edge's estimate: the corrupt run with those edges carrying their
  sender's clean output.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.dataset import Dataset
from ..data.predict import batch_size_for
from ..engine import circuit as engine
from ..engine.batching import Progress, check_cancel
from ..errors import WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_bool
from .circuit_results import Circuit, Edge, Faithfulness, FaithfulnessCurve, Graph, as_edge
from .dataset_results import normalise
from .metrics import Metric, as_metric
from .over_dataset import Runner, is_dataset
from .patching import MetricLike

METHODS = ("eap", "eap-ig")


def _dataset(clean: str | Dataset, corrupt: str | None, op: str) -> Dataset:
    """A Dataset, or one (clean, corrupt) prompt pair as a dataset of one."""
    if is_dataset(clean):
        if corrupt is not None:
            raise WorkbenchError(
                f"{op} got a wb.Dataset and a corrupt prompt: a Dataset carries each example's corrupt prompt; "
                f"call {op}(model, dataset, ...) without it."
            )
        return clean  # type: ignore[return-value]
    if not isinstance(clean, str) or not isinstance(corrupt, str):
        raise WorkbenchError(
            f"{op} takes a wb.Dataset (e.g. wb.datasets.ioi()) or a clean and a corrupt prompt: "
            f"{op}(model, 'clean prompt', 'corrupt prompt', metric=...)."
        )
    return Dataset(clean=[clean], corrupt=[corrupt])


def model_key(model: Model) -> tuple:
    return (model.source, id(model.hf), model.n_layers, model.n_heads, model.d_model)


def dataset_key(ds: Dataset) -> tuple:
    return tuple((e.clean, e.corrupt) for e in ds)


def _chunks(model: Model, runner: Runner) -> list[list[int]]:
    """Example indices per forward: as many as fit (one length per chunk keeps padding small)."""
    n = len(runner.ds)
    width = max(int(c.shape[1]) for c in runner.al.clean_ids)
    # a gradient run keeps every block's activations; leave room for it
    size = max(1, batch_size_for(model, width, limit=32) // 2)
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def _pairs(runner: Runner, idx: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor, Any]]:
    return [(runner.al.clean_ids[i], runner.al.corrupt_ids[i], runner.bound[i]) for i in idx]


def _report(progress: Progress, done: float, message: str) -> None:
    if progress is not None:
        progress(min(max(done, 0.0), 1.0), message)


def _check_method(method: Any, steps: Any) -> tuple[str, int]:
    if method not in METHODS:
        raise WorkbenchError(f"method= is 'eap' or 'eap-ig', got {method!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise WorkbenchError(f"steps= is a number of integration steps >= 1 (EAP-IG), got {steps!r}.")
    return method, (steps if method == "eap-ig" else 0)


def edge_attribution(
    model: Model,
    clean: str | Dataset,
    corrupt: str | None = None,
    *,
    metric: MetricLike,
    method: str = "eap",
    steps: int = 5,
    by_position: bool = False,
    align: str = "exact",
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> Graph:
    """Every edge's estimated effect of patching it from clean into corrupt, as a Graph (mean over examples).

    Nodes: embed, every head (layer, head), every MLP, logits; edges: every sender -> later receiver (a head's
    q, k and v inputs separately; under grouped-query attention k and v of key-value heads), an MLP's input, the
    logits. by_position=True keeps one score per dataset column (token positions, or roles with align="roles")."""
    m = as_metric(metric)
    method, n_steps = _check_method(method, steps)
    by_position = as_bool(by_position, "by_position")
    ds = _dataset(clean, corrupt, "wb.edge_attribution")
    if model.remote:
        from .circuits_remote import edge_attribution_remote

        return edge_attribution_remote(model, ds, m, method, n_steps, by_position, align, progress, cancel)
    lay = engine.layout(model)
    engine.check_local(model)
    with model.lock, job_status(model, progress, cancel):
        runner = Runner(model, ds, m, align, corrupt=True, progress=None, cancel=cancel)
        al = runner.al
        n_cols = len(al.columns)
        total = np.zeros((lay.n_senders, lay.n_receivers) + ((n_cols,) if by_position else ()), np.float64)
        clean_m, corrupt_m = np.zeros(len(ds), np.float32), np.zeros(len(ds), np.float32)
        chunks = _chunks(model, runner)
        done = 0
        for idx in chunks:
            check_cancel(cancel)
            _report(progress, done / len(ds), f"{done}/{len(ds)} examples ({method})")
            b = engine.batch(model, _pairs(runner, idx), m.needs_clean)

            def on_step(k: int, n: int, done: int = done, size: int = len(idx)) -> None:
                what = f"step {k + 1}/{n}, " if n > 1 else ""
                _report(
                    progress, (done + size * k / n) / len(ds), f"{what}{done}/{len(ds)} examples ({method})"
                )

            out = engine.attribute(
                model, b, lay, steps=n_steps, by_position=by_position, cancel=cancel, on_step=on_step
            )
            scores = out["scores"].double().numpy()
            for j, i in enumerate(idx):
                if by_position:
                    pad = b.pads[j]
                    for c, positions in enumerate(al.positions[i]):
                        total[..., c] += scores[j][..., [pad + p for p in positions]].sum(-1)
                else:
                    total += scores[j]
            clean_m[idx] = out["clean"].numpy()
            corrupt_m[idx] = out["corrupt"].numpy()
            done += len(idx)
        _report(progress, 1.0, f"{len(ds)}/{len(ds)} examples ({method})")
    return make_graph(
        model, ds, m, lay, al, total / len(ds), clean_m, corrupt_m, method, n_steps, by_position
    )


def make_graph(
    model: Model, ds: Dataset, m: Metric, lay: engine.Layout, al: Any, mean: np.ndarray, clean_m: np.ndarray,
    corrupt_m: np.ndarray, method: str, n_steps: int, by_position: bool,
) -> Graph:  # fmt: skip
    """The Graph of mean edge scores [S, R] (or [S, R, C]) over the dataset (local and remote engines)."""
    matrix = np.asarray(mean).astype(np.float32)
    valid = lay.valid()
    matrix[~valid] = np.nan
    options = dict(
        op="edge_attribution", method=method, steps=n_steps or None, metric=m.name, n_examples=len(ds),
        by_position=by_position, align=al.align,
    )  # fmt: skip
    graph = Graph(
        matrix=matrix,
        senders=lay.sender_names(),
        receivers=lay.receiver_names(),
        columns=list(al.columns) if by_position else None,
        clean=clean_m,
        corrupt=corrupt_m,
        options=options,
        n_layers=model.n_layers,
        n_heads=model.n_heads,
        n_kv_heads=model.n_kv_heads,
        model_key=model_key(model),
        dataset_key=dataset_key(ds),
        metric=m,
    )
    graph._code = lambda: _code("edge_attribution", model, m, options, graph=graph, dataset=ds)
    return graph


# --------------------------------------------------------------------------------------------- circuits
def _graph_of(model: Model) -> Graph:
    """An empty graph with the model's nodes (for checking hand-made circuits)."""
    lay = engine.layout(model)
    matrix = np.where(lay.valid(), 0.0, np.nan).astype(np.float32)
    return Graph(matrix, lay.sender_names(), lay.receiver_names(), None, np.zeros(0), np.zeros(0), {},
                 model.n_layers, model.n_heads, model.n_kv_heads, model_key(model))  # fmt: skip


def as_circuit(c: Any) -> Circuit:
    if isinstance(c, Circuit):
        return c
    if isinstance(c, Graph):
        raise WorkbenchError(
            "faithfulness takes a Circuit, not a Graph: cut one with graph.top(n) or graph.threshold(t)."
        )
    return Circuit(c)


def circuit_edges(model: Model, circuit: Circuit, runner: Runner) -> list[tuple[int, int, int | None]]:
    """(sender row, receiver column, dataset column or None for every position) of each edge of a circuit,
    checked against this model's graph and the dataset's columns."""
    graph = circuit.graph
    if graph is not None and graph.model_key and graph.model_key != model_key(model):
        raise WorkbenchError(
            "This circuit was cut from a graph of another model; find the graph on this model "
            "(wb.edge_attribution(model, ...)) or rebuild the circuit from its edges on this model."
        )
    checker = _graph_of(model)
    cols = runner.al.columns
    out: list[tuple[int, int, int | None]] = []
    for e in circuit.edges:
        s, r = checker.locate(Edge(e.sender, e.receiver))
        if e.position is None:
            out.append((s, r, None))
            continue
        if e.position not in cols and not isinstance(e.position, int):
            raise WorkbenchError(
                f"Edge {e} names column {e.position!r}, which this dataset does not have (align="
                f"{runner.al.align!r}: {cols}); use the dataset and align= the graph was found with."
            )
        out.append((s, r, runner.al.column(e.position)))
    return out


def keep_mask(model: Model, circuit: Circuit, runner: Runner, idx: Sequence[int], pads: list[int], width: int) -> torch.Tensor:  # fmt: skip
    """[B, S, R, T] bool: which edges of each example (at which padded positions) the circuit keeps."""
    lay = engine.layout(model)
    keep = torch.zeros((len(idx), lay.n_senders, lay.n_receivers, width), dtype=torch.bool)
    for s, r, c in circuit_edges(model, circuit, runner):
        if c is None:
            for j, pad in enumerate(pads):
                keep[j, s, r, pad:] = True
            continue
        for j, (i, pad) in enumerate(zip(idx, pads, strict=True)):
            for p in runner.al.positions[i][c]:
                keep[j, s, r, pad + p] = True
    return keep


def known_baselines(ds: Dataset, circuits: Sequence[Circuit], m: Metric, align: str) -> tuple | None:
    """Each example's clean and corrupt metrics from the circuits' graph when it was found on this dataset with
    this metric and alignment (then no clean run is needed), else None."""
    graphs = {id(c.graph): c.graph for c in circuits}
    if len(graphs) != 1 or None in graphs.values():
        return None
    g = next(iter(graphs.values()))
    same = (
        g.dataset_key == dataset_key(ds)
        and g.options.get("metric") == m.name
        and g.options.get("align") == align
    )
    return (
        (np.asarray(g.clean, np.float32), np.asarray(g.corrupt, np.float32))
        if same and not m.needs_clean
        else None
    )


def _faithfulness_runs(
    model: Model, ds: Dataset, circuits: Sequence[Circuit], m: Metric, align: str, progress: Progress,
    cancel: threading.Event | None, label: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Per circuit and example the metric with the edges outside the circuit corrupted ([C, N]), and each
    example's clean and corrupt metrics. Per chunk of examples: the corrupt run (the reference), one mixed run
    per circuit, and a clean run only when the baselines are not known from the circuits' graph."""
    lay = engine.layout(model)
    engine.check_local(model)
    runner = Runner(model, ds, m, align, corrupt=True, progress=None, cancel=cancel)
    n = len(ds)
    raw = np.zeros((len(circuits), n), np.float32)
    known = known_baselines(ds, circuits, m, align)
    clean_m, corrupt_m = known if known is not None else (np.zeros(n, np.float32), np.zeros(n, np.float32))
    chunks = _chunks(model, runner)
    work = len(chunks) * (len(circuits) + 1)
    step = 0
    for idx in chunks:
        b = engine.batch(model, _pairs(runner, idx), m.needs_clean)
        width = b.clean["input_ids"].shape[1]
        blocks = engine._blocks(model)
        with torch.no_grad(), engine.frozen(model):
            corrupt_run = engine.forward(model, blocks, b.corrupt)
            ref = corrupt_run.logits if known is not None else engine.forward(model, blocks, b.clean).logits
        if known is None:
            for j, i in enumerate(idx):
                clean_m[i] = float(b.metrics[j](ref[j : j + 1].clone(), ref[j].clone())[0])
                corrupt_m[i] = float(b.metrics[j](corrupt_run.logits[j : j + 1].clone(), ref[j].clone())[0])
        step += 1
        for ci, c in enumerate(circuits):
            check_cancel(cancel)
            _report(
                progress,
                step / work,
                f"{label}: circuit {ci + 1}/{len(circuits)}, {idx[-1] + 1}/{n} examples",
            )
            keep = keep_mask(model, c, runner, idx, b.pads, width)
            values = engine.mixed(model, b.clean, corrupt_run, keep, b.metrics, lay, ref, cancel, blocks)
            raw[ci, idx] = values.numpy()
            step += 1
    return raw, clean_m, corrupt_m


def faithfulness(
    model: Model,
    clean: str | Dataset,
    circuit: Any,
    corrupt: str | None = None,
    *,
    metric: MetricLike,
    align: str = "exact",
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> Faithfulness:
    """The metric with every edge outside `circuit` patched from the corrupt run (mean over examples);
    float(f) normalised: 1 = the clean metric, 0 = the corrupt baseline; `f.raw` the metric itself."""
    m = as_metric(metric)
    c = as_circuit(circuit)
    ds = _dataset(clean, corrupt, "wb.faithfulness")
    if model.remote:
        from .circuits_remote import faithfulness_remote

        return faithfulness_remote(model, ds, c, m, align, progress, cancel)
    with model.lock, job_status(model, progress, cancel):
        raw, clean_m, corrupt_m = _faithfulness_runs(
            model, ds, [c], m, align, progress, cancel, "faithfulness"
        )
    return _faithfulness_value(model, m, c, raw[0], clean_m, corrupt_m, align, ds)


def _faithfulness_value(
    model: Model, m: Metric, c: Circuit, raw: np.ndarray, clean_m: np.ndarray, corrupt_m: np.ndarray, align: str,
    ds: Dataset | None = None,
) -> Faithfulness:  # fmt: skip
    value = float(normalise(np.float32(raw.mean()), clean_m, corrupt_m))
    options = dict(op="faithfulness", metric=m.name, n_edges=len(c), n_examples=len(raw), align=align)
    return Faithfulness(
        value,
        raw=float(raw.mean()),
        clean=float(clean_m.mean()),
        corrupt=float(corrupt_m.mean()),
        per_example=raw.astype(np.float32),
        clean_per_example=np.asarray(clean_m, np.float32),
        corrupt_per_example=np.asarray(corrupt_m, np.float32),
        n_edges=len(c),
        options=options,
        _code=lambda: _code("faithfulness", model, m, options, circuit=c, dataset=ds),
    )


def faithfulness_curve(
    model: Model,
    clean: str | Dataset,
    graph: Graph,
    corrupt: str | None = None,
    *,
    metric: MetricLike | None = None,
    sizes: Sequence[int] = (10, 20, 50, 100, 200, 500, 1000),
    align: str | None = None,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> FaithfulnessCurve:
    """The faithfulness of the graph's top-n edges for each n in `sizes` (MIB style), and the area under it.

    The metric and alignment default to the graph's own (a graph of another dataset or model is refused)."""
    ds = _dataset(clean, corrupt, "wb.faithfulness_curve")
    if not isinstance(graph, Graph):
        raise WorkbenchError(
            "faithfulness_curve(model, dataset, graph): graph is wb.edge_attribution's result."
        )
    check_graph(model, ds, graph)
    m = as_metric(
        metric if metric is not None else graph.metric if graph.metric is not None else _graph_metric(graph)
    )
    align = align or graph.options.get("align", "exact")
    try:
        ns = sorted({int(s) for s in sizes})
    except (TypeError, ValueError):
        raise WorkbenchError(f"sizes= is a list of edge counts, got {sizes!r}.") from None
    if not ns or ns[0] < 0:
        raise WorkbenchError(f"sizes= needs edge counts >= 0, got {list(sizes)!r}.")
    if ns[-1] > graph.n_edges:
        raise WorkbenchError(
            f"sizes= asks for circuits of up to {ns[-1]} edges, but the graph has {graph.n_edges}; keep sizes "
            f"<= {graph.n_edges}."
        )
    circuits = [graph.top(n) for n in ns]
    if model.remote:
        from .circuits_remote import faithfulness_runs_remote

        raw, clean_m, corrupt_m = faithfulness_runs_remote(model, ds, circuits, m, align, progress, cancel)
    else:
        with model.lock, job_status(model, progress, cancel):
            raw, clean_m, corrupt_m = _faithfulness_runs(
                model, ds, circuits, m, align, progress, cancel, "curve"
            )
    means = raw.mean(axis=1)
    options = dict(op="faithfulness_curve", metric=m.name, sizes=ns, n_examples=len(ds), align=align)
    return FaithfulnessCurve(
        sizes=np.asarray(ns, np.int64),
        values=normalise(means, clean_m, corrupt_m).astype(np.float32),
        raw=means.astype(np.float32),
        clean=float(clean_m.mean()),
        corrupt=float(corrupt_m.mean()),
        n_edges=graph.n_edges,
        options=options,
        _code=lambda: _code("faithfulness_curve", model, m, options, graph=graph, dataset=ds),
    )


def _graph_metric(graph: Graph) -> Any:
    name = graph.options.get("metric")
    raise WorkbenchError(
        f"faithfulness_curve needs metric= (the graph was found with {name!r}; pass the same metric object)."
    )


def check_graph(model: Model, ds: Dataset, graph: Graph) -> None:
    """A graph is used with the model and dataset it was found on."""
    if graph.model_key != model_key(model):
        raise WorkbenchError(
            "This graph was found on another model; run wb.edge_attribution(model, dataset, ...) on this one."
        )
    if graph.dataset_key != dataset_key(ds):
        raise WorkbenchError(
            "This graph was found on another dataset; pass the dataset it was found on (to test a circuit on "
            "new data, cut it with graph.top(n) and call wb.faithfulness(model, new_dataset, circuit, ...))."
        )


def edge_patch(
    model: Model,
    clean: str | Dataset,
    edges: Any,
    corrupt: str | None = None,
    *,
    metric: MetricLike,
    align: str = "exact",
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> Faithfulness:
    """Exact patching of edges clean into corrupt: the corrupt run with those edges carrying their sender's
    clean output (every other edge its own). `.raw` the metric; float() its normalised effect."""
    m = as_metric(metric)
    c = as_circuit(edges if not isinstance(edges, str | Edge) else [edges])
    ds = _dataset(clean, corrupt, "wb.edge_patch")
    if model.remote:
        from .circuits_remote import edge_patch_remote

        return edge_patch_remote(model, ds, c, m, align, progress, cancel)
    lay = engine.layout(model)
    with model.lock, job_status(model, progress, cancel):
        engine.check_local(model)
        runner = Runner(model, ds, m, align, corrupt=True, progress=None, cancel=cancel)
        n = len(ds)
        raw, clean_m, corrupt_m = np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
        valid = torch.from_numpy(lay.valid())
        for idx in _chunks(model, runner):
            check_cancel(cancel)
            b = engine.batch(model, _pairs(runner, idx), m.needs_clean)
            width = b.clean["input_ids"].shape[1]
            blocks = engine._blocks(model)
            with torch.no_grad():
                clean_run = engine.forward(model, blocks, b.clean)
                corrupt_run = engine.forward(model, blocks, b.corrupt)
            ref = clean_run.logits
            patched = keep_mask(model, c, runner, idx, b.pads, width)
            keep = ~patched & valid[None, :, :, None]
            values = engine.mixed(model, b.corrupt, clean_run, keep, b.metrics, lay, ref, cancel, blocks)
            raw[idx] = values.numpy()
            for j, i in enumerate(idx):
                clean_m[i] = float(b.metrics[j](ref[j : j + 1].clone(), ref[j].clone())[0])
                corrupt_m[i] = float(b.metrics[j](corrupt_run.logits[j : j + 1].clone(), ref[j].clone())[0])
    return edge_patch_value(model, m, c, raw, clean_m, corrupt_m, align, ds)


def edge_patch_value(
    model: Model, m: Metric, c: Circuit, raw: np.ndarray, clean_m: np.ndarray, corrupt_m: np.ndarray, align: str,
    ds: Dataset,
) -> Faithfulness:  # fmt: skip
    """The result of exact edge patching from each example's patched, clean and corrupt metrics."""
    n = len(raw)
    value = float(normalise(np.float32(raw.mean()), clean_m, corrupt_m))
    options = dict(op="edge_patch", metric=m.name, n_edges=len(c), n_examples=n, align=align)
    return Faithfulness(
        value, raw=float(raw.mean()), clean=float(clean_m.mean()), corrupt=float(corrupt_m.mean()),
        per_example=raw, clean_per_example=clean_m, corrupt_per_example=corrupt_m, n_edges=len(c), options=options,
        _code=lambda: _code("edge_patch", model, m, options, circuit=c, dataset=ds),
    )  # fmt: skip


def _code(op: str, model: Model, m: Metric, options: dict[str, Any], **parts: Any) -> str:
    from .. import codegen_circuits

    return codegen_circuits.code(op, model, m, options, **parts)


__all__ = [
    "Circuit",
    "Edge",
    "Faithfulness",
    "FaithfulnessCurve",
    "Graph",
    "as_edge",
    "edge_attribution",
    "edge_patch",
    "faithfulness",
    "faithfulness_curve",
]
