"""Each example's clean prediction (top-1 next token, its probability, whether it is the target), in
left-padded batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..engine.batching import available_bytes
from ..engine.padding import left_pad, pad_id
from ..errors import TokenizationError
from .dataset import Dataset


@dataclass(frozen=True)
class Prediction:
    top_id: int
    top_token: str
    top_prob: float
    target_prob: float  # nan without a target
    correct: bool


def batch_size_for(model: Any, n_tokens: int, limit: int = 64) -> int:
    """Examples per forward: a quarter of free memory over the activations of one example (at least 1)."""
    per_example = 4 * n_tokens * (16 * model.d_model + 3 * model.n_heads * n_tokens) + 4 * model.vocab_size
    return max(1, min(limit, available_bytes() // 4 // max(1, per_example)))


def final_logits(model: Any, ids: list[torch.Tensor], *, batch_size: int | None = None) -> torch.Tensor:
    """The last position's logits [N, V] of each token row, many rows per forward (left-padded). A remote
    model sends every row in ONE request (one nnsight trace over the padded batch)."""
    if model.remote:
        return _remote_final_logits(model, ids)
    width = max(t.shape[-1] for t in ids)
    size = batch_size or batch_size_for(model, width)
    out = []
    with model.lock, torch.no_grad():
        for start in range(0, len(ids), size):
            batch = left_pad(ids[start : start + size], pad_id(model.tokenizer))
            logits = model.hf(**batch.inputs(), logits_to_keep=1).logits[:, -1].float()
            out.append(logits)
    return torch.cat(out)


def _remote_final_logits(model: Any, ids: list[torch.Tensor]) -> torch.Tensor:
    from ..remote import job_status

    batch = left_pad(ids, pad_id(model.tokenizer))
    nn = model.nn  # the body references only the nnsight model and tensors (it runs on NDIF)
    with (
        model.lock,
        job_status(model, None, None),
        torch.no_grad(),
        nn.trace(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            logits_to_keep=1,
            **model.trace_options(),
        ),
    ):
        logits = nn.output.logits[:, -1].float().save()
    return logits.detach()


def predictions(model: Any, ds: Dataset, *, batch_size: int | None = None) -> list[Prediction]:
    """Every example's clean top-1 and whether it is the target."""
    ids = [model.to_tokens(e.clean, what=f"clean prompt of example {i}") for i, e in enumerate(ds)]
    targets = []
    for i, e in enumerate(ds):
        if e.target is None:
            targets.append(None)
            continue
        try:
            targets.append(model.token_id(e.target))
        except TokenizationError as exc:
            raise TokenizationError(f"Example {i}: {exc}") from None
    logits = final_logits(model, ids, batch_size=batch_size)
    probs = torch.softmax(logits, dim=-1)
    top = probs.max(dim=-1)
    out = []
    for i, t in enumerate(targets):
        tid = int(top.indices[i])
        out.append(
            Prediction(
                top_id=tid,
                top_token=model.str_tokens([tid])[0],
                top_prob=float(top.values[i]),
                target_prob=float("nan") if t is None else float(probs[i, t]),
                correct=t is not None and tid == t,
            )
        )
    return out
