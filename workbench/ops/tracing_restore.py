"""One cell of a causal trace, restored alone: the restored run's prediction and its logit lens.

`restore_state(model, trace, layer, position)` replays exactly the run behind `trace.values[layer, position]`
(the same noise tensor `trace.noise`, the same restored states and severed path) in one nnsight trace of
[clean, S noised, S restored] rows, and reads what the causal-trace grid does not keep: the top-k next tokens
of the restored run (mean over the S noised samples of their softmax) and, at every layer, the top-1 token of
the logit lens at the last position (the mean of the samples' lens distributions).

The view's click runs this (widgets/tracing.py); it is a plain op, usable from a notebook too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..engine.kernels import decode, read, slot
from ..engine.sites import site as site_record
from ..errors import WorkbenchError
from ..model import Model
from ..validate import as_int
from .tracing import KIND_SITES, SEVER_SITES, CausalTrace, window_layers


@dataclass
class RestoredState:
    """The run of one causal-trace cell: its prediction and logit lens (mean over the noised samples)."""

    kind: str
    layer: int
    position: int
    value: float  # p(target) of the restored run, mean over the samples (= trace.values[layer, position])
    high: float  # p(target) on the clean prompt
    low: float  # p(target) with the subject noised and nothing restored
    target: str
    target_id: int
    top_ids: (
        np.ndarray
    )  # int32 [k]: the restored run's top-k next tokens (mean distribution over the samples)
    top_tokens: list[str]
    top_probs: np.ndarray  # float32 [k]
    lens_ids: np.ndarray  # int32 [L]: top-1 token of the lens at the last position, per layer
    lens_tokens: list[str]
    lens_probs: np.ndarray  # float32 [L]: its probability (mean distribution over the samples)
    lens_target: np.ndarray  # float32 [L]: p(target) through the lens, per layer
    layers: list[int]  # the layers whose state was restored
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def effect(self) -> float:
        return self.value - self.low

    def __repr__(self) -> str:
        top = ", ".join(f"{t!r} {p:.3f}" for t, p in zip(self.top_tokens, self.top_probs, strict=False))
        return (
            f"RestoredState {self.kind} L{self.layer} pos {self.position}: p({self.target!r}) {self.value:.4g} "
            f"(effect {self.effect:+.4g}; clean {self.high:.4g}, noised {self.low:.4g}); top: {top}"
        )


def restored_cells(
    kind: str, layer: int, position: int, window: int, n_layers: int, sever: str | None
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(restored (layer, site) cells, frozen (layer, site) cells) of one run at `position` (ROME's rule)."""
    site = KIND_SITES[kind]
    layers = [layer] if kind == "resid" else list(window_layers(layer, window, n_layers))
    restored = [(j, site) for j in layers]
    frozen = []
    if sever:
        freeze = SEVER_SITES[sever]
        frozen = [(j, freeze) for j in range(n_layers) if (j, freeze) not in restored]
    return restored, frozen


def restore_state(
    model: Model, trace: CausalTrace, layer: int, position: int, top_k: int = 5
) -> RestoredState:
    """Restore the state of `trace`'s cell (layer, position) alone and return that run's prediction and lens."""
    if not isinstance(trace, CausalTrace):
        raise WorkbenchError(
            f"restore_state takes one prompt's CausalTrace (got {type(trace).__name__}); over a dataset pass "
            "result.per_example[i]."
        )
    n_layers, n_tokens = trace.values.shape
    layer = as_int(layer, "layer", lo=0, hi=n_layers - 1)
    position = as_int(position, "position", lo=0, hi=n_tokens - 1)
    top_k = as_int(top_k, "top_k", lo=1, hi=50)
    o = trace.options
    kind, window, sever = trace.kind, int(o.get("window") or 1), o.get("sever") or None
    ids = model.to_tokens(o["prompt"])
    if ids.shape[1] != n_tokens:
        raise WorkbenchError(
            f"The trace's prompt is {ids.shape[1]} tokens for this model, its grid {n_tokens}: restore it with "
            "the model that traced it."
        )
    restored, frozen = restored_cells(kind, layer, position, window, n_layers, sever)
    noise = trace.noise.detach().float().cpu()
    with torch.no_grad(), model.lock:
        out = _restore_trace(
            model, ids, trace.subject, noise, position, restored, frozen, int(trace.target_id), top_k
        )
    top_ids = out["top_ids"].numpy().astype(np.int32)
    lens_ids = out["lens_ids"].numpy().astype(np.int32)
    return RestoredState(
        kind=kind,
        layer=layer,
        position=position,
        value=float(out["value"]),
        high=float(out["high"]),
        low=float(out["low"]),
        target=trace.target,
        target_id=int(trace.target_id),
        top_ids=top_ids,
        top_tokens=model.str_tokens(top_ids.tolist()),
        top_probs=out["top_probs"].numpy().astype(np.float32),
        lens_ids=lens_ids,
        lens_tokens=model.str_tokens(lens_ids.tolist()),
        lens_probs=out["lens_probs"].numpy().astype(np.float32),
        lens_target=out["lens_target"].numpy().astype(np.float32),
        layers=[j for j, _ in restored],
        options=dict(kind=kind, window=window, sever=sever, layer=layer, position=position),
    )


def _restore_trace(
    model: Model,
    ids: torch.Tensor,
    span: tuple[int, int],
    noise: torch.Tensor,
    position: int,
    restored: list[tuple[int, str]],
    frozen: list[tuple[int, str]],
    target: int,
    top_k: int,
) -> dict[str, torch.Tensor]:
    """One forward of [clean, S noised, S restored]: restored cells copy row 0, frozen cells copy the row's own
    noised sample; the lens reads resid_post of every layer at the last position of the restored rows."""
    n_layers = model.n_layers
    n_samples = int(noise.shape[0])
    first = 1 + n_samples  # the restored rows start here
    rows = torch.arange(first, first + n_samples)
    # per layer, in forward order: (envoy, use_input, layout, is resid_post, dst rows, src rows)
    steps: dict[int, list] = {}
    moves = [(j, s, 0) for j, s in restored] + [(j, s, 1) for j, s in frozen]
    for j, s, from_sample in sorted(moves, key=lambda m: (m[0], site_record(m[1]).order, m[2])):
        ref = model.site_ref(s, j)
        src = torch.arange(1, 1 + n_samples) if from_sample else torch.zeros(n_samples, dtype=torch.long)
        steps.setdefault(j, []).append(
            (model.envoy(ref), ref.use_input, ref.layout, s == "resid_post", rows, src)
        )
    posts = [model.envoy(model.site_ref("resid_post", j)) for j in range(n_layers)]
    embed = model.envoy(model.site_ref("embed", 0))
    norm, unembed, divisor, softcap = model.decoder()
    a, b = span
    batch = ids.expand(1 + 2 * n_samples, -1)
    tid = torch.tensor(target)
    # plain values only in the body (a request carries a copy of them)
    with model.nn.trace(batch, logits_to_keep=1, **model.trace_options()):
        emb = read(embed, False)
        emb[1:, a:b] += noise.to(emb.dtype).repeat(2, 1, 1)
        lasts = []
        for j in range(n_layers):
            post = None
            for envoy, use_input, layout, is_post, dst, src in steps.get(j, []):
                x = slot(read(envoy, use_input), layout)
                x[dst, position] = x[src, position]
                if is_post:
                    post = x
            if post is None:
                post = read(posts[j], False)
            lasts.append(post[first:, -1].clone())
        hidden = torch.stack(lasts)  # [L, S, d]
        lens = torch.softmax(decode(norm, unembed, divisor, softcap, hidden).float(), dim=-1).mean(dim=1)
        best = lens.max(dim=-1)
        lens_ids = best.indices.save()
        lens_probs = best.values.save()
        lens_target = lens[:, tid].save()
        probs = torch.softmax(model.nn.output.logits[:, -1].float(), dim=-1)
        mean = probs[first:].mean(dim=0)
        top = mean.topk(top_k)
        top_ids = top.indices.save()
        top_probs = top.values.save()
        value = mean[tid].save()
        high = probs[0, tid].save()
        low = probs[1:first, tid].mean().save()
    return {
        "top_ids": top_ids.detach().cpu(),
        "top_probs": top_probs.detach().float().cpu(),
        "lens_ids": lens_ids.detach().cpu(),
        "lens_probs": lens_probs.detach().float().cpu(),
        "lens_target": lens_target.detach().float().cpu(),
        "value": value.detach().float().cpu(),
        "high": high.detach().float().cpu(),
        "low": low.detach().float().cpu(),
    }
