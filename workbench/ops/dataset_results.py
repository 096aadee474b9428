"""Results over a Dataset: the mean over examples in the single-pair shape, plus every example's own result.

`.values` is the mean over examples (the same grid as one pair), `.per_example` [N, ...grid], `.sem` the
standard error of that mean (NaN for one example), `.clean` / `.corrupt` each example's baselines [N],
`.normalized` = (values - mean(corrupt)) / (mean(clean) - mean(corrupt)) (the TransformerLens / IOI
convention: normalise the means, not each example), `.examples` each example's token strings and
`.columns` the column labels (positions, positions from the end, or role names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .results import Figured, SweepResult, Value, _code_of, _num, _picklable


def sem(per_example: np.ndarray) -> np.ndarray:
    """Standard error of the mean over axis 0 (ddof=1); NaN where there is one example."""
    n = per_example.shape[0]
    if n < 2:
        return np.full(per_example.shape[1:], np.nan, dtype=np.float32)
    return (per_example.std(axis=0, ddof=1) / np.sqrt(n)).astype(np.float32)


def normalise(values: Any, clean: np.ndarray, corrupt: np.ndarray) -> Any:
    """(values - mean(corrupt)) / (mean(clean) - mean(corrupt)), NaN when the means are equal or missing."""
    c, k = float(np.mean(clean)), float(np.mean(corrupt))
    denom = c - k
    if not np.isfinite(denom) or denom == 0:
        return np.full_like(np.asarray(values, dtype=np.float32), np.nan)
    return ((np.asarray(values, dtype=np.float64) - k) / denom).astype(np.float32)


@dataclass(repr=False)
class DatasetSweepResult(SweepResult):
    """A sweep over a Dataset: `.values` the mean grid, `.per_example` [N, ...], `.sem`, per-example baselines."""

    _figure_name = "dataset_sweep"

    per_example: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    examples: list[list[str]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    dataset: Any = None

    @property
    def sem(self) -> np.ndarray:
        return sem(self.per_example)

    @property
    def n_examples(self) -> int:
        return int(self.per_example.shape[0])

    @property
    def clean_mean(self) -> float:
        return float(np.mean(self.clean))

    @property
    def corrupt_mean(self) -> float:
        return float(np.mean(self.corrupt))

    @property
    def normalized(self) -> np.ndarray:
        return normalise(self.values, np.asarray(self.clean), np.asarray(self.corrupt))

    @property
    def per_example_normalized(self) -> np.ndarray:
        """Each example normalised by its own baselines, [N, ...grid] (NaN where they are equal)."""
        c = np.asarray(self.clean, np.float64).reshape((-1,) + (1,) * (self.per_example.ndim - 1))
        k = np.asarray(self.corrupt, np.float64).reshape(c.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (self.per_example - k) / (c - k)
        return np.where(np.isfinite(out), out, np.nan).astype(np.float32)

    def example(self, i: int) -> SweepResult:
        """Example i's own result, as the single-pair op returns it."""
        return SweepResult(
            values=self.per_example[i],
            clean=float(np.asarray(self.clean)[i]),
            corrupt=float(np.asarray(self.corrupt)[i]),
            axes=self.axes,
            tokens=list(self.columns),
            options={**self.options, "example": i},
            _code=self._code,
        )

    def _label(self, index: tuple[int, ...]) -> str:
        parts = []
        for axis, i in zip(self.axes, index, strict=False):
            if axis == "layer":
                parts.append(f"L{i}")
            elif axis == "head":
                parts.append(f"H{i}")
            else:
                parts.append(f"col {self.columns[i]}" if i < len(self.columns) else f"col {i}")
        return " ".join(parts)

    def __getstate__(self) -> dict[str, Any]:
        return _picklable(self.__dict__, self)

    def __repr__(self) -> str:
        o = self.options
        dims = " x ".join(f"{n} {a}" for n, a in zip(self.values.shape, self.axes, strict=False))
        head = (
            f"DatasetSweepResult {o.get('op', '')} site={o.get('site')!r} [{dims}] over {self.n_examples} examples "
            f"(align={o.get('align', 'exact')!r}), metric {o.get('metric', '?')}"
        )
        patching = np.all(np.isfinite(np.asarray(self.corrupt)))
        base = (
            f"  mean clean {_num(self.clean_mean)}, mean corrupt {_num(self.corrupt_mean)}; .values mean, .sem, "
            ".per_example, .normalized = (v - mean corrupt) / (mean clean - mean corrupt)"
            if patching
            else f"  mean unablated {_num(self.clean_mean)} (.clean [N]); .values mean, .sem, .per_example"
        )
        if self.values.size == 0:
            return head + "\n" + base
        norm, err = (self.normalized if patching else None), self.sem
        cells = []
        for index, v in self.top_cells(3):
            extra = f" ({norm[index]:.2f})" if norm is not None and np.isfinite(norm[index]) else ""
            pm = f" ± {err[index]:.2g}" if np.isfinite(err[index]) else ""
            cells.append(f"{self._label(index)}: {v:.4g}{pm}{extra}")
        return head + "\n" + base + "\n  largest mean effects: " + "; ".join(cells)


def _rebuild_dataset_value(value: float, state: dict[str, Any]) -> DatasetValue:
    return DatasetValue(value, **state)


class DatasetValue(Value):
    """A metric over a Dataset: the float is the mean over examples; `.per_example` [N], `.sem`,
    `.clean` / `.corrupt` [N], `.normalized` of the means."""

    _figure_name = "dataset_value"

    per_example: np.ndarray
    examples: list[list[str]]
    columns: list[str]
    dataset: Any
    _code: Callable[[], str]

    @property
    def sem(self) -> float:
        return float(sem(np.asarray(self.per_example, np.float32).reshape(-1, 1))[0])

    @property
    def n_examples(self) -> int:
        return len(self.per_example)

    @property
    def clean_mean(self) -> float:
        return float(np.mean(self.clean))

    @property
    def corrupt_mean(self) -> float:
        return float(np.mean(self.corrupt))

    @property
    def normalized(self) -> float:  # type: ignore[override]
        return float(normalise(float(self), np.asarray(self.clean), np.asarray(self.corrupt)))

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_dataset_value, (float(self), _picklable(self.__dict__, self))

    def __repr__(self) -> str:
        o = getattr(self, "options", {})
        text = (
            f"DatasetValue(mean {float(self):.6g} ± {self.sem:.2g} over {self.n_examples} examples, "
            f"mean clean={self.clean_mean:.6g}, mean corrupt={self.corrupt_mean:.6g}"
        )
        if np.isfinite(self.normalized):
            text += f", normalized={self.normalized:.3g}"
        return text + f" | {o.get('op', '')}, metric {o.get('metric', '?')})"


@dataclass(repr=False)
class DatasetLensResult(Figured):
    """The logit lens over a Dataset: a metric of each layer's decoded residual at every column, averaged.

    `.values` [L, C] the mean over examples of the metric read through the lens (default: each example's
    target probability) at layer l and column c (a column spanning several positions averages them),
    `.per_example` [N, L, C], `.sem` [L, C], `.examples` each example's tokens, `.columns` the column labels,
    `.lens(i)` example i's own single-pair LensResult (computed on request)."""

    _figure_name = "dataset_lens"

    values: np.ndarray  # float32 [L, C]
    per_example: np.ndarray  # float32 [N, L, C]
    examples: list[list[str]]
    columns: list[str]
    options: dict[str, Any]
    dataset: Any = None
    _code: Callable[[], str] | str = field(default="", repr=False)
    _lens: Callable[[int], Any] | None = field(default=None, repr=False)
    _lenses: dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def sem(self) -> np.ndarray:
        return sem(self.per_example)

    @property
    def n_examples(self) -> int:
        return int(self.per_example.shape[0])

    @property
    def layers(self) -> list[str]:
        return [str(i) for i in range(self.values.shape[0])]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def lens(self, i: int) -> Any:
        """Example i's single-pair lens (`wb.logit_lens(model, ds[i].clean, ...)`), computed on first request."""
        from ..errors import WorkbenchError
        from ..validate import as_int

        i = as_int(i, "example", lo=-self.n_examples, hi=self.n_examples - 1) % self.n_examples
        if i not in self._lenses:
            if self._lens is None:
                raise WorkbenchError(
                    "This DatasetLensResult was unpickled without its model, so it cannot compute an example's "
                    "lens: recompute with wb.logit_lens(model, dataset[i].clean)."
                )
            self._lenses[i] = self._lens(i)
        return self._lenses[i]

    def to_code(self) -> str:
        return _code_of(self)

    def __getstate__(self) -> dict[str, Any]:
        state = _picklable(self.__dict__, self)
        state["_lens"] = None
        return state

    def __repr__(self) -> str:
        o = self.options
        n_layers, n_cols = self.values.shape
        head = (
            f"DatasetLensResult logit_lens [{n_layers} layers x {n_cols} columns] over {self.n_examples} examples "
            f"(align={o.get('align', 'exact')!r}), metric {o.get('metric', '?')}"
        )
        lines = [head, "  .values mean, .sem, .per_example [N, L, C], .lens(i) one example's LensResult"]
        if self.values.size:
            err = self.sem
            last = self.values[:, -1]
            best = int(np.nanargmax(last)) if np.isfinite(last).any() else 0
            pm = f" ± {err[best, -1]:.2g}" if np.isfinite(err[best, -1]) else ""
            lines.append(
                f"  column {self.columns[-1]!r}: output {_num(last[-1])}; highest at layer {best} "
                f"({_num(last[best])}{pm})"
            )
        return "\n".join(lines)
