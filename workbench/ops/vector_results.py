"""Function-vector results (Todd et al. 2024): every head's causal indirect effect (`HeadEffects`), the vector
built from the top heads (`FunctionVector`) and its zero-shot evaluation by layer (`VectorEvaluation`).

All hold float32/int32 numpy arrays, the options that made them and their code; each has `.plot()`,
`.to_frame()`, `.to_code()` and a short repr, and pickles without the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import WorkbenchError
from ..validate import as_int
from .dataset_results import DatasetSweepResult, sem
from .results import Coded, Figured, SweepResult, _code_of, _num, _picklable


def _heads_text(heads: list[tuple[int, int]], scores: Any = None, shown: int = 4) -> str:
    parts = []
    for i, (layer, head) in enumerate(heads[:shown]):
        s = "" if scores is None or not np.isfinite(scores[i]) else f" {float(scores[i]):.3g}"
        parts.append(f"L{layer} H{head}{s}")
    return ", ".join(parts) + (", ..." if len(heads) > shown else "")


@dataclass(repr=False)
class HeadEffects(DatasetSweepResult):
    """The causal indirect effect of every attention head on a task, [L, H] (`wb.head_effects`).

    Example i has a clean n-shot prompt and the same prompt with the demonstrations' labels shuffled. A head's
    effect on example i is p(answer) of the shuffled prompt with that head's output at the last position set
    to its mean over the clean prompts, minus p(answer) of the shuffled prompt unedited.

    `.values` [L, H] the mean effect over examples, `.per_example` [N, L, H], `.sem` [L, H]; `.clean` [N]
    p(answer) of each clean prompt, `.corrupt` [N] of each shuffled one; `.normalized` = values / (mean clean
    - mean corrupt) (the share of the in-context gap one head closes); `.patched` [N, L, H] the patched
    p(answer) itself; `.top_heads(n)`; `.head_means` [L, H, d_head] the clean mean output of every head (what
    is patched in); `.head_top_tokens[l][h]` / `.head_top_ids` / `.head_top_probs` [L, H, k]: each head's mean
    output, projected by its slice of the output projection, decoded through the final norm and unembedding.
    """

    _figure_name = "head_effects"

    head_means: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    head_top_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.int32))
    head_top_probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    head_top_tokens: list[list[list[str]]] = field(default_factory=list)
    task: Any = None

    @property
    def normalized(self) -> np.ndarray:
        gap = float(np.mean(self.clean)) - float(np.mean(self.corrupt))
        if not np.isfinite(gap) or gap == 0:
            return np.full_like(np.asarray(self.values, np.float32), np.nan)
        return (np.asarray(self.values, np.float64) / gap).astype(np.float32)

    @property
    def per_example_normalized(self) -> np.ndarray:
        """Each example's effects over its own clean - corrupt gap, [N, L, H] (NaN where the gap is 0)."""
        gap = (np.asarray(self.clean, np.float64) - np.asarray(self.corrupt, np.float64))[:, None, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            out = self.per_example / gap
        return np.where(np.isfinite(out), out, np.nan).astype(np.float32)

    @property
    def patched(self) -> np.ndarray:
        """p(answer) of each shuffled prompt with each head patched, [N, L, H] (= per_example + corrupt)."""
        return (self.per_example + np.asarray(self.corrupt, np.float32)[:, None, None]).astype(np.float32)

    @property
    def n_layers(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.values.shape[1])

    def top_cells(self, n: int = 3) -> list[tuple[tuple[int, ...], float]]:
        """The n heads of largest mean effect (the paper ranks by the signed mean, not its size)."""
        return [((layer, head), v) for (layer, head), v in self.top_heads(n)]

    def top_heads(self, n: int = 10) -> list[tuple[tuple[int, int], float]]:
        """The n heads of largest mean indirect effect, as ((layer, head), effect), ties in (layer, head) order."""
        n = as_int(n, "n", lo=0, hi=self.values.size)
        flat = np.asarray(self.values, np.float64).reshape(-1)
        order = np.argsort(-flat, kind="stable")[:n]
        h = self.n_heads
        return [((int(i // h), int(i % h)), float(flat[i])) for i in order]

    def example(self, i: int) -> SweepResult:
        """Example i as one pair's sweep: the patched p(answer) [L, H], its clean and shuffled p(answer)."""
        i = as_int(i, "example", lo=-self.n_examples, hi=self.n_examples - 1) % self.n_examples
        return SweepResult(
            values=self.patched[i],
            clean=float(np.asarray(self.clean)[i]),
            corrupt=float(np.asarray(self.corrupt)[i]),
            axes=self.axes,
            tokens=[],
            options={**self.options, "example": i},
            _code=self._code,
        )

    def decode_head(self, layer: int, head: int, top_k: int | None = None) -> list[tuple[str, float]]:
        """Head (layer, head)'s mean output decoded: its top tokens and probabilities (at most the k kept)."""
        layer = as_int(layer, "layer", lo=0, hi=self.n_layers - 1)
        head = as_int(head, "head", lo=0, hi=self.n_heads - 1)
        k = (
            self.head_top_ids.shape[-1]
            if top_k is None
            else as_int(top_k, "top_k", lo=1, hi=self.head_top_ids.shape[-1])
        )
        probs = self.head_top_probs[layer, head]
        return [(self.head_top_tokens[layer][head][j], float(probs[j])) for j in range(k)]

    def __getstate__(self) -> dict[str, Any]:
        return _picklable(self.__dict__, self)

    def __repr__(self) -> str:
        o = self.options
        lines = [
            f"HeadEffects {o.get('task', '?')!r} [{self.n_layers} layers x {self.n_heads} heads], "
            f"{o.get('n_shots')}-shot, over {self.n_examples} prompts: causal indirect effect on p(answer)",
            f"  p(answer) clean {_num(self.clean_mean)}, labels shuffled {_num(self.corrupt_mean)}; "
            ".values mean effect, .sem, .per_example, .normalized = values / (clean - shuffled)",
        ]
        if self.values.size:
            err = self.sem
            tops = []
            for (layer, head), v in self.top_heads(3):
                pm = f" ± {err[layer, head]:.2g}" if np.isfinite(err[layer, head]) else ""
                tops.append(f"L{layer} H{head}: {v:.3g}{pm}")
            lines.append("  top heads: " + "; ".join(tops))
        return "\n".join(lines)


@dataclass(repr=False)
class FunctionVector(Coded, Figured):
    """A function vector (`wb.function_vector`): the sum of the chosen heads' mean outputs, [d_model].

    `.vector` float32 [d_model] (steer with it: `wb.steer(model, prompt, vector=fv, ...)`, or add it with
    `wb.Add(fv.vector)`); `.heads` [(layer, head), ...]; `.head_outputs` [k, d_model] each chosen head's mean
    output through its slice of the output projection (they sum to `.vector`); `.scores` [k] their mean
    indirect effects (NaN when the heads were given and no effects computed); `.effects` the HeadEffects
    they were ranked by (or None); `.decode(top_k)` the vector's top tokens through the final norm and the
    unembedding (as the paper's `fv_to_vocab`).
    """

    _figure_name = "function_vector"

    vector: np.ndarray
    heads: list[tuple[int, int]]
    head_outputs: np.ndarray
    scores: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    top_tokens: list[str]
    options: dict[str, Any]
    effects: Any = None
    _code: Callable[[], str] | str = field(default="", repr=False)

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(np.asarray(self.vector, np.float64)))

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    def decode(self, top_k: int = 10) -> list[tuple[str, float]]:
        """The vector's top tokens through the final norm and unembedding: [(token, probability), ...]."""
        kept = len(self.top_tokens)
        top_k = as_int(top_k, "top_k", lo=1, hi=kept, hint=f" The vector keeps its top {kept} tokens.")
        return [(self.top_tokens[i], float(self.top_probs[i])) for i in range(top_k)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.vector, dtype=dtype)

    def __getstate__(self) -> dict[str, Any]:
        return _picklable(self.__dict__, self)

    def __repr__(self) -> str:
        o = self.options
        picked = "top heads by indirect effect" if o.get("selected") else "heads given"
        tops = ", ".join(f"{t!r} {p:.2g}" for t, p in self.decode(min(5, len(self.top_tokens))))
        return (
            f"FunctionVector {o.get('task', '?')!r}: {len(self.heads)} heads ({picked}): "
            f"{_heads_text(self.heads, self.scores)}\n"
            f"  .vector [{self.d_model}], norm {_num(self.norm)}; decodes to {tops}"
        )


@dataclass(repr=False)
class VectorEvaluation(Coded, Figured):
    """Zero-shot accuracy with a vector added at each layer (`wb.evaluate_vector`).

    The vector (times `scale`) is added to the hidden state after block l (resid_post[l], the paper's layer
    output) at the last position of each zero-shot prompt. `.accuracy` [n_layers] top-1 accuracy with it at
    each of `.layers`, `.baseline` without it, `.best_layer`, `.gain`; per example: `.correct` / `.probs` /
    `.top_ids` / `.top_tokens` [N, n_layers] and `.baseline_correct` / `.baseline_probs` / ... [N];
    `.prompts`, `.answers`.
    """

    _figure_name = "vector_evaluation"

    layers: list[int]
    accuracy: np.ndarray  # [n_layers]
    probs: np.ndarray  # [N, n_layers]
    correct: np.ndarray  # [N, n_layers] 0/1
    top_ids: np.ndarray  # [N, n_layers] int32
    top_tokens: list[list[str]]
    baseline_probs: np.ndarray  # [N]
    baseline_correct: np.ndarray  # [N]
    baseline_top_ids: np.ndarray  # [N]
    baseline_top_tokens: list[str]
    prompts: list[str]
    answers: list[str]
    options: dict[str, Any]
    _code: Callable[[], str] | str = field(default="", repr=False)

    @property
    def baseline(self) -> float:
        """Zero-shot accuracy without the vector."""
        return float(np.mean(self.baseline_correct))

    @property
    def best_layer(self) -> int:
        """The layer of highest accuracy (the first of equals)."""
        return int(self.layers[int(np.argmax(self.accuracy))])

    @property
    def best_accuracy(self) -> float:
        return float(np.max(self.accuracy))

    @property
    def gain(self) -> float:
        """Best accuracy with the vector minus the baseline."""
        return self.best_accuracy - self.baseline

    @property
    def sem(self) -> np.ndarray:
        """Standard error of each layer's accuracy over the prompts, [n_layers]."""
        return sem(np.asarray(self.correct, np.float32))

    @property
    def mean_probs(self) -> np.ndarray:
        """Mean p(answer) with the vector at each layer, [n_layers]."""
        return np.asarray(self.probs, np.float32).mean(0)

    @property
    def baseline_prob(self) -> float:
        return float(np.mean(self.baseline_probs))

    @property
    def n_examples(self) -> int:
        return len(self.prompts)

    def at(self, layer: int) -> float:
        """Accuracy with the vector at `layer`."""
        if layer not in self.layers:
            raise WorkbenchError(f"Layer {layer!r} was not evaluated; the layers are {self.layers}.")
        return float(self.accuracy[self.layers.index(layer)])

    def __getstate__(self) -> dict[str, Any]:
        return _picklable(self.__dict__, self)

    def to_code(self) -> str:
        return _code_of(self)

    def __repr__(self) -> str:
        o = self.options
        k = self.layers.index(self.best_layer)
        err = self.sem[k]
        pm = f" ± {err:.2g}" if np.isfinite(err) else ""
        return (
            f"VectorEvaluation {o.get('task', '?')!r}: zero-shot accuracy over {self.n_examples} prompts, vector x "
            f"{_num(o.get('scale', 1.0))} added to resid_post at the last position\n"
            f"  baseline (no vector) {self.baseline:.3f}; best layer {self.best_layer}: {self.best_accuracy:.3f}{pm} "
            f"(gain {self.gain:+.3f}); .accuracy [{len(self.layers)} layers], .correct, .probs [N, layers]"
        )
