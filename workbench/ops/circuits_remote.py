"""Circuits on a remote model (NDIF): every op is ONE traced request (engine/circuit_traced.py).

A remote model has no weights here, so the whole computation runs inside the trace next to the weights: the
forward and backward, each receiver's gradient in the stream (projection rows and the norm's vjp), the edge
scores summed over the examples, and the mixed runs with rebuilt receiver inputs. What comes back is small:
the [S, R] (or [S, R, C]) score sum, per-example metrics and the additivity check.

- `edge_attribution_remote`: one request with every example's clean, corrupt and (EAP-IG) interpolated rows.
- `faithfulness_runs_remote`: one request with every example's clean and corrupt rows and one mixed row per
  circuit: the whole faithfulness curve (every size) is one request, as one user action should be. The server
  holds each mixed row's sender outputs ([senders, T, d] per row: 14 MB for the embedded model at 20 tokens)
  during the forward; only when the rows would need more than MIXED_BYTES (4 GiB: 300 rows of the embedded
  model, 12 rows of a 32-layer, d = 4096 model at 20 tokens) is the work split into as few requests as fit
  (circuits first, then examples).
- `faithfulness_remote` / `edge_patch_remote`: the same with one circuit (edge patch: the corrupt input, the
  clean reference, every edge but the circuit's kept).

The same functions run a local model through nnsight (tests compare them with the hook engine).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..data.dataset import Dataset
from ..engine import circuit as engine
from ..engine import circuit_traced as traced
from ..engine.batching import Progress, check_cancel
from ..engine.padding import pad_id
from ..model import Model
from ..remote import job_status
from .circuit_results import Circuit, Faithfulness, Graph
from .circuits import _faithfulness_value, _report, circuit_edges, edge_patch_value, make_graph
from .metrics import Metric
from .over_dataset import Runner


def _pairs(runner: Runner) -> list[tuple[Any, Any]]:
    return [(runner.al.clean_ids[i], runner.al.corrupt_ids[i]) for i in range(len(runner.ds))]


def edge_attribution_remote(
    model: Model,
    ds: Dataset,
    m: Metric,
    method: str,
    n_steps: int,
    by_position: bool,
    align: str,
    progress: Progress,
    cancel: threading.Event | None,
) -> Graph:
    """`wb.edge_attribution` in one traced forward and backward over every example (one NDIF request)."""
    lay = engine.layout(model)
    with model.lock, job_status(model, progress, cancel):
        runner = Runner(model, ds, m, align, corrupt=True, progress=None, cancel=cancel)
        al = runner.al
        positions = al.positions if by_position else None
        plan = traced.attribution_plan(
            _pairs(runner), pad_id(model.tokenizer), n_steps, positions, lay, model.d_model
        )
        check_cancel(cancel)
        _report(progress, 0.0, f"{len(ds)} examples ({method}) in one request")
        out = traced.attribute(model, lay, plan, runner.bound)
        _report(progress, 1.0, f"{len(ds)}/{len(ds)} examples ({method})")
    engine.raise_unless_additive(model, [(float(e), float(s)) for e, s in out["additive"].tolist()])
    scores = out["scores"].double().numpy()
    mean = (scores if by_position else scores[..., 0]) / len(ds)
    clean_m = out["clean"].numpy().astype(np.float32)
    corrupt_m = out["corrupt"].numpy().astype(np.float32)
    return make_graph(model, ds, m, lay, al, mean, clean_m, corrupt_m, method, n_steps, by_position)


MIXED_BYTES = (
    4 << 30
)  # the server memory one request's mixed rows may hold in sender outputs ([S, T, d] per row)


def _requests(n_examples: int, n_circuits: int, row_bytes: int) -> list[tuple[list[int], list[int]]]:
    """(examples, circuits) of each request: all in one unless the mixed rows' sender outputs would exceed
    MIXED_BYTES on the server; then as few requests as fit (circuits split first, then examples)."""
    fit = max(1, MIXED_BYTES // max(1, row_bytes))
    examples, circuits = list(range(n_examples)), list(range(n_circuits))
    if n_examples * n_circuits <= fit:
        return [(examples, circuits)]
    if n_examples <= fit:
        per = fit // n_examples
        return [(examples, circuits[i : i + per]) for i in range(0, n_circuits, per)]
    return [(examples[i : i + fit], [c]) for c in circuits for i in range(0, n_examples, fit)]


def _mixed(
    model: Model, ds: Dataset, circuits: list[Circuit], m: Metric, align: str, progress: Progress,
    cancel: threading.Event | None, base: str, invert: bool, label: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Each circuit's mixed run per example ([C, N]) and each example's clean and corrupt metrics."""
    lay = engine.layout(model)
    n = len(ds)
    raw = np.zeros((len(circuits), n), np.float32)
    clean_m, corrupt_m = np.zeros(n, np.float32), np.zeros(n, np.float32)
    with model.lock, job_status(model, progress, cancel):
        runner = Runner(model, ds, m, align, corrupt=True, progress=None, cancel=cancel)
        al = runner.al
        lists = [[(s, r, 0 if c is None else 1 + c) for s, r, c in circuit_edges(model, circ, runner)]
                 for circ in circuits]  # fmt: skip
        pairs = _pairs(runner)
        width = max(int(c.shape[1]) for c, _ in pairs)
        parts = _requests(n, len(circuits), lay.n_senders * width * model.d_model * 4)
        for k, (exs, cs) in enumerate(parts):
            check_cancel(cancel)
            _report(progress, k / len(parts), f"{label}: {len(cs)} circuit(s) x {len(exs)} examples, request "
                                               f"{k + 1}/{len(parts)}")  # fmt: skip
            plan = traced.mixed_plan([pairs[i] for i in exs], pad_id(model.tokenizer), [lists[c] for c in cs],
                                     [al.positions[i] for i in exs], base, invert, lay)  # fmt: skip
            out = traced.mixed(model, lay, plan, [runner.bound[i] for i in exs])
            raw[np.ix_(cs, exs)] = out["raw"].numpy()
            clean_m[exs] = out["clean"].numpy()
            corrupt_m[exs] = out["corrupt"].numpy()
        _report(progress, 1.0, f"{label}: {n}/{n} examples")
    return raw, clean_m, corrupt_m


def faithfulness_runs_remote(
    model: Model,
    ds: Dataset,
    circuits: list[Circuit],
    m: Metric,
    align: str,
    progress: Progress,
    cancel: threading.Event | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The faithfulness runs of several circuits (a curve's sizes) in ONE request: raw [C, N], clean [N],
    corrupt [N]."""
    return _mixed(model, ds, list(circuits), m, align, progress, cancel, "clean", False, "faithfulness")


def faithfulness_remote(
    model: Model,
    ds: Dataset,
    circuit: Circuit,
    m: Metric,
    align: str,
    progress: Progress,
    cancel: threading.Event | None,
) -> Faithfulness:
    """`wb.faithfulness` in one request."""
    raw, clean_m, corrupt_m = faithfulness_runs_remote(model, ds, [circuit], m, align, progress, cancel)
    return _faithfulness_value(model, m, circuit, raw[0], clean_m, corrupt_m, align, ds)


def edge_patch_remote(
    model: Model,
    ds: Dataset,
    circuit: Circuit,
    m: Metric,
    align: str,
    progress: Progress,
    cancel: threading.Event | None,
) -> Faithfulness:
    """`wb.edge_patch` in one request: the corrupt run with the circuit's edges carrying their clean output."""
    raw, clean_m, corrupt_m = _mixed(
        model, ds, [circuit], m, align, progress, cancel, "corrupt", True, "edge patch"
    )
    return edge_patch_value(model, m, circuit, raw[0], clean_m, corrupt_m, align, ds)
