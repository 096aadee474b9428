"""Patchscopes (Ghandeharioun et al. 2024): decode a hidden state by patching it into an inspection prompt.

The hidden state resid_post[l] at each source (layer, position) of the prompt is written into the target
prompt's run at `target_position` of resid_post[l] (or of resid_post[target_layer]), and the target run's
next-token distribution at its last position is read: what the model itself "says" that state is. The default
target prompt is the paper's identity prompt ("cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?"), which asks the
model to repeat whatever stands at "?".

Engine: one `collect` of the source states, then `traced.run_rows` over the target prompt with one "set" edit
per source state. Locally that is the replay engine: every run starts at the target layer from the cached
target run (nothing below it changes) and only positions from `target_position` on are computed; otherwise
(a family the replay does not serve) one nnsight trace per chunk of runs. A remote model makes ONE NDIF
request (`_remote_session`): an nnsight session holding the source trace (its states stay on the server), the
patched target runs with the unpatched target prompt as their first row, and the patched generations;
`.prob(tok)` later is one more request for every token asked at once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import codegen
from ..engine.batching import Progress, check_cancel, rows_per_chunk
from ..engine.edits import Cell, Edit
from ..engine.kernels import read
from ..engine.traced import collect, run_rows
from ..errors import WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_int
from .patching import check_top_k
from .results import LensResult, _short
from .steering import _eos_ids

IDENTITY_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"


@dataclass(repr=False)
class PatchscopeResult(LensResult):
    """A LensResult over source (layer, position) states: row i is source layer `layer_ids[i]`, column j
    source position `positions[j]`; each cell the target prompt's next-token top-k with that state patched in.

    `.entropy` is the patched next-token distribution's entropy (nats). `.kl` is NaN: a patchscope reads the
    target prompt's next token, which has no "final layer" of the source run to compare with (a KL would
    need a second pass per state; the target prompt's own distribution is `.target_top_*`).
    `.prob(tok)` / `.rank(tok)` run the patched target runs again for that token (cached per token).
    With max_new_tokens > 0, `.generations[i][j]` is the greedy continuation of the patched target run (the
    patch applies to the prompt pass only)."""

    target_prompt: str = ""
    target_tokens: list[str] = field(default_factory=list)
    target_position: int = -1  # counted from 0 in the target prompt
    target_layer: int | None = None  # None: each state goes into its own layer
    layer_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    target_top_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    target_top_probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    generations: list[list[str]] | None = None

    def __repr__(self) -> str:
        o = self.options
        n_layers, n_tokens, k = self.top_ids.shape
        where = f"resid_post[{self.target_layer}]" if self.target_layer is not None else "the same layer"
        lines = [
            f"PatchscopeResult [{n_layers} layers x {n_tokens} positions], top_k={k}, prompt "
            f"{_short(o.get('prompt', ''))}",
            f"  each state patched into {where} of target {_short(self.target_prompt, 50)} at position "
            f"{self.target_position} ({self.target_tokens[self.target_position]!r}); next token read at its end",
        ]
        if n_layers and n_tokens:
            mid = n_layers // 2
            parts = []
            for r in sorted({0, mid, n_layers - 1}):
                tok, p = self.top_tokens[r][-1][0], float(self.top_probs[r, -1, 0])
                parts.append(f"L{self.layer_ids[r]} {tok!r} {p:.2f}")
            lines.append(f"  last position {self.tokens[-1]!r}: " + ", ".join(parts))
        if self.generations is not None:
            lines.append(
                f"  .generations [{n_layers}][{n_tokens}] (max_new_tokens={o.get('max_new_tokens')})"
            )
        return "\n".join(lines)


def _index_list(values: Any, what: str, check: Any, example: str) -> list[int]:
    if isinstance(values, int | np.integer) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, list | tuple | range | np.ndarray):
        raise WorkbenchError(
            f"{what}= takes a list of integers, e.g. {what}={example}; got {type(values).__name__}."
        )
    out = sorted({check(v) for v in values})
    if not out:
        raise WorkbenchError(f"{what}= is empty: give at least one, e.g. {what}={example}, or None for all.")
    return out


def _target_ids(model: Model, target_prompt: Any) -> torch.Tensor:
    if not isinstance(target_prompt, str) or not target_prompt.strip():
        raise WorkbenchError(
            f"target_prompt= must be a non-empty string (the prompt the state is patched into); got "
            f"{target_prompt!r:.40}. The default identity prompt is {IDENTITY_PROMPT!r}."
        )
    return model.to_tokens(target_prompt, what="target prompt")


def _target_position(target_position: Any, n: int, tokens: list[str]) -> int:
    pos = as_int(target_position, "target_position")
    if not -n <= pos < n:
        raise WorkbenchError(
            f"target_position={pos} is outside the target prompt, which has {n} tokens {tokens!r:.120}: give "
            f"a position in {-n}..{n - 1} (negative counts from the end; -1, the default, is its last token), "
            "or lengthen the target prompt."
        )
    return pos % n


def entropy_metric(logits: torch.Tensor, _clean: torch.Tensor) -> torch.Tensor:
    """The next-token entropy (nats) of each run: the metric `run_rows` returns for a patchscope."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _token_metrics(tid: int) -> tuple[Any, Any]:
    def prob(logits: torch.Tensor, _clean: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=-1)[:, tid]

    def rank(logits: torch.Tensor, _clean: torch.Tensor) -> torch.Tensor:
        return (logits > logits[:, tid : tid + 1]).sum(-1).float()

    return prob, rank


def source_grid(model: Model, layers: Any, positions: Any, n_tokens: int) -> tuple[list[int], list[int]]:
    """The source states' layers and positions (every one when None), checked: a decoding op's grid."""
    layer_ids = (
        list(range(model.n_layers))
        if layers is None
        else _index_list(layers, "layers", model.check_layer, "[0, 5, 10]")
    )
    pos_ids = (
        list(range(n_tokens))
        if positions is None
        else _index_list(positions, "positions", lambda p: model.check_position(p, n_tokens), "[-1]")
    )
    return layer_ids, pos_ids


def patchscope(
    model: Model,
    prompt: str,
    target_prompt: str = IDENTITY_PROMPT,
    target_position: int = -1,
    target_layer: int | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    top_k: int = 5,
    max_new_tokens: int = 0,
    *,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> PatchscopeResult:
    """Patch resid_post at each source (layer, position) of `prompt` into `target_prompt`'s run at
    `target_position` (negative counts from the end) of resid_post in the same layer, or of resid_post
    [target_layer] when given, and read the target run's next-token top-k at its last position.

    `layers=` / `positions=` restrict the grid (sorted; default all). With `max_new_tokens` > 0 each patched
    target run is also continued greedily (`.generations[i][j]`, stopping at EOS). A patchscope with the
    prompt itself as target at its last position reproduces the model's own next-token distribution; with
    `target_layer` the last layer and target_position=-1 it is the logit lens of each state."""
    top_k = check_top_k(model, top_k, lo=1)
    max_new_tokens = as_int(max_new_tokens, "max_new_tokens", lo=0, hi=1024)
    ids = model.to_tokens(prompt)
    target = _target_ids(model, target_prompt)
    n_target = target.shape[1]
    target_tokens = model.str_tokens(target)
    tpos = _target_position(target_position, n_target, target_tokens)
    tlayer = None if target_layer is None else model.check_layer(target_layer, "target_layer")
    n_tokens = ids.shape[1]
    layer_ids, pos_ids = source_grid(model, layers, positions, n_tokens)
    if max_new_tokens and n_target + max_new_tokens > model.n_ctx:
        raise WorkbenchError(
            f"The target prompt is {n_target} tokens and max_new_tokens={max_new_tokens}: more than this "
            f"model's context of {model.n_ctx}. Ask for at most {max(0, model.n_ctx - n_target)} new tokens."
        )
    check_cancel(cancel)
    places = [(lyr, t) for lyr in layer_ids for t in pos_ids]
    shape = (len(layer_ids), len(pos_ids))
    decode = model.tokenizer.decode
    generations = None
    if model.remote:  # ONE request: source states, patched runs, own top-k and generations in a session
        with model.lock, job_status(model, progress, cancel):
            got = _remote_session(
                model, ids, target, layer_ids, pos_ids, tpos, tlayer, top_k, [], max_new_tokens
            )
        top_ids_t, top_probs_t, entropy_t = got["top_ids"][1:], got["top_probs"][1:], got["entropy"][1:]
        base_top = (got["top_ids"][0].to(torch.int32).numpy(), got["top_probs"][0].float().numpy())
        flat = got.get("generations")
        rows: list[list[Edit]] = []
    else:
        with model.lock, job_status(model, progress, cancel):
            states = collect(model, ids, "resid_post", layer_ids)  # {layer: [1, T, D]}
            rows = [[Edit(Cell("resid_post", lyr if tlayer is None else tlayer, tpos), states[lyr][0, t].float())]
                    for lyr, t in places]  # fmt: skip
            out = run_rows(model, target, target, rows, entropy_metric, top_k=top_k, progress=progress,
                           cancel=cancel)  # fmt: skip
            flat = (
                patched_generations(model, target, rows, max_new_tokens, cancel) if max_new_tokens else None
            )
        assert out.top_ids is not None and out.top_probs is not None
        top_ids_t, top_probs_t, entropy_t = out.top_ids, out.top_probs, out.values
        base_top = _own_top(model, target, top_k, progress, cancel)
    if flat is not None:
        texts = [decode(g, skip_special_tokens=True) for g in flat]
        generations = [texts[i * len(pos_ids) : (i + 1) * len(pos_ids)] for i in range(len(layer_ids))]
    top_ids = top_ids_t.to(torch.int32).numpy().reshape(*shape, top_k)
    unique = np.unique(top_ids).tolist()
    lookup = dict(zip(unique, model.str_tokens(unique), strict=True))
    options = dict(
        op="patchscope",
        prompt=prompt,
        target_prompt=target_prompt,
        target_position=tpos,
        target_layer=tlayer,
        layers=layer_ids,
        positions=pos_ids,
        top_k=top_k,
        max_new_tokens=max_new_tokens,
    )

    def more(tids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        got = {}
        if model.remote:  # every token in one request (the states are recomputed next to the model)
            with model.lock, job_status(model, progress, cancel):
                res = _remote_session(model, ids, target, layer_ids, pos_ids, tpos, tlayer, 1, tids, 0)
            for i, tid in enumerate(tids):
                got[tid] = (
                    res["token_p"][1:, i].float().numpy().reshape(shape).astype(np.float32),
                    res["token_rank"][1:, i].numpy().reshape(shape).astype(np.int32),
                )
            return got
        with model.lock, job_status(model, progress, cancel):
            for tid in tids:
                prob, rank = _token_metrics(tid)
                p = run_rows(model, target, target, rows, prob, cancel=cancel).values
                r = run_rows(model, target, target, rows, rank, cancel=cancel).values
                got[tid] = (
                    p.float().numpy().reshape(shape).astype(np.float32),
                    r.numpy().reshape(shape).astype(np.int32),
                )
        return got

    if progress is not None:
        progress(1.0, "patchscope done")
    return PatchscopeResult(
        tokens=[model.str_tokens(ids)[t] for t in pos_ids],
        top_ids=top_ids,
        top_probs=top_probs_t.float().numpy().reshape(*shape, top_k),
        top_tokens=[[[lookup[i] for i in cell] for cell in row] for row in top_ids.tolist()],
        entropy=entropy_t.float().numpy().reshape(shape),
        kl=np.full(shape, np.nan, np.float32),
        options=options,
        _token_stats={},
        _more=more,
        _token_id=model.token_id,
        _code=lambda: codegen.patchscope_code(model, options),
        target_prompt=target_prompt,
        target_tokens=target_tokens,
        target_position=tpos,
        target_layer=tlayer,
        layer_ids=layer_ids,
        positions=pos_ids,
        target_top_ids=base_top[0],
        target_top_probs=base_top[1],
        generations=generations,
    )


def _own_top(
    model: Model, target: torch.Tensor, top_k: int, progress: Progress, cancel: threading.Event | None
) -> tuple[np.ndarray, np.ndarray]:
    """The target prompt's own (unpatched) next-token top-k: one forward of the target prompt."""
    nn = model.nn  # the body must not reference the workbench Model (it ships to NDIF)
    with (
        model.lock,
        job_status(model, progress, cancel),
        torch.no_grad(),
        nn.trace(target, logits_to_keep=1, **model.trace_options()),
    ):
        top = torch.softmax(nn.output.logits[0, -1].float(), -1).topk(top_k)
        ids_ = top.indices.save()
        probs_ = top.values.save()
    return ids_.to(torch.int32).numpy(), probs_.float().numpy()


def patched_generations(
    model: Model,
    target: torch.Tensor,
    rows: list[list[Edit]],
    max_new_tokens: int,
    cancel: threading.Event | None,
) -> list[list[int]]:
    """Greedy continuation of the target prompt for each row (one resid_post set edit each), the edit applied
    to the prompt pass only: nnsight generation over a batch of copies of the target prompt (one request
    remotely; chunks that fit locally). Each list ends with EOS when the model stopped there.

    As in `steering._generate`, generation runs exactly `max_new_tokens` steps (EOS suppressed) while each
    step's own greedy pick (the raw logits' argmax) is recorded, and each row is cut where that pick was EOS."""
    n_target = target.shape[1]
    size = len(rows) if model.remote else rows_per_chunk(model, n_target + max_new_tokens)
    eos = _eos_ids(model)
    outs: list[list[int]] = []
    for lo in range(0, len(rows), max(1, size)):
        check_cancel(cancel)
        part = rows[lo : lo + size]
        by_layer: dict[int, tuple[list[int], list[torch.Tensor], int]] = {}
        for i, row in enumerate(part):
            (e,) = row
            got = by_layer.setdefault(e.cell.layer, ([], [], e.cell.position))
            got[0].append(i)
            got[1].append(e.tensor())
        steps = []  # plain values for the body (it travels to NDIF by value)
        for layer in sorted(by_layer):
            idx, vals, pos = by_layer[layer]
            ref = model.site_ref("resid_post", layer)
            steps.append((model.envoy(ref), torch.tensor(idx), torch.stack(vals), pos))
        batch = target.repeat(len(part), 1)
        nn = model.nn
        with (
            torch.no_grad(),
            nn.generate(
                batch,
                attention_mask=torch.ones_like(batch),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                **model.trace_options(),
            ) as tracer,
        ):
            picks = []
            for step in tracer.iter[:max_new_tokens]:
                if step == 0:  # the prompt pass: the patch; later steps read the patched keys and values
                    for envoy, idx, vals, pos in steps:
                        h = read(envoy, False)
                        h[idx, pos] = vals.to(h.dtype)
                picks.append(nn.output.logits[:, -1].argmax(-1))
            greedy = torch.stack(picks, dim=1).save()  # [n, max_new_tokens]
            generated = tracer.result.save()
        outs.extend(_cut_at_eos(generated, greedy, n_target, eos))
    return outs


def _cut_at_eos(
    generated: torch.Tensor, greedy: torch.Tensor, n_target: int, eos: list[int]
) -> list[list[int]]:
    """Each row's new tokens, cut after the first step whose own greedy pick (`greedy` [n, steps]) was EOS."""
    outs = []
    new = generated[:, n_target:].tolist()
    for r, row_picks in enumerate(greedy.tolist()):
        tokens = new[r]
        for i, pick in enumerate(row_picks):
            if pick in eos:
                tokens = tokens[:i] + [pick]
                break
        outs.append(tokens)
    return outs


def _remote_session(
    model: Model,
    ids: torch.Tensor,
    target: torch.Tensor,
    layer_ids: list[int],
    pos_ids: list[int],
    tpos: int,
    tlayer: int | None,
    top_k: int,
    token_ids: list[int],
    max_new_tokens: int,
) -> dict[str, Any]:
    """A remote patchscope in ONE NDIF request: an nnsight session holding the source trace (its resid_post
    states stay on the server), the patched target runs (row 0 the target prompt unpatched: its own top-k;
    row 1 + i * P + j the state of source layer i, position j), and with `max_new_tokens` the patched greedy
    generations. Returns top_ids / top_probs [1 + n, k], entropy [1 + n], the followed tokens' probability
    and rank token_p / token_rank [1 + n, m], and "generations" (the new token ids of each run, cut at EOS)."""
    nn = model.nn
    d = model.d_model
    n_pos = len(pos_ids)
    n_runs = len(layer_ids) * n_pos
    sources = [model.envoy(model.site_ref("resid_post", lyr)) for lyr in layer_ids]
    pos = torch.tensor(pos_ids, dtype=torch.long)
    # where each target layer's states go: (envoy, source layer indices, target batch rows), in forward order
    groups = [[i] for i in range(len(layer_ids))] if tlayer is None else [list(range(len(layer_ids)))]
    dests = []
    for which in groups:
        layer = layer_ids[which[0]] if tlayer is None else tlayer
        runs = torch.tensor([i * n_pos + j for i in which for j in range(n_pos)], dtype=torch.long)
        dests.append((model.envoy(model.site_ref("resid_post", layer)), torch.tensor(which), runs))
    batch = target.repeat(1 + n_runs, 1)
    gen_batch = target.repeat(n_runs, 1)
    tid = torch.tensor(token_ids, dtype=torch.long)
    inner = {k: v for k, v in model.trace_options().items() if k != "remote"}  # the session is the request
    # The body references plain values only (envoys, tensors, lists): it travels to NDIF by value.
    with torch.no_grad(), nn.session(**model.trace_options()):
        with nn.trace(ids, logits_to_keep=1, **inner):
            states = torch.stack(
                [read(envoy, False)[0, pos] for envoy in sources]
            )  # [layers, P, D]: stays there
        with nn.trace(batch, logits_to_keep=1, **inner):
            for envoy, which, runs in dests:
                h = read(envoy, False)
                h[runs + 1, tpos] = states[which].reshape(-1, d).to(h.dtype)
            logits = nn.output.logits[:, -1].float()
            probs = torch.softmax(logits, dim=-1)
            top = probs.topk(top_k, dim=-1)
            top_ids = top.indices.save()
            top_probs = top.values.save()
            entropy = entropy_metric(logits.clone(), logits[0].clone()).save()
            token_p = probs[:, tid].save()
            token_rank = (logits.unsqueeze(1) > logits[:, tid].unsqueeze(-1)).sum(-1).save()
        if max_new_tokens:
            with nn.generate(gen_batch, attention_mask=torch.ones_like(gen_batch), max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens, do_sample=False, **inner) as tracer:  # fmt: skip
                picks = []
                for step in tracer.iter[:max_new_tokens]:
                    if step == 0:  # the prompt pass: the patch; later steps read the patched keys and values
                        for envoy, which, runs in dests:
                            h = read(envoy, False)
                            h[runs, tpos] = states[which].reshape(-1, d).to(h.dtype)
                    picks.append(nn.output.logits[:, -1].argmax(-1))
                greedy = torch.stack(picks, dim=1).save()  # [n, max_new_tokens]
                generated = tracer.result.save()
    out: dict[str, Any] = dict(top_ids=top_ids, top_probs=top_probs, entropy=entropy, token_p=token_p,
                               token_rank=token_rank)  # fmt: skip
    if max_new_tokens:
        out["generations"] = _cut_at_eos(generated, greedy, target.shape[1], _eos_ids(model))
    return out
