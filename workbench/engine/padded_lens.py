"""The logit lens of many examples per forward: a metric of the lens logits at chosen positions of every
example, in left-padded batches (attention mask and explicit position ids, so every example sees exactly
the positions it has alone: no silent shift, nnsight issue #672).

Two implementations of the same numbers: plain forward hooks for a local model (`fast_lens.enabled`), and
one nnsight trace (remote models: one request; also the fallback). Both read resid_post of every layer at
the chosen (row, column) cells only, then decode those rows through the final norm and unembedding a layer
at a time and apply each example's metric to its own rows (`lens_values`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..model import Model, _get_path
from .fast import first
from .kernels import decode, read, translated
from .onednn import onednn_linears
from .padding import Padded
from .threads import mine

# One example's rows: (start, stop) in the gathered rows, its bound metric, and whether the metric needs the
# "clean" logits (then it is called row by row with that position's final-layer logits as the clean ones).
Segment = tuple[int, int]


def lens_values(
    norm: Any,
    unembed: Any,
    divisor: float,
    softcap: float | None,
    hs: list[torch.Tensor],
    segments: list[Segment],
    metrics: list[Any],
    per_row: list[bool],
) -> torch.Tensor:
    """[L, R]: each example's metric of the lens logits of its rows (`hs[l]` [R, D] the resid_post rows of
    layer l). A metric is called on one example's rows [P, V] (the clean logits it gets: the model's own
    output at its first row), or row by row with that row's final-layer logits when `per_row`. Pure torch on
    the decoder modules: it runs inside a trace body too."""
    final = decode(norm, unembed, divisor, softcap, hs[-1]).float()  # [R, V]: the model's own output
    out = []
    for layer in range(len(hs)):
        logits = final if layer == len(hs) - 1 else decode(norm, unembed, divisor, softcap, hs[layer]).float()
        parts = []
        for (a, b), metric, row in zip(segments, metrics, per_row, strict=True):
            if row:
                for r in range(a, b):
                    parts.append(metric(logits[r : r + 1].clone(), final[r].clone()).float().reshape(-1))
            else:  # the metric may edit its inputs: it gets copies
                parts.append(metric(logits[a:b].clone(), final[a].clone()).float().reshape(-1))
        out.append(torch.cat(parts))
    return torch.stack(out)


class _Stop(Exception):
    """Ends the forward after the last block."""


def _resid_rows(model: Model, batch: Padded, rows: torch.Tensor, cols: torch.Tensor) -> list[torch.Tensor]:
    """resid_post of every layer at the cells (rows[r], cols[r]) of the padded batch: L tensors [R, D]."""
    blocks = _get_path(model.hf, model.arch.layers)
    outs: list[torch.Tensor] = [torch.empty(0)] * model.n_layers
    handles = []

    def grab(j: int):
        def hook(_mod: Any, _args: Any, out: Any) -> None:
            outs[j] = first(out)[rows, cols]  # advanced indexing: a copy

        return hook

    def stop(_mod: Any, _args: Any, _out: Any) -> None:
        raise _Stop  # the model's own final norm and unembedding are not needed

    try:
        for j, block in enumerate(blocks):
            handles.append(block.register_forward_hook(mine(grab(j))))
        handles.append(blocks[-1].register_forward_hook(mine(stop)))
        model.hf(**batch.inputs(), logits_to_keep=1)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return outs


def local(
    model: Model,
    batch: Padded,
    rows: torch.Tensor,
    cols: torch.Tensor,
    segments: list[Segment],
    metrics: Sequence[Any],
    per_row: Sequence[bool],
    translators: Any = None,
) -> torch.Tensor:
    """`lens_values` of a local model from a hooked forward (no trace)."""
    hf = model.hf
    norm, unembed = _get_path(hf, model.arch.final_norm), _get_path(hf, model.arch.unembed)
    with torch.no_grad(), model.lock, onednn_linears(model):
        hs = translated(_resid_rows(model, batch, rows, cols), translators)
        return lens_values(
            norm,
            unembed,
            model.logit_divisor,
            model.logit_softcap,
            hs,
            segments,
            list(metrics),
            list(per_row),
        )


def traced(
    model: Model,
    batch: Padded,
    rows: torch.Tensor,
    cols: torch.Tensor,
    segments: list[Segment],
    metrics: Sequence[Any],
    per_row: Sequence[bool],
    translators: Any = None,
) -> torch.Tensor:
    """`lens_values` from one nnsight trace over the padded batch (a remote model: one request); only the
    [L, R] metric values are saved. A remote model with a tuned lens: two requests (`_tuned_remote`)."""
    post_envoys = [model.envoy(model.site_ref("resid_post", layer)) for layer in range(model.n_layers)]
    norm, unembed, divisor, softcap = model.decoder()
    metrics, per_row = list(metrics), list(per_row)  # plain lists: the body travels to NDIF by value
    if model.remote and translators is not None:
        return _tuned_remote(model, batch, rows, cols, segments, metrics, per_row, translators)
    nn = model.nn
    # Saved values must be bound to plain names in the body: that is what comes back (also from NDIF).
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
        hs = translated([read(envoy, False)[rows, cols] for envoy in post_envoys], translators)
        values = lens_values(norm, unembed, divisor, softcap, hs, segments, metrics, per_row).save()
    return values.detach()


def _tuned_remote(
    model: Model,
    batch: Padded,
    rows: torch.Tensor,
    cols: torch.Tensor,
    segments: list[Segment],
    metrics: list[Any],
    per_row: list[bool],
    translators: Any,
) -> torch.Tensor:
    """`lens_values` through a tuned lens on NDIF in two requests, the translators never sent (L-1 matrices of
    D x D; GBs for a large model): request 1 reads resid_post of every layer at the chosen cells [L, R, D],
    the translators apply here, request 2 sends the translated rows and the server decodes them and applies
    the metrics (a session with no trace: the final norm and unembedding called on the rows), returning the
    [L, R] values. One request cannot: the translation sits between the server's forward and its read-out."""
    post_envoys = [model.envoy(model.site_ref("resid_post", layer)) for layer in range(model.n_layers)]
    norm, unembed, divisor, softcap = model.decoder()
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
        states = torch.stack([read(envoy, False)[rows, cols] for envoy in post_envoys]).save()  # request 1
    hs = [h.contiguous() for h in translated(list(states.detach()), translators)]
    with torch.no_grad(), nn.session(**model.trace_options()):  # request 2: decode next to the weights
        values = lens_values(norm, unembed, divisor, softcap, hs, segments, metrics, per_row).save()
    return values.detach()
