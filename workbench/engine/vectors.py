"""Function vectors' traced forward (Todd et al. 2024): one nnsight trace, local or on NDIF (one request).

`fv_trace` runs, in ONE forward of a left-padded batch (so every row's last position is the batch's last
column), any of:
- the mean output of every attention head at the last position over the clean in-context prompts (rows
  0..C-1): each head's slice of the output projection's input (the `head` site), z [L, H, d_head];
- the causal indirect effect of every head: each shuffled-label prompt (rows C..C+N-1) once unedited and once
  per (layer, head) with that head's output at the last position replaced by its clean mean, which is read
  from the clean rows of the same batch at that very layer (they are never edited); p(answer) of every row;
- each head's mean output projected into the residual stream (its slice of the output projection:
  o_proj(z in the head's slot) - o_proj(0), so a bias is not counted once per head), decoded through the
  final norm and the unembedding (top-k tokens per head);
- the function vector: the sum of the chosen heads' projected means (the top `select` heads by mean
  indirect effect, or the given heads), and its decoding.

Every read, edit and projection is torch on envoys and plain tensors (the body runs on NDIF as written);
only small arrays are saved. Locally the patched rows are better served by the replay engine
(`ops.vectors` uses it); this body is then run with clean rows only, or with given means and no prompts
at all (a one-token forward that only hosts the projections).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..model import Model
from .kernels import decode, read, slot
from .padding import left_pad, pad_id


# ------------------------------------------------------------------ pure torch helpers (shipped by value)
def head_blocks(means: torch.Tensor) -> torch.Tensor:
    """[H, d] per-head vectors -> [H + 1, H * d]: row h holds head h's vector in its slot, the last row zeros."""
    n_heads, d_head = means.shape
    blocks = torch.zeros(n_heads + 1, n_heads, d_head, dtype=means.dtype)
    blocks[torch.arange(n_heads), torch.arange(n_heads)] = means
    return blocks.reshape(n_heads + 1, n_heads * d_head)


def project_heads(o_proj: Any, means: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Each head's vector through its slice of the output projection, [H, d_model] float32: o_proj(blocks)
    minus o_proj(0), the bias (GPT-2, NeoX) counted by none of them. `o_proj` is the module or its envoy."""
    y = o_proj(head_blocks(means.float()).to(dtype)).float()
    return y[:-1] - y[-1:]


def top_tokens(
    norm: Any,
    unembed: Any,
    divisor: float,
    softcap: float | None,
    h: torch.Tensor,
    k: int,
    dtype: torch.dtype,
):
    """(ids [n, k], probs [n, k]) of residual vectors `h` [n, D] decoded through the final norm and unembedding."""
    logits = decode(norm, unembed, divisor, softcap, h.to(dtype)).float()
    top = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    return top.indices, top.values


def rank_heads(effect: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices (layer * H + head) of the k largest entries of `effect` [L, H], ties in index order."""
    return torch.sort(effect.reshape(-1), descending=True, stable=True).indices[:k]


# ------------------------------------------------------------------ the trace
def fv_trace(
    model: Model,
    clean: Sequence[torch.Tensor] | None,
    *,
    means: torch.Tensor | None = None,
    corrupt: Sequence[torch.Tensor] | None = None,
    targets: Sequence[int] | None = None,
    project: bool = True,
    head_k: int = 10,
    select: int | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
    vector_k: int = 100,
) -> dict[str, torch.Tensor | None]:
    """One traced forward (see the module doc). Returns float32/int64 CPU tensors (None where not asked):

    z_sum [L, H, d_head] (the clean rows' sum; None when `means` is given), clean_p / corrupt_p [N] and
    patched [N, L, H] (p(answer) with each head patched; with `corrupt`, whose example i's clean prompt is
    clean row i), head_out [L, H, D], head_ids / head_probs [L, H, head_k] (with `project`), chosen [k]
    (flat head indices), chosen_out [k, D] their outputs, vector [D] their sum, vector_ids / vector_probs
    [vector_k] its decoding (with `select` or `heads`)."""
    L, H = model.n_layers, model.n_heads
    refs = [model.site_ref("head", layer) for layer in range(L)]
    envoys = [model.envoy(ref) for ref in refs]
    layouts = [ref.layout for ref in refs]
    norm, unembed, divisor, softcap = model.decoder()
    rows = list(clean or [])
    n_clean = len(rows)
    n = len(corrupt or [])
    if n:
        assert targets is not None and len(targets) == n and n_clean == n, (
            "corrupt prompts need their clean rows"
        )
        rows += list(corrupt) + [c for c in corrupt for _ in range(L * H)]
    if not rows:  # nothing to read: a one-token forward hosts the projections
        rows = [torch.tensor([[pad_id(model.tokenizer)]])]
    batch = left_pad(rows, pad_id(model.tokenizer))
    ar = torch.arange(H)
    # the patched rows of layer l: example e's (l, h) run sits at 2N + (e * L + l) * H + h
    patch_rows = [
        (2 * n + (torch.arange(n)[:, None] * L + layer) * H + ar[None, :]).reshape(-1) for layer in range(L)
    ]
    patch_heads = ar.repeat(n)
    t_all = None
    if n:
        t = torch.tensor(list(targets), dtype=torch.long)
        t_all = torch.cat([t, t, t.repeat_interleave(L * H)])
    chosen_given = None
    if heads is not None:
        chosen_given = torch.tensor([layer * H + h for layer, h in heads], dtype=torch.long)
    given = None if means is None else means.float()
    nn = model.nn
    # Saved values are bound to plain names in the body: that is what comes back (also from NDIF).
    z_sum = clean_p = corrupt_p = patched = head_out = head_ids = head_probs = None
    chosen = chosen_out = vector = vector_ids = vector_probs = None
    with (
        torch.no_grad(),
        nn.trace(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            logits_to_keep=1,
            **model.trace_options(),
        ),
    ):
        sums = []
        dtype = torch.float32
        for layer in range(L):
            x = slot(read(envoys[layer], True), layouts[layer])  # [B, T, H, d]: the heads' outputs
            dtype = x.dtype
            if n_clean:
                s = x[:n_clean, -1].float().sum(0)  # [H, d]
                sums.append(s)
                if n:  # this layer's clean mean, into every example's (layer, h) run at the last position
                    mean = (s / n_clean).to(x.dtype)
                    x[patch_rows[layer], -1, patch_heads] = mean[patch_heads]
        if n_clean:
            z_all = torch.stack(sums)  # [L, H, d]
            z_sum = z_all.save()
            z_mean = z_all / n_clean
        else:
            z_mean = given
        if n:
            logits = nn.output.logits[:, -1].float()
            p = torch.exp(logits.gather(1, t_all[:, None])[:, 0] - torch.logsumexp(logits, dim=-1))
            clean_p = p[:n].save()
            corrupt_p = p[n : 2 * n].save()
            patched_all = p[2 * n :].reshape(n, L, H)
            patched = patched_all.save()
        if project or select is not None or heads is not None:
            outs = torch.stack([project_heads(envoys[layer], z_mean[layer], dtype) for layer in range(L)])
            if project:
                ids_, probs_ = [], []
                for layer in range(L):
                    i_, p_ = top_tokens(norm, unembed, divisor, softcap, outs[layer], head_k, dtype)
                    ids_.append(i_)
                    probs_.append(p_)
                head_out = outs.save()
                head_ids = torch.stack(ids_).save()
                head_probs = torch.stack(probs_).save()
            if select is not None:
                effect = (patched_all - p[n : 2 * n][:, None, None]).mean(0)
                picked = rank_heads(effect, select)
            else:
                picked = chosen_given
            if picked is not None:
                parts = outs.reshape(L * H, -1)[picked]  # [k, D]: the chosen heads' outputs
                vec = parts.sum(0)
                v_ids, v_probs = top_tokens(norm, unembed, divisor, softcap, vec[None], vector_k, dtype)
                chosen = picked.save()
                chosen_out = parts.save()
                vector = vec.save()
                vector_ids = v_ids[0].save()
                vector_probs = v_probs[0].save()
    out = dict(
        z_sum=z_sum,
        clean_p=clean_p,
        corrupt_p=corrupt_p,
        patched=patched,
        head_out=head_out,
        head_ids=head_ids,
        head_probs=head_probs,
        chosen=chosen,
        chosen_out=chosen_out,
        vector=vector,
        vector_ids=vector_ids,
        vector_probs=vector_probs,
    )
    return {k: None if v is None else v.detach().cpu() for k, v in out.items()}


def add_trace(
    model: Model,
    prompts: Sequence[torch.Tensor],
    targets: Sequence[int],
    layers: Sequence[int],
    vector: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot prompts with `vector` added to the hidden state after block l (resid_post[l]) at the last
    position, for every l in `layers`, in one traced forward: (p(answer) [1 + len(layers), N], top-1 id
    [1 + len(layers), N]); row 0 is the unedited run. The vector travels once (not once per row)."""
    n, k = len(prompts), len(layers)
    batch = left_pad(list(prompts) * (k + 1), pad_id(model.tokenizer))
    refs = [model.site_ref("resid_post", layer) for layer in layers]
    envoys = [model.envoy(ref) for ref in refs]
    order = sorted(range(k), key=lambda i: layers[i])  # visit the blocks in forward order
    t = torch.tensor(list(targets), dtype=torch.long).repeat(k + 1)
    vec = vector.float()
    nn = model.nn
    with (
        torch.no_grad(),
        nn.trace(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            logits_to_keep=1,
            **model.trace_options(),
        ),
    ):
        for i in order:
            x = read(envoys[i], False)  # [B, T, D]
            x[(i + 1) * n : (i + 2) * n, -1] += vec.to(x.dtype)
        logits = nn.output.logits[:, -1].float()
        p = torch.exp(logits.gather(1, t[:, None])[:, 0] - torch.logsumexp(logits, dim=-1))
        probs = p.reshape(k + 1, n).save()
        top1 = logits.argmax(dim=-1).reshape(k + 1, n).save()
    return probs.detach().cpu(), top1.detach().cpu()
