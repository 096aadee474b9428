"""The logit lens of a local model without a trace: one forward with plain hooks, then fused statistics.

Same numbers as the traced lens (`lens._lens_trace`, which remote models use), with less work:
- the forward runs with plain forward hooks and oneDNN linear layers (`onednn`);
- the final norm is applied once to every (layer, position) row, the unembedding runs on blocks of rows;
- each block of logits is read a few times while it is hot: top-k, then the log-normaliser, entropy and
  KL to the final layer from one exp pass (entropy = log s - sum(e * d) / s and KL = sum(pf * log pf)
  - sum(pf * d) + log s, with d = logits - max, e = exp(d), s = sum(e)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..model import Model, _get_path
from .edits import Edit
from .fast import allowed, first
from .hooks import edit_hooks, hookable
from .kernels import finish_logits, translated
from .onednn import onednn_linears
from .threads import mine

# Rows unembedded per matmul, at most. 60 measured fastest on the reference machine: fewer re-read the
# weight more often, more make a [rows, V] block that no longer stays in cache for the statistics.
_ROWS = 60
_HOT = 8  # rows whose statistics are computed together: [8, V] float32 stays in a 2 MB L2 cache


def enabled(model: Model, edits: Sequence[Edit] = ()) -> bool:
    """Whether the local lens applies (else the caller traces)."""
    return allowed(model) and hookable(edits)


class _Stop(Exception):
    """Ends the forward after the last block."""


def _resid_posts(model: Model, batch: torch.Tensor, row: int, edits: Sequence[Edit]) -> torch.Tensor:
    """resid_post of every layer for batch row `row`: [L, T, D]."""
    blocks = _get_path(model.hf, model.arch.layers)
    outs: list[torch.Tensor] = [torch.empty(0)] * model.n_layers
    handles = []

    def grab(j: int):
        def hook(_mod: Any, _args: Any, out: Any) -> None:
            outs[j] = first(out)[row].clone()

        return hook

    def stop(_mod: Any, _args: Any, _out: Any) -> None:
        raise _Stop  # the final norm and unembedding of the model's own forward are not needed

    try:
        handles += edit_hooks(model, {row: edits})  # first, so a resid_post edit is seen by the grab
        for j, block in enumerate(blocks):
            handles.append(block.register_forward_hook(mine(grab(j))))
        handles.append(blocks[-1].register_forward_hook(mine(stop)))
        model.hf(batch, logits_to_keep=1)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return torch.stack(outs)


def _logits(model: Model, normed: torch.Tensor) -> torch.Tensor:
    logits = _get_path(model.hf, model.arch.unembed)(normed)
    return finish_logits(logits, model.logit_divisor, model.logit_softcap).float()


def _top(logits: torch.Tensor, k: int, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k (values, indices, descending) of each row, reading the row once.

    The k entries sit in at most k chunks of `width`, and those chunks are among the k chunks with the
    largest maxima (a chunk holding one of them has a max >= it, and fewer than k chunks can beat that).
    So: chunk maxima, their top k, then top k of those k * width candidates.
    """
    b, v = logits.shape
    if v % width or v // width < k:
        return logits.topk(k, dim=-1)
    chunk_max = logits.view(b, v // width, width).amax(-1)  # [b, C]
    chunks = chunk_max.topk(k, dim=-1).indices  # [b, k]
    cand = (chunks.unsqueeze(-1) * width + torch.arange(width)).view(b, -1)  # [b, k * width]
    values, where = logits.gather(1, cand).topk(k, dim=-1)
    return values, cand.gather(1, where)


def lens(
    model: Model,
    batch: torch.Tensor,
    row: int,
    top_k: int,
    token_ids: list[int],
    edits: Sequence[Edit],
    translators: Any = None,
) -> dict[str, torch.Tensor]:
    """The statistics `lens._lens_trace` returns: ids, probs [L, T, k]; entropy, kl [L, T]; tp, rank [L, T, n].
    `translators`: a tuned lens's (weight, bias) applied to every layer's resid_post but the last (None: none)."""
    n_layers, n_tokens, n = model.n_layers, batch.shape[1], len(token_ids)
    tid = torch.tensor(token_ids, dtype=torch.long)
    # Results by position, then layer (transposed at the end): a position's rows are one contiguous run,
    # its last-layer row gives the final distribution every row of that position is compared with.
    ids = torch.empty(n_tokens, n_layers, top_k, dtype=torch.long)
    probs = torch.empty(n_tokens, n_layers, top_k)
    entropy, kl = torch.empty(n_tokens, n_layers), torch.empty(n_tokens, n_layers)
    tp, rank = torch.empty(n_tokens, n_layers, n), torch.empty(n_tokens, n_layers, n, dtype=torch.long)
    with torch.no_grad(), model.lock, onednn_linears(model):
        resid = _resid_posts(model, batch, row, edits)  # [L, T, D]
        if translators is not None:
            resid = torch.stack(translated(list(resid), translators))
        normed = _get_path(model.hf, model.arch.final_norm)(resid.transpose(0, 1))  # [T, L, D]
        n_blocks = -(-n_tokens * n_layers // _ROWS)
        per_block = -(-n_tokens // n_blocks)  # positions unembedded together (blocks of equal size)
        for t0 in range(0, n_tokens, per_block):
            block = _logits(model, normed[t0 : t0 + per_block].reshape(-1, normed.shape[-1]))
            for t in range(t0, min(n_tokens, t0 + per_block)):
                rows = block[(t - t0) * n_layers : (t - t0 + 1) * n_layers]  # [L, V], this position
                final = torch.log_softmax(rows[-1], dim=-1)
                p_final = final.exp()
                neg_h_final = (p_final * final).sum()  # sum pf log pf
                # A few rows at a time, so the passes over the vocabulary run from cache.
                for lo in range(0, n_layers, _HOT):
                    logits = rows[lo : lo + _HOT]
                    r = (t, slice(lo, lo + logits.shape[0]))
                    values, ids[r] = _top(logits, top_k)
                    m = values[:, :1]
                    if n:
                        chosen = logits[:, tid]  # [b, n]
                        rank[r] = (logits.unsqueeze(1) > chosen.unsqueeze(-1)).sum(-1)
                    d = logits.sub_(m)  # logits - max, in place: the block is not needed again
                    e = d.exp()
                    s = e.sum(-1)
                    log_s = s.log()
                    probs[r] = (values - m - log_s[:, None]).exp()
                    entropy[r] = log_s - e.mul_(d).sum(-1) / s  # log s - sum(e * d) / s
                    # sum pf (log pf - d + log s); torch's sum (cascaded) keeps 1e-6, sgemv's loses 1e-4.
                    kl[r] = neg_h_final - (d * p_final).sum(-1) + log_s
                    if n:
                        tp[r] = chosen - m - log_s[:, None]
    return {
        "ids": ids.transpose(0, 1),
        "probs": probs.transpose(0, 1),
        "entropy": entropy.t(),
        "kl": kl.t(),
        "tp": tp.transpose(0, 1),
        "rank": rank.transpose(0, 1),
    }
