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


def edit(
    x: torch.Tensor,
    cells: list[tuple[int, int | None, int | None]],
    mode: str,
    values: dict[int, torch.Tensor] | None,
) -> None:
    """Edit rows of `x` in place. copy: from row 0; zero; mean: row 1's mean over positions; value: given."""
    for row, position, head in cells:
        index: tuple = (row,)
        src: tuple = (0,)
        if position is not None:
            index += (position,)
            src += (position,)
        elif head is not None:
            index += (slice(None),)
            src += (slice(None),)
        if head is not None:
            index += (head,)
            src += (head,)
        if mode == "copy":
            x[index] = x[src]
        elif mode == "zero":
            x[index] = 0.0
        elif mode == "mean":
            mean = x[1].mean(dim=0)
            x[index] = mean[head] if head is not None else mean
        else:
            x[index] = values[row].to(x.dtype)


def copy_positions(
    x: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, heads: torch.Tensor | None
) -> None:
    """Vectorised copy from row 0: x[rows[i], pos[i] (, heads[i])] = x[0, pos[i] (, heads[i])]."""
    if heads is None:
        x[rows, pos] = x[0, pos]
    else:
        x[rows, pos, heads] = x[0, pos, heads]


def decode(norm: Any, unembed: Any, softcap: float | None, resid: torch.Tensor) -> torch.Tensor:
    """Residual vectors -> logits through the final norm and unembedding (and Gemma-2's soft cap)."""
    logits = unembed(norm(resid))
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def eager_pattern(inputs: tuple[tuple, dict], eager_fn: Any) -> torch.Tensor:
    """Attention probabilities from the inputs of a module's attention function, whatever implementation
    the model runs (SDPA gives no weights): recompute them with the family's own eager function."""
    args, kwargs = inputs
    module, query, key, value, mask = args[:5]
    if mask is None:  # SDPA's causal fast path passes no mask
        t_q, t_k = query.shape[-2], key.shape[-2]
        mask = torch.full((t_q, t_k), float("-inf"), dtype=query.dtype).triu(t_k - t_q + 1)[None, None]
    kwargs = {k: v for k, v in kwargs.items() if k not in ("is_causal",)}
    _, weights = eager_fn(module, query, key, value, mask, **kwargs)
    return weights
