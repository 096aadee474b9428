"""Plain results: float32/int32 numpy arrays, axis labels, the options that made them, and `to_code()`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Value(float):
    """A metric value (a float) that also carries its baselines, the run's prediction and its code."""

    clean: float
    corrupt: float
    top_ids: np.ndarray
    top_probs: np.ndarray
    top_tokens: list[str]
    options: dict[str, Any]
    _code: Callable[[], str]

    def __new__(cls, value: float, **attrs: Any) -> Value:
        obj = super().__new__(cls, value)
        for k, v in attrs.items():
            setattr(obj, k, v)
        return obj

    @property
    def value(self) -> float:
        return float(self)

    @property
    def normalized(self) -> float:
        """(value - corrupt) / (clean - corrupt): 1 = fully restored, 0 = no effect."""
        denom = self.clean - self.corrupt
        return float("nan") if denom == 0 else (float(self) - self.corrupt) / denom

    def to_code(self) -> str:
        return self._code()

    def __repr__(self) -> str:
        return f"Value({float(self):.6g}, clean={self.clean:.6g}, corrupt={self.corrupt:.6g})"

    def plot(self, **options: Any) -> Any:
        """A plotly Figure of this result (options: see `workbench.figures.plot_value`)."""
        from ..figures import plot_value

        return plot_value(self, **options)

    def to_frame(self, **options: Any) -> Any:
        """A tidy pandas DataFrame, one row per cell (layout: `workbench.figures.frames`)."""
        from ..figures import value_frame

        return value_frame(self, **options)

    def save_figure(self, path: Any, **plot_options: Any) -> Any:
        """Write `self.plot(**plot_options)` to `path` (.pdf, .svg, .png; offline, system Chromium)."""
        from ..figures import save_result_figure

        return save_result_figure(self, path, **plot_options)


class SteerResult(str):
    """Generated text (a str) with the unsteered baseline, the vector used and the code."""

    baseline: str
    vector: np.ndarray
    options: dict[str, Any]
    _code: Callable[[], str]

    def __new__(cls, text: str, **attrs: Any) -> SteerResult:
        obj = super().__new__(cls, text)
        for k, v in attrs.items():
            setattr(obj, k, v)
        return obj

    @property
    def text(self) -> str:
        return str(self)

    def to_code(self) -> str:
        return self._code()

    def plot(self, **options: Any) -> Any:
        """A plotly Figure of this result (options: see `workbench.figures.plot_steer`)."""
        from ..figures import plot_steer

        return plot_steer(self, **options)

    def to_frame(self, **options: Any) -> Any:
        """A tidy pandas DataFrame, one row per cell (layout: `workbench.figures.frames`)."""
        from ..figures import steer_frame

        return steer_frame(self, **options)

    def save_figure(self, path: Any, **plot_options: Any) -> Any:
        """Write `self.plot(**plot_options)` to `path` (.pdf, .svg, .png; offline, system Chromium)."""
        from ..figures import save_result_figure

        return save_result_figure(self, path, **plot_options)


@dataclass
class SweepResult:
    """A grid of metric values: [layer, position], [layer, head] or [layer, position, head]."""

    values: np.ndarray
    clean: float
    corrupt: float
    axes: tuple[str, ...]
    tokens: list[str]
    options: dict[str, Any]
    _code: Callable[[], str] = field(repr=False)

    @property
    def normalized(self) -> np.ndarray:
        denom = self.clean - self.corrupt
        if denom == 0:
            return np.full_like(self.values, np.nan)
        return ((self.values - self.corrupt) / denom).astype(np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def to_code(self) -> str:
        return self._code()

    def plot(self, **options: Any) -> Any:
        """A plotly Figure of this result (options: see `workbench.figures.plot_sweep`)."""
        from ..figures import plot_sweep

        return plot_sweep(self, **options)

    def to_frame(self, **options: Any) -> Any:
        """A tidy pandas DataFrame, one row per cell (layout: `workbench.figures.frames`)."""
        from ..figures import sweep_frame

        return sweep_frame(self, **options)

    def save_figure(self, path: Any, **plot_options: Any) -> Any:
        """Write `self.plot(**plot_options)` to `path` (.pdf, .svg, .png; offline, system Chromium)."""
        from ..figures import save_result_figure

        return save_result_figure(self, path, **plot_options)


@dataclass
class LensResult:
    """The logit lens: each layer's residual (resid_post) through the final norm and unembedding."""

    tokens: list[str]
    top_ids: np.ndarray  # int32 [L, T, k]
    top_probs: np.ndarray  # float32 [L, T, k]
    top_tokens: list[list[list[str]]]
    entropy: np.ndarray  # float32 [L, T], nats
    kl: np.ndarray  # float32 [L, T], KL(final || layer), nats
    options: dict[str, Any]
    _token_stats: dict[int, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    _more: Callable[[list[int]], dict[int, tuple[np.ndarray, np.ndarray]]] = field(repr=False)
    _token_id: Callable[[str | int], int] = field(repr=False)
    _code: Callable[[], str] = field(repr=False)

    def _stats(self, token: str | int) -> tuple[np.ndarray, np.ndarray]:
        tid = self._token_id(token)
        if tid not in self._token_stats:
            self._token_stats.update(self._more([tid]))
        return self._token_stats[tid]

    def prob(self, token: str | int) -> np.ndarray:
        """Probability of `token` at every layer and position, float32 [L, T]."""
        return self._stats(token)[0]

    def rank(self, token: str | int) -> np.ndarray:
        """Rank of `token` (0 = top-1) at every layer and position, int32 [L, T]."""
        return self._stats(token)[1]

    @property
    def layers(self) -> list[str]:
        return [str(i) for i in range(self.top_ids.shape[0])]

    def to_code(self) -> str:
        return self._code()

    def plot(self, **options: Any) -> Any:
        """A plotly Figure of this result (options: see `workbench.figures.plot_lens`)."""
        from ..figures import plot_lens

        return plot_lens(self, **options)

    def to_frame(self, **options: Any) -> Any:
        """A tidy pandas DataFrame, one row per cell (layout: `workbench.figures.frames`)."""
        from ..figures import lens_frame

        return lens_frame(self, **options)

    def save_figure(self, path: Any, **plot_options: Any) -> Any:
        """Write `self.plot(**plot_options)` to `path` (.pdf, .svg, .png; offline, system Chromium)."""
        from ..figures import save_result_figure

        return save_result_figure(self, path, **plot_options)


@dataclass
class AttentionResult:
    """Attention probabilities [L, H, T_query, T_key] (grouped-query heads expanded to query heads)."""

    patterns: np.ndarray
    tokens: list[str]
    layers: list[int]
    options: dict[str, Any]
    _code: Callable[[], str] = field(repr=False)

    def to_code(self) -> str:
        return self._code()

    def plot(self, **options: Any) -> Any:
        """A plotly Figure of this result (options: see `workbench.figures.plot_attention`)."""
        from ..figures import plot_attention

        return plot_attention(self, **options)

    def to_frame(self, **options: Any) -> Any:
        """A tidy pandas DataFrame, one row per cell (layout: `workbench.figures.frames`)."""
        from ..figures import attention_frame

        return attention_frame(self, **options)

    def save_figure(self, path: Any, **plot_options: Any) -> Any:
        """Write `self.plot(**plot_options)` to `path` (.pdf, .svg, .png; offline, system Chromium)."""
        from ..figures import save_result_figure

        return save_result_figure(self, path, **plot_options)
