"""Pure torch functions called inside trace bodies.

Trace bodies may touch only nnsight envoys, tensors, plain Python data and these functions: that keeps
them runnable on NDIF, where this module is shipped by value (it imports nothing from workbench).
A cell is a plain tuple (row, position or None, head or None).
"""

from __future__ import annotations

from typing import Any

import torch


def read(envoy: Any, use_input: bool) -> torch.Tensor:
    """The live site tensor: the module's first input, or its output (first element of a tuple output)."""
    value = envoy.input if use_input else envoy.output
    if isinstance(value, tuple):
        value = value[0]
    return value


def heads_view(x: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    """[B, T, H * d_head] -> [B, T, H, d_head], a view (edits go through)."""
    return x.view(x.shape[0], x.shape[1], n_heads, d_head)


def slot(x: torch.Tensor, layout: tuple | None) -> torch.Tensor:
    """The site's view of a module tensor [B, T, W] (edits go through): the whole tensor, or its heads
    [B, T, n, d] at an offset ("heads": fused q|k|v or a plain projection) or per head ("interleaved")."""
    if layout is None:
        return x
    kind, at, n, d = layout
    if kind == "heads":
        return x[..., at : at + n * d].view(x.shape[0], x.shape[1], n, d)
    return x.view(x.shape[0], x.shape[1], n, 3 * d)[..., at * d : (at + 1) * d]


def _index(row: int, position: int | None, head: int | None) -> tuple:
    index: tuple = (row, slice(None) if position is None else position)
    return index if head is None else index + (head,)


def apply_edits(x: torch.Tensor, edits: list[tuple], src_row: int, mean_row: int) -> None:
    """Edit rows of a site view `x` in place, the one dispatch on an edit's kind. Each edit is
    (row, position or None, head or None, kind, tensor or None); source copies from `src_row`, mean is
    `mean_row`'s mean over positions, set writes the tensor, add adds it."""
    for row, position, head, kind, value in edits:
        index = _index(row, position, head)
        if kind == "source":
            x[index] = x[_index(src_row, position, head)]
        elif kind == "zero":
            x[index] = 0.0
        elif kind == "mean":
            mean = x[mean_row].mean(dim=0)
            x[index] = mean[head] if head is not None else mean
        elif kind == "set":
            x[index] = value.to(x.dtype)
        else:  # add
            x[index] = x[index] + value.to(x.dtype)


def edit(
    x: torch.Tensor,
    cells: list[tuple[int, int | None, int | None]],
    mode: str,
    values: dict[int, torch.Tensor] | None,
) -> None:
    """`apply_edits` for cells that share one kind (copy from row 0, zero, mean of row 1, or given values)."""
    kind = {"copy": "source", "value": "set"}.get(mode, mode)
    apply_edits(x, [(r, p, h, kind, values[r] if values else None) for r, p, h in cells], 0, 1)


def edit_pattern(
    out: torch.Tensor, inputs: tuple[tuple, dict], edits: list[tuple], eager_fn: Any, src_row: int
) -> None:
    """Pattern edits: recompute each edited head's output [B, T, H, d] (the attention function's output,
    before the output projection) from the new probabilities and the row's own values."""
    value = inputs[0][3]  # [B, kv, T_k, d]
    probs = eager_pattern(inputs, eager_fn)  # [B, H, T_q, T_k]
    group = probs.shape[1] // value.shape[1]
    for row, position, head, kind, new in edits:
        own = probs[row, head] if position is None else probs[row, head, position]
        if kind == "source":
            p = probs[src_row, head] if position is None else probs[src_row, head, position]
        elif kind == "zero":
            p = torch.zeros_like(own)
        elif kind == "set":
            p = new.to(own.dtype).expand_as(own)
        else:  # add
            p = own + new.to(own.dtype)
        v = value[row, head // group]  # [T_k, d]
        if position is None:
            out[row, :, head] = p @ v
        else:
            out[row, position, head] = p @ v


def site_sums(prod: torch.Tensor, layout: tuple | None, n_heads: int) -> torch.Tensor:
    """A [T, W] product summed over each position's features ([T]), or per head ([T, n_heads], zero-padded
    when the site has fewer heads, as key-value heads do)."""
    if layout is None:
        return prod.sum(-1)
    per_head = slot(prod[None], layout)[0].sum(-1)  # [T, n]
    return torch.nn.functional.pad(per_head, (0, n_heads - per_head.shape[-1]))


def pattern_grad(grad_heads: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """d metric / d attention probabilities [H, T_q, T_k] of every query head, from the gradient at the heads'
    outputs [T_q, H, d] (output = probabilities @ values) and the values [kv, T_k, d] the heads read
    (grouped-query attention: query head h reads key-value head h // (H / kv))."""
    n_heads, n_kv = grad_heads.shape[1], value.shape[0]
    per_query_head = value.repeat_interleave(n_heads // n_kv, dim=0)  # [H, T_k, d]
    return torch.einsum("qhd,hkd->hqk", grad_heads, per_query_head.to(grad_heads.dtype))


def pattern_sums(prod: torch.Tensor) -> torch.Tensor:
    """A [H, T_q, T_k] product summed over the keys, per query position and head: [T_q, H]."""
    return prod.sum(-1).transpose(0, 1)


def copy_positions(
    x: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, heads: torch.Tensor | None
) -> None:
    """Vectorised copy from row 0: x[rows[i], pos[i] (, heads[i])] = x[0, pos[i] (, heads[i])]."""
    if heads is None:
        x[rows, pos] = x[0, pos]
    else:
        x[rows, pos, heads] = x[0, pos, heads]


def finish_logits(logits: torch.Tensor, divisor: float, softcap: float | None) -> torch.Tensor:
    """The unembedding's output -> the model's logits: divided by `divisor` (Granite's logits_scaling), then
    Gemma-2's soft cap (`Model.logit_divisor`, `Model.logit_softcap`)."""
    if divisor != 1.0:
        logits = logits / divisor
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def decode(
    norm: Any, unembed: Any, divisor: float, softcap: float | None, resid: torch.Tensor
) -> torch.Tensor:
    """Residual vectors -> logits through the final norm and unembedding (`Model.decoder()` gives the rest)."""
    return finish_logits(unembed(norm(resid)), divisor, softcap)


def translate(resid: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A tuned lens's affine translator of one layer: h + (h @ weight.T + bias) (zero weight and bias: h)."""
    return resid + torch.nn.functional.linear(resid, weight.to(resid.dtype), bias.to(resid.dtype))


def translated(resids: list[torch.Tensor], translators: Any) -> list[torch.Tensor]:
    """Every layer's resid rows through a tuned lens's translators ((weight [L-1, D, D], bias [L-1, D]) or
    None): layers 0..L-2 translated, the last layer as is (its translator is the identity)."""
    if translators is None:
        return resids
    weight, bias = translators
    out = [translate(resids[i], weight[i], bias[i]) for i in range(len(resids) - 1)]
    out.append(resids[-1])
    return out


def eager_pattern(inputs: tuple[tuple, dict], eager_fn: Any) -> torch.Tensor:
    """Attention probabilities from the inputs of a module's attention function, whatever implementation
    the model runs (SDPA gives no weights): recompute them with the family's own eager function."""
    args, kwargs = inputs
    module, query, key, value, mask = args[:5]
    if mask is None:  # SDPA's causal fast path passes no mask
        t_q, t_k = query.shape[-2], key.shape[-2]
        mask = torch.full((t_q, t_k), float("-inf"), dtype=query.dtype).triu(t_k - t_q + 1)[None, None]
    elif mask.dtype == torch.bool:  # SDPA's masks say where to attend (e.g. sliding windows); eager adds
        mask = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(query.dtype).min
        )
    kwargs = {k: v for k, v in kwargs.items() if k not in ("is_causal",)}
    _, weights = eager_fn(module, query, key, value, mask, **kwargs)
    return weights
