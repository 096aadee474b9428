"""Running an op over a Dataset: per example, the same engine call as one pair (so `.per_example[i]` is
exactly example i's single-pair result), with its own metric tokens and its columns' positions; then the
mean, the standard error and the baselines of every example.

A column stands for one position (align "exact"/"right") or a role's span ("roles"): a cell over a column
edits all of the span's positions at once, in one run.

On NDIF a dataset op is one request: `Runner.run` sends every example's rows in one left-padded traced forward
(`traced.run_examples`), each example's edits in its own coordinates and its own metric on its rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..data.align import Alignment, alignment
from ..data.dataset import Dataset
from ..engine.batching import BatchOutput, Progress, check_cancel
from ..engine.edits import Cell, Edit, as_cells
from ..engine.sites import site as site_record
from ..engine.traced import run_examples, run_rows, run_stacked
from ..errors import WorkbenchError
from ..model import Model
from ..validate import as_bool
from .dataset_results import DatasetSweepResult, DatasetValue
from .metrics import Metric

MANY = "columns"

# One example's runs for the engine: its source and base ids ([1, T], equal lengths) and its rows (each a list
# of checked edits applied jointly to the base run).
Job = tuple[torch.Tensor, torch.Tensor, list[list[Edit]]]


def one_request(model: Model) -> bool:
    """Whether a dataset op sends all its examples in one padded batch (remote models: one NDIF request)
    rather than one engine call per example (local: the replay engine per example, exact per-pair numbers)."""
    return bool(model.remote)


def is_dataset(x: Any) -> bool:
    return isinstance(x, Dataset)


def no_second_prompt(op: str, other: Any, name: str = "corrupt") -> None:
    """A Dataset carries its own corrupt prompts: a second prompt next to it is a mistake."""
    if other is not None:
        raise WorkbenchError(
            f"{op} got a wb.Dataset and a {name} prompt: a Dataset carries each example's {name} prompt; "
            f"call {op}(model, dataset, ...) without it."
        )


def example_progress(progress: Progress, i: int, n: int) -> Progress:
    """Example i's share of a dataset op's progress: 'example 3/32: 120/450 runs'."""
    if progress is None:
        return None

    def report(fraction: float, message: str) -> None:
        progress((i + min(max(fraction, 0.0), 1.0)) / n, f"{i + (fraction >= 1)}/{n} examples ({message})")

    return report


def column_rows(
    model: Model, site: str, columns: Sequence[Sequence[int]], by_position: bool, n_tokens: int
) -> tuple[list[list[Cell]], tuple[int, ...]]:
    """The runs of a sweep over columns (each run's cells, edited jointly) and the grid shape: one run per
    (layer, column), (layer, head) or (layer, column, head)."""
    rec = site_record(model.check_site(site))
    layers = range(1) if rec.embed_only else range(model.n_layers)
    heads = range(model.n_kv_heads if rec.heads == "kv" else model.n_heads)

    def cells(layer: int, column: Sequence[int], head: int | None) -> list[Cell]:
        return [Cell(site, layer, p, head).checked(model, n_tokens) for p in column]

    if not rec.per_head:
        return [cells(lyr, col, None) for lyr in layers for col in columns], (len(layers), len(columns))
    if by_position:
        rows = [cells(lyr, col, h) for lyr in layers for col in columns for h in heads]
        return rows, (len(layers), len(columns), len(heads))
    rows = [[Cell(site, lyr, None, h).checked(model, n_tokens)] for lyr in layers for h in heads]
    return rows, (len(layers), len(heads))


def example_cells(al: Alignment, i: int, cells: Sequence[Cell], model: Model) -> list[Cell]:
    """Dataset cells for example i: a cell's position names a column (an index or a role), which stands
    for the column's token positions in this example (all edited)."""
    n_tokens = al.clean_ids[i].shape[1]
    out: list[Cell] = []
    for c in cells:
        if c.position is None:
            out.append(Cell(c.site, c.layer, None, c.head).checked(model, n_tokens))
            continue
        for p in al.positions[i][al.column(c.position)]:
            out.append(Cell(c.site, c.layer, p, c.head).checked(model, n_tokens))
    return out


def dataset_cells(cells: Any, site: str, layer: Any, position: Any, head: Any, op: str) -> list[Cell]:
    """`cells=` or the single-cell keywords of an op over a Dataset, unchecked (positions are columns)."""
    if cells is not None:
        if any(v is not None for v in (layer, position, head)):
            raise WorkbenchError(f"{op}: give either cells= or layer=/position=/head=, not both.")
        return as_cells(cells)
    if layer is None:
        raise WorkbenchError(
            f"{op} needs layer= (with site=, position=, head=) or cells=[wb.Cell(...), ...]."
        )
    return [Cell(site, layer, position, head)]


def dataset_cells_options(cells: list[Cell]) -> dict[str, Any]:
    """How a dataset op's options record its cells (positions are columns: an index or a role name)."""
    if len(cells) == 1:
        c = cells[0]
        return dict(site=c.site, layer=c.layer, position=c.position, head=c.head)
    return dict(cells=[(c.site, c.layer, c.position, c.head) for c in cells])


class Runner:
    """One dataset op's loop: the alignment, each example's metric, progress and cancellation."""

    def __init__(
        self,
        model: Model,
        ds: Dataset,
        metric: Metric,
        align: str,
        *,
        corrupt: bool,
        progress: Progress,
        cancel: threading.Event | None,
    ) -> None:
        self.model, self.ds, self.metric = model, ds, metric
        self.al = alignment(model, ds, align, corrupt=corrupt)
        self.progress, self.cancel = progress, cancel
        # Resolve every example's metric first: a bad target (several tokens) fails before any run.
        self.metrics = [metric.for_example(i, e) for i, e in enumerate(ds)]
        self.bound = [self._bind(i, m) for i, m in enumerate(self.metrics)]

    def _bind(self, i: int, m: Metric) -> Any:
        try:
            return m.bind(self.model)
        except WorkbenchError as exc:
            raise type(exc)(f"Example {i} ({self.ds[i].clean!r:.60}): {exc}") from None

    def each(self, run: Callable[[int, Progress], Any]) -> list[Any]:
        """`run(i, progress)` for every example, in order."""
        n = len(self.ds)
        outs = []
        for i in range(n):
            check_cancel(self.cancel)
            outs.append(run(i, example_progress(self.progress, i, n)))
        if self.progress is not None:
            self.progress(1.0, f"{n}/{n} examples")
        return outs

    def run(self, job: Callable[[int], Job], *, top_k: int = 0) -> list[BatchOutput]:
        """Every example's engine output for `job(i)` (its source ids, base ids and rows), with its metric.

        Locally: `traced.run_stacked` (examples of one length replay together, exactly as each would alone;
        the rest one `run_rows` each). Remote: every job is built (and checked)
        first, then all examples go in ONE request (`traced.run_examples`: a left-padded traced forward)."""
        return [outs[0] for outs in self.run_many(lambda i: [job(i)], top_k=top_k)]

    def run_many(self, jobs: Callable[[int], Sequence[Job]], *, top_k: int = 0) -> list[list[BatchOutput]]:
        """`run` for several engine calls per example (e.g. one per resampling reference)."""
        if not one_request(self.model):
            built = [list(jobs(i)) for i in range(len(self.ds))]
            if all(len(js) == 1 for js in built):  # examples of one length replay together
                outs = run_stacked(self.model, [js[0][:2] for js in built], [js[0][2] for js in built],
                                   self.bound, top_k=top_k, progress=self.progress, cancel=self.cancel)  # fmt: skip
                return [[o] for o in outs]
            return self.each(lambda i, prog: self._local(built[i], i, top_k, prog))
        n = len(self.ds)
        built = []
        for i in range(n):
            check_cancel(self.cancel)
            built.append(list(jobs(i)))
        flat = [(s, b, rows, self.bound[i]) for i, js in enumerate(built) for s, b, rows in js]
        outs = run_examples(self.model, flat, top_k=top_k, progress=self._runs_progress(), cancel=self.cancel)
        if self.progress is not None:
            self.progress(1.0, f"{n}/{n} examples")
        grouped, at = [], 0
        for js in built:
            grouped.append(outs[at : at + len(js)])
            at += len(js)
        return grouped

    def _local(self, jobs: Sequence[Job], i: int, top_k: int, progress: Progress) -> list[BatchOutput]:
        outs = []
        for j, (s, b, rows) in enumerate(jobs):
            check_cancel(self.cancel)
            sub = progress
            if progress is not None and len(jobs) > 1:
                sub = lambda f, msg, j=j: progress((j + f) / len(jobs), msg)  # noqa: E731
            outs.append(run_rows(self.model, s, b, rows, self.bound[i], top_k=top_k, progress=sub,
                                 cancel=self.cancel))  # fmt: skip
        return outs

    def _runs_progress(self) -> Progress:
        if self.progress is None:
            return None
        n, report = len(self.ds), self.progress
        return lambda fraction, message: report(fraction, f"{n} examples ({message})")

    def ids(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.al.clean_ids[i], self.al.corrupt_ids[i]

    def sweep_result(
        self,
        outs: list[BatchOutput],
        shape: Sequence[tuple[int, ...]],
        *,
        axes: tuple[str, ...],
        options: dict[str, Any],
        code: Callable[[], str],
        ablation: bool = False,
    ) -> DatasetSweepResult:
        shapes = {tuple(s) for s in shape}
        if len(shapes) != 1:
            raise WorkbenchError(f"The examples gave grids of different shapes {sorted(shapes)}; align them.")
        per = np.stack([o.values.float().numpy().reshape(shape[0]) for o in outs]).astype(np.float32)
        clean = np.array([o.base if ablation else o.source for o in outs], np.float32)
        corrupt = (
            np.full(len(outs), np.nan, np.float32)
            if ablation
            else np.array([o.base for o in outs], np.float32)
        )
        return DatasetSweepResult(
            values=per.mean(0).astype(np.float32),
            clean=clean,  # type: ignore[arg-type]
            corrupt=corrupt,  # type: ignore[arg-type]
            axes=axes,
            tokens=list(self.al.columns) if "position" in axes else [],
            options={**options, "align": self.al.align, "n_examples": len(outs)},
            _code=code,
            per_example=per,
            examples=self.al.tokens,
            columns=list(self.al.columns),
            dataset=self.ds,
        )

    def value_result(
        self,
        values: Sequence[Any],
        *,
        options: dict[str, Any],
        code: Callable[[], str],
        ablation: bool = False,
    ) -> DatasetValue:
        """A DatasetValue from each example's single-pair Value (their top-k is example 0's)."""
        per = np.array([float(v) for v in values], np.float32)
        clean = np.array([float(v.clean) for v in values], np.float32)
        corrupt = np.array([float(v.corrupt) for v in values], np.float32)
        first = values[0]
        return DatasetValue(
            float(per.mean()),
            clean=clean,
            corrupt=corrupt,
            per_example=per,
            examples=self.al.tokens,
            columns=list(self.al.columns),
            dataset=self.ds,
            options={**options, "align": self.al.align, "n_examples": len(values)},
            _code=code,
            top_ids=getattr(first, "top_ids", np.zeros(0, np.int32)),
            top_probs=getattr(first, "top_probs", np.zeros(0, np.float32)),
            top_tokens=getattr(first, "top_tokens", []),
            per_example_values=list(values),
        )


def by_position_flag(by_position: Any) -> bool:
    return as_bool(by_position, "by_position")
