"""The lens over generated text: for each greedily generated token, the layer where it became the prediction
(NDIF's "commitment strip")."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import codegen
from ..engine.batching import Progress, check_cancel
from ..errors import TokenizationError
from ..model import Model
from ..remote import job_status
from ..validate import as_int
from .lens import lens_result
from .patching import check_top_k
from .results import Coded, Figured, LensResult, _short
from .steering import _eos_ids, _generate


def commit_layers(rank: np.ndarray) -> np.ndarray:
    """Per column of `rank` [L, n]: the first layer from which the rank is 0 through the last layer (-1 when
    the last layer's rank is not 0)."""
    n_layers = rank.shape[0]
    out = np.full(rank.shape[1], -1, np.int32)
    for i in range(rank.shape[1]):
        layer = n_layers
        while layer > 0 and rank[layer - 1, i] == 0:
            layer -= 1
        out[i] = layer if layer < n_layers else -1
    return out


def confident_layers(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per column of `prob` [L, n]: the first layer with probability > threshold, or -1."""
    above = prob > threshold
    return np.where(above.any(0), above.argmax(0), -1).astype(np.int32)


@dataclass
class GenerationLens(Coded, Figured):
    """Greedy generation read through the logit lens: for generated token i (`.tokens[i]`, id
    `.token_ids[i]`), `.prob[l, i]` / `.rank[l, i]` are its probability / rank (0 = top-1) at layer l at the
    position that predicts it (prompt length - 1 + i). `.commit_layer[i]`: the first layer from which it
    stays top-1 through the last layer (-1 if it is not top-1 at the last layer, a tie); `.confident_layer[i]`:
    the first layer where p > 0.5, or -1. `.lens` is the LensResult over prompt + generated tokens. A
    generated EOS (greedy decoding stopped there) is the last token and is included."""

    _figure_name = "generation_lens"

    prompt: str
    text: str  # the generated text (special tokens skipped)
    tokens: list[str]
    token_ids: list[int]
    prob: np.ndarray  # float32 [L, n_new]
    rank: np.ndarray  # int32 [L, n_new]
    commit_layer: np.ndarray  # int32 [n_new]
    confident_layer: np.ndarray  # int32 [n_new]
    lens: LensResult
    prompt_tokens: int
    options: dict[str, Any]
    _code: Callable[[], str] = field(repr=False)

    def __repr__(self) -> str:
        n_layers = self.prob.shape[0]
        n = len(self.tokens)
        lines = [
            f"GenerationLens [{n_layers} layers x {n} generated tokens], prompt {_short(self.prompt)}",
            f"  generated {_short(self.text, 80)}",
        ]
        if n:
            shown = [
                f"{t!r}@L{c}" if c >= 0 else f"{t!r}@-"
                for t, c in zip(self.tokens[:8], self.commit_layer[:8].tolist(), strict=True)
            ]
            lines.append("  commit layers: " + " ".join(shown) + (" ..." if n > 8 else ""))
            valid = self.commit_layer[self.commit_layer >= 0]
            if valid.size:
                lines.append(
                    f"  median commit layer {float(np.median(valid)):.3g} of {n_layers - 1}; "
                    f"{int((self.confident_layer >= 0).sum())}/{n} tokens reach p > 0.5 (.confident_layer)"
                )
        return "\n".join(lines)


def _greedy(model: Model, ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Plain greedy continuation of `ids` (steering's generation with nothing added), cut after the first EOS
    pick exactly where greedy decoding stops."""
    out = _generate(model, ids, 0, torch.zeros(1, model.d_model), "all", max_new_tokens, None)
    tokens, eos = out["generated"][0].tolist(), _eos_ids(model)
    for i, pick in enumerate(out["picks"][0].tolist()):
        if pick in eos:
            return tokens[:i] + [pick]
    return tokens


def generation_lens(
    model: Model,
    prompt: str,
    max_new_tokens: int = 20,
    *,
    top_k: int = 5,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> GenerationLens:
    """Greedy generation (stops at EOS), then the logit lens over prompt + generated ids: each generated
    token's probability and rank at every layer where it is predicted, its commit layer (first layer from
    which it stays top-1) and confident layer (first with p > 0.5)."""
    max_new_tokens = as_int(max_new_tokens, "max_new_tokens", lo=1, hi=1024)
    top_k = check_top_k(model, top_k, lo=1)
    ids = model.to_tokens(prompt)
    n_prompt = ids.shape[1]
    if n_prompt + max_new_tokens > model.n_ctx:
        raise TokenizationError(
            f"The prompt is {n_prompt} tokens and max_new_tokens={max_new_tokens}: together "
            f"{n_prompt + max_new_tokens}, more than this model's context of {model.n_ctx}. Ask for at most "
            f"max_new_tokens={max(0, model.n_ctx - n_prompt)} or shorten the prompt."
        )
    check_cancel(cancel)
    with model.lock, job_status(model, progress, cancel):
        new = _greedy(model, ids, max_new_tokens)
    check_cancel(cancel)
    if progress is not None:
        progress(0.5, f"generated {len(new)} tokens")
    full = torch.cat([ids, torch.tensor([new], dtype=ids.dtype)], dim=1)
    unique = sorted(set(new))
    options = dict(op="generation_lens", prompt=prompt, max_new_tokens=max_new_tokens, top_k=top_k)
    lens_options = dict(op="logit_lens", prompt=model.tokenizer.decode(full[0]), top_k=top_k, tokens=unique)
    lens = lens_result(
        model,
        full,
        top_k=top_k,
        tokens=unique,
        options=lens_options,
        code=lambda: codegen.lens_ids_code(model, lens_options, full[0].tolist()),
        progress=None,
        cancel=cancel,
    )
    n = len(new)
    cols = np.arange(n_prompt - 1, n_prompt - 1 + n)
    prob = np.zeros((model.n_layers, n), np.float32)
    rank = np.zeros((model.n_layers, n), np.int32)
    for i, tid in enumerate(new):
        p, r = lens._token_stats[tid]
        prob[:, i], rank[:, i] = p[:, cols[i]], r[:, cols[i]]
    if progress is not None:
        progress(1.0, "generation lens done")
    eos = _eos_ids(model)
    return GenerationLens(
        prompt=prompt,
        text=model.tokenizer.decode(new, skip_special_tokens=True),
        tokens=model.str_tokens(new),
        token_ids=list(new),
        prob=prob,
        rank=rank,
        commit_layer=commit_layers(rank),
        confident_layer=confident_layers(prob),
        lens=lens,
        prompt_tokens=n_prompt,
        options=dict(options, stopped_at_eos=bool(new and new[-1] in eos)),
        _code=lambda: codegen.generation_lens_code(model, options),
    )
