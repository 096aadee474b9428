"""Plain results: float32/int32 numpy arrays, axis labels, the options that made them, and `to_code()`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import WorkbenchError
from ..validate import as_int

# Results pickle: `_code` (a closure over the live model) is replaced by the code it returns, and whatever
# needs the model (LensResult's lazy token statistics) is dropped, so `to_code()` works after unpickling.


def _code_of(obj: Any) -> str:
    code = obj._code
    return code if isinstance(code, str) else code()


def _picklable(state: dict[str, Any], obj: Any) -> dict[str, Any]:
    state = dict(state)
    if "_code" in state:
        state["_code"] = _code_of(obj)
    return state


def _short(text: Any, n: int = 60) -> str:
    """repr of `text`, cut to about n characters (one line)."""
    text = str(text)
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def _num(x: Any) -> str:
    try:
        return f"{float(x):.4g}"
    except (TypeError, ValueError):
        return "?"


def cell_text(site: Any, layer: Any, position: Any = None, head: Any = None) -> str:
    """'head L9 H3', 'mlp_out L20 pos 9': one place, compactly."""
    parts = [str(site)] if site else []
    if layer is not None:
        parts.append(f"L{layer}")
    if head is not None:
        parts.append(f"H{head}")
    if position is not None:
        parts.append(f"pos {position}")
    return " ".join(parts)


def joint_places(options: dict[str, Any]) -> list[tuple[str, ...]] | None:
    """The places of a joint op's options as (text, kind or "") pairs: `cells` (patch/ablate cells=) or
    `edits` (intervene); None for a single-cell op."""
    if options.get("cells") is not None:
        return [(cell_text(*c), "") for c in options["cells"]]
    if options.get("edits") is not None:
        return [(cell_text(*e[:4]), str(e[4])) for e in options["edits"]]
    return None


def _where(options: dict[str, Any], shown: int = 3) -> str:
    """' resid_pre L10 pos 3' from an op's options (empty when there is nothing to say); a joint op's
    places as '3 cells: head L9 H3, mlp_out L20 pos 9, ...'."""
    places = joint_places(options)
    if places is None:
        return cell_text(
            options.get("site"), options.get("layer"), options.get("position"), options.get("head")
        )
    noun = ("cell" if options.get("cells") is not None else "edit") + ("" if len(places) == 1 else "s")
    items = [f"{text} {kind}".strip() for text, kind in places[:shown]]
    return f"{len(places)} {noun}: " + ", ".join(items + (["..."] if len(places) > shown else []))


def _rebuild_value(value: float, state: dict[str, Any]) -> Value:
    return Value(value, **state)


def _rebuild_steer(text: str, state: dict[str, Any]) -> SteerResult:
    return SteerResult(text, **state)


class Figured:
    """`.plot()`, `.to_frame()` and `.save_figure()` of a result: the figures and frames live in
    `workbench.figures` as `plot_<name>` and `<name>_frame`, `name` being the class's `_figure_name`."""

    _figure_name = ""

    def plot(self, **options: Any) -> Any:
        """A plotly Figure of this result (options: see `workbench.figures.plot_<name>`)."""
        from .. import figures

        return getattr(figures, f"plot_{self._figure_name}")(self, **options)

    def to_frame(self, **options: Any) -> Any:
        """A tidy pandas DataFrame, one row per cell (layout: `workbench.figures.frames`)."""
        from .. import figures

        return getattr(figures, f"{self._figure_name}_frame")(self, **options)

    def save_figure(self, path: Any, **plot_options: Any) -> Any:
        """Write `self.plot(**plot_options)` to `path` (.pdf, .svg, .png; offline, system Chromium)."""
        from ..figures import save_result_figure

        return save_result_figure(self, path, **plot_options)


class Coded:
    """`to_code()` from the result's `_code`, and pickling that keeps the code (not the live model)."""

    def to_code(self) -> str:
        return _code_of(self)

    def __getstate__(self) -> dict[str, Any]:
        return _picklable(self.__dict__, self)


class Value(Figured, float):
    """A metric value (a float) that also carries its baselines, the run's prediction and its code."""

    _figure_name = "value"

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
    def clean_mean(self) -> float:
        """The clean baseline (over a Dataset: the mean of the examples')."""
        return float(self.clean)

    @property
    def corrupt_mean(self) -> float:
        return float(self.corrupt)

    @property
    def normalized(self) -> float:
        """(value - corrupt) / (clean - corrupt): 1 = fully restored, 0 = no effect."""
        denom = self.clean - self.corrupt
        return float("nan") if denom == 0 else (float(self) - self.corrupt) / denom

    def to_code(self) -> str:
        return _code_of(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_value, (float(self), _picklable(self.__dict__, self))

    def __repr__(self) -> str:
        clean, corrupt = getattr(self, "clean", float("nan")), getattr(self, "corrupt", float("nan"))
        text = f"Value({float(self):.6g}, clean={clean:.6g}, corrupt={corrupt:.6g}"
        if np.isfinite(clean) and np.isfinite(corrupt):
            text += f", normalized={self.normalized:.3g}"
        o = getattr(self, "options", {})
        what = " ".join(x for x in (str(o.get("op", "")), _where(o)) if x)
        if what or o.get("metric"):
            text += f" | {what}" + (f", metric {o['metric']}" if o.get("metric") else "")
        tops = list(getattr(self, "top_tokens", []))[:3]
        if tops:
            probs = list(getattr(self, "top_probs", []))
            text += "; top " + ", ".join(f"{t!r} {float(p):.2f}" for t, p in zip(tops, probs, strict=False))
        return text + ")"


class SteerResult(Figured, str):
    """Generated text (a str) with the unsteered baseline, the vector used and the code."""

    _figure_name = "steer"

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
        return _code_of(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_steer, (str(self), _picklable(self.__dict__, self))

    def __repr__(self) -> str:
        o = getattr(self, "options", {})
        rel, added, resid = (getattr(self, k, float("nan")) for k in ("relative", "added_norm", "resid_norm"))
        where = " at the last position" if o.get("positions") == "last" else ""
        lines = [
            f"SteerResult: resid_pre[{o.get('layer', '?')}] += {_num(o.get('scale'))} * vector{where}: adds norm "
            f"{_num(added)} = {_num(rel)}x the median residual norm there ({_num(resid)})"
        ]
        n = len(getattr(self, "tokens", []))
        lines.append(f"  steered  ({n} tokens): {_short(str(self), 90)}")
        if getattr(self, "baseline", ""):
            lines.append(f"  baseline: {_short(self.baseline, 90)}")
            at = getattr(self, "diverges_at", None)
            lines.append(
                "  the same as the baseline" if at is None else f"  diverges from the baseline at token {at}"
            )
        if not str(self).strip() and n:
            lines.append(
                "  the steered text is only whitespace: the push is so strong that no language is left; "
                "try a smaller scale (a push well below 1x the residual norm)"
            )
        return "\n".join(lines)


@dataclass
class SteerSweepResult(Figured, Coded):
    """`wb.steer_sweep`: one SteerResult per scale (`.results`), all from one batched generation with the
    unsteered baseline (`.baseline`). Indexing and iterating go over the per-scale results."""

    _figure_name = "steer_sweep"

    results: list[SteerResult]
    scales: list[float]
    baseline: str
    baseline_tokens: list[int]
    options: dict[str, Any]
    _code: Callable[[], str] = field(repr=False)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> SteerResult:
        return self.results[i]

    def __iter__(self) -> Any:
        return iter(self.results)

    @property
    def texts(self) -> list[str]:
        """The steered text of each scale, in the order of `.scales`."""
        return [str(r) for r in self.results]

    def __repr__(self) -> str:
        o = self.options
        where = " at the last position" if o.get("positions") == "last" else ""
        lines = [
            f"SteerSweepResult: resid_pre[{o.get('layer', '?')}] += scale * vector{where}, {len(self)} scales"
        ]
        lines.append(f"  baseline{'':16}: {_short(self.baseline, 80)}")
        for s, r in zip(self.scales, self.results, strict=True):
            push = f"{_num(s)} ({_num(getattr(r, 'relative', float('nan')))}x)"
            lines.append(f"  scale {push:18}: {_short(str(r), 80)}")
        return "\n".join(lines)


@dataclass
class SweepResult(Figured):
    """A grid of metric values: [layer, position], [layer, head] or [layer, position, head]."""

    _figure_name = "sweep"

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

    @property
    def clean_mean(self) -> float:
        """The clean baseline (over a Dataset: the mean of the examples')."""
        return float(self.clean)

    @property
    def corrupt_mean(self) -> float:
        return float(self.corrupt)

    def to_code(self) -> str:
        return _code_of(self)

    def __getstate__(self) -> dict[str, Any]:
        return _picklable(self.__dict__, self)

    def _label(self, index: tuple[int, ...]) -> str:
        parts = []
        for axis, i in zip(self.axes, index, strict=False):
            if axis == "layer":
                parts.append(f"L{i}")
            elif axis == "head":
                parts.append(f"H{i}")
            else:
                tok = self.tokens[i] if i < len(self.tokens) else ""
                parts.append(f"pos {i} {tok!r}")
        return " ".join(parts)

    def top_cells(self, n: int = 3) -> list[tuple[tuple[int, ...], float]]:
        """The n cells that move the metric most from the unintervened run (corrupt; clean for ablation)."""
        base = (
            self.corrupt_mean if np.isfinite(self.corrupt_mean) else self.clean_mean
        )  # a Dataset: the means
        values = np.asarray(self.values, dtype=np.float64)
        effect = np.nan_to_num(np.abs(values - base), nan=-1.0)
        order = np.argsort(effect, axis=None)[::-1][:n]
        return [
            (tuple(int(i) for i in np.unravel_index(j, values.shape)), float(values.flat[j])) for j in order
        ]

    def __repr__(self) -> str:
        o = self.options
        dims = " x ".join(f"{n} {a}" for n, a in zip(self.values.shape, self.axes, strict=False))
        head = f"SweepResult {o.get('op', '')} site={o.get('site')!r} [{dims}], metric {o.get('metric', '?')}"
        patching = np.isfinite(self.corrupt)
        base = (
            f"  clean {_num(self.clean)}, corrupt {_num(self.corrupt)}; .normalized = (v - corrupt) / (clean - corrupt)"
            if patching
            else f"  unablated {_num(self.clean)} (.clean); no corrupt run, so read .values - .clean"
        )
        if self.values.size == 0:
            return head + "\n" + base
        norm = self.normalized if patching else None
        cells = []
        for index, v in self.top_cells(3):
            extra = f" ({norm[index]:.2f})" if norm is not None and np.isfinite(norm[index]) else ""
            cells.append(f"{self._label(index)}: {v:.4g}{extra}")
        return head + "\n" + base + "\n  largest effects: " + "; ".join(cells)


@dataclass
class LensResult(Figured):
    """The logit lens: each layer's residual (resid_post) through the final norm and unembedding."""

    _figure_name = "lens"

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
    _names: dict[str, int] = field(default_factory=dict, repr=False)  # token text -> id, of computed ones

    def _stats(self, token: str | int) -> tuple[np.ndarray, np.ndarray]:
        if self._token_id is None:  # unpickled: no model to ask
            tid = self._names.get(token) if isinstance(token, str) else as_int(token, "A token id")
            if tid not in self._token_stats:
                known = sorted(self._names, key=str) or sorted(self._token_stats)
                raise WorkbenchError(
                    f"This LensResult was unpickled without its model, so it has statistics only for the tokens "
                    f"computed before it was saved ({known}), not {token!r}. Recompute with "
                    f"wb.logit_lens(model, prompt, tokens=[{token!r}])."
                )
            return self._token_stats[tid]
        tid = self._token_id(token)
        if isinstance(token, str):
            self._names[token] = tid
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
        return _code_of(self)

    def __getstate__(self) -> dict[str, Any]:
        state = _picklable(self.__dict__, self)
        state["_more"] = state["_token_id"] = None
        return state

    def __repr__(self) -> str:
        o = self.options
        n_layers, n_tokens, k = self.top_ids.shape
        lines = [
            f"LensResult logit_lens [{n_layers} layers x {n_tokens} tokens], top_k={k}, prompt {_short(o.get('prompt', ''))}"
        ]
        if n_tokens and n_layers:
            final = self.top_tokens[-1][-1]
            probs = self.top_probs[-1, -1]
            last = self.tokens[-1] if self.tokens else ""
            tops = ", ".join(f"{t!r} {float(p):.2f}" for t, p in zip(final[:3], probs[:3], strict=False))
            top1 = self.top_ids[:, -1, 0]
            settled = n_layers - 1
            while settled > 0 and top1[settled - 1] == top1[-1]:
                settled -= 1
            lines.append(f"  last token {last!r}: output {tops}; top-1 from layer {settled} on")
        if o.get("tokens"):
            lines.append(f"  followed: {o['tokens']!r:.80} (.prob(tok), .rank(tok))")
        if o.get("intervention"):
            lines.append(f"  with intervention {_where(o['intervention'])} ({o['intervention'].get('kind')})")
        return "\n".join(lines)


@dataclass
class AttentionResult(Coded, Figured):
    """Attention probabilities [L, H, T_query, T_key] (grouped-query heads expanded to query heads)."""

    _figure_name = "attention"

    patterns: np.ndarray
    tokens: list[str]
    layers: list[int]
    options: dict[str, Any]
    _code: Callable[[], str] = field(repr=False)

    def __repr__(self) -> str:
        shape = " x ".join(str(n) for n in self.patterns.shape)
        layers = self.layers
        span = (
            f"{layers[0]}..{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else str(layers)
        )
        text = f"AttentionResult patterns [{shape}] (layer, head, query, key), layers {span}"
        return text + f"\n  prompt {_short(self.options.get('prompt', ''))}, {len(self.tokens)} tokens"
