"""Future Lens (Pal et al. 2023): the tokens after the next, anticipated from a single hidden state.

For each source (layer l, position t) of the prompt, resid_post[l] at t is transplanted into a *context*:
written over resid_post[l] at the context's last position on its prompt pass, and the model decodes
`n_future` tokens greedily from there. The first decoded token is that state's prediction for position t+1,
the second for t+2, and so on.

- method="fixed": the context is a fixed generic prompt, by default `DEFAULT_CONTEXT`
  ('Hello! Could you please tell me more about "', the paper's best hand-written prompt): its last token,
  the opening quote, is overwritten, so the model goes on to "tell more about" whatever the state encodes.
- method="learned": the context is a short soft prompt (`FutureLensPrompt`: k embedding vectors, the paper's
  best method) trained by `train_future_lens` so that, with a state transplanted at its last position, the
  model decodes the tokens that followed that state. Trained on the user's `texts=` or on the model's own
  greedy continuations of `SEED_PROMPTS`. Applying it writes the vectors over the embedding module's output
  of k placeholder tokens on the prompt pass (an edit like the transplant), so it runs locally and on NDIF.
  The paper trains one prompt per layer on GPT-J; here one prompt serves every layer (trained on states of
  all layers), which keeps training within minutes on a CPU.

Decoding ("greedy"): at each step the argmax of the next-token logits with EOS excluded, so exactly
`n_future` tokens come out (EOS never ends a row). `.top_ids` / `.top_probs` are the raw distribution
(softmax of the logits, EOS included) at each step; `.predicted` are the decoded tokens.

Accuracy (`.accuracy` [L, n_future]): for position t, the model's own continuation is the greedy (EOS
excluded) continuation of prompt[:t+1], run for n_future tokens; it may run past the prompt's end, and is
generated, never read from the prompt. accuracy[l, k-1] is the fraction of the chosen positions t whose
decoded token k (for t+k) from the state at (l, t) equals token k of that continuation.
`.bigram_baseline` [n_future]: the same fraction for the greedy continuation of the single token at t
alone (after BOS when the tokenizer adds one): what the token itself, without its context, predicts.

Engine: one `collect` of the source states; then per chunk of states one nnsight `generate` over a batch of
copies of the context (states grouped by layer, written on the prompt pass only); the own and single-token
continuations are one left-padded `generate` together. Locally chunks fit memory, and the context's first
n-1 positions (which no state changes) run once into a key/value cache that every row reuses, so each row
runs only the context's last position and its new tokens. Remotely a call is ONE NDIF request
(`_remote_session`): an nnsight session holding the source trace (its states stay on the server), the
transplanted decoding and the continuations, the whole context running in the request.
Training a learned prompt is local only (it needs gradients through the model).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import codegen
from ..engine.batching import Progress, check_cancel, rows_per_chunk
from ..engine.kernels import read
from ..engine.padding import left_pad, pad_id
from ..engine.traced import collect
from ..errors import WorkbenchError
from ..model import Model, require_local
from ..remote import job_status
from ..validate import as_int
from .patching import check_top_k
from .patchscope import source_grid
from .results import Figured, _code_of, _picklable, _short
from .steering import _eos_ids

DEFAULT_CONTEXT = 'Hello! Could you please tell me more about "'

# Openers for the model's own greedy generations (training data when no texts are given).
SEED_PROMPTS = [
    "The history of the city begins",
    "In a recent study, researchers found that",
    "Once upon a time, there was a",
    "The best way to learn a new language is",
    "Water is made of two elements:",
    "The president announced on Monday that",
    "To make a simple cake, you need",
    "The main causes of the war were",
    "My favourite book is",
    "Photosynthesis is the process by which",
    "The football match ended with",
    "Computers store information as",
    "The river flows through the valley and",
    "She opened the door and saw",
    "The capital of France is Paris, and the capital of Germany is",
    "Scientists believe that the universe",
]


def _check_n_future(n_future: Any) -> int:
    if isinstance(n_future, int | np.integer) and not isinstance(n_future, bool) and n_future < 1:
        raise WorkbenchError(
            f"n_future={n_future}: Future Lens decodes at least one token (the prediction for t+1); give "
            "n_future=1 or more, e.g. n_future=3 for t+1..t+3."
        )
    return as_int(n_future, "n_future", lo=1, hi=64)


# ---------------------------------------------------------------------------------------- the soft prompt


@dataclass(repr=False)
class FutureLensPrompt:
    """A learned Future Lens context: `vectors` float32 [k, d_model] written over the embedding output of
    `placeholder_ids` (k tokens) on the prompt pass; a state goes into its last position. Train with
    `wb.train_future_lens(model, ...)`; use as `wb.future_lens(model, prompt, method="learned",
    context=prompt_)`; `.save(path)` / `FutureLensPrompt.load(path)`."""

    vectors: torch.Tensor
    placeholder_ids: list[int]
    model_name: str
    d_model: int
    n_future: int
    layers: list[int]
    losses: list[float] = field(default_factory=list)  # training loss per step (mean CE over the future)
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __repr__(self) -> str:
        k = self.vectors.shape[0]
        loss = f", loss {self.losses[0]:.3f} -> {self.losses[-1]:.3f}" if self.losses else ""
        return (
            f"FutureLensPrompt [{k} soft tokens x d_model {self.d_model}] for {self.model_name}, trained for "
            f"n_future={self.n_future} on layers {_span(self.layers)}, {len(self.losses)} steps{loss} "
            f"({self.seconds:.0f} s)"
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        state = {k: v for k, v in self.__dict__.items()}
        state["vectors"] = self.vectors.detach().cpu().float()
        torch.save(state, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FutureLensPrompt:
        state = torch.load(Path(path), weights_only=False)
        return cls(**state)


def _span(layers: list[int]) -> str:
    if layers and layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}..{layers[-1]}"
    return str(layers)


def _model_name(model: Model) -> str:
    return str(
        getattr(model, "source", "") or getattr(model.config, "_name_or_path", "") or type(model.hf).__name__
    )


def _check_prompt_for(model: Model, p: FutureLensPrompt) -> None:
    if (
        p.d_model != model.d_model
        or p.vectors.shape[1] != model.d_model
        or _model_name(model) != p.model_name
    ):
        raise WorkbenchError(
            f"This FutureLensPrompt was trained for {p.model_name} (d_model {p.d_model}), not {_model_name(model)} "
            f"(d_model {model.d_model}): train one for this model with wb.train_future_lens(model)."
        )


def _embed_module(model: Model) -> torch.nn.Module:
    return model.module(model.site_ref("embed", 0))


def _block_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _training_sequences(
    model: Model, texts: Sequence[str] | None, gen_tokens: int, cancel: threading.Event | None
) -> list[torch.Tensor]:
    if texts is None:
        seeds = [model.to_tokens(s, what="seed prompt")[0] for s in SEED_PROMPTS]
        conts = _continuations(model, seeds, gen_tokens, cancel)
        return [torch.cat([s, torch.tensor(c, dtype=torch.long)]) for s, c in zip(seeds, conts, strict=True)]
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise WorkbenchError(
            "texts= takes a non-empty list of strings (the texts whose states and following tokens train the "
            "prompt), or None to train on the model's own greedy generations."
        )
    return [model.to_tokens(t, what="training text")[0] for t in texts]


def train_future_lens(
    model: Model,
    texts: Sequence[str] | None = None,
    *,
    n_future: int = 3,
    n_soft: int | None = None,
    init: str = DEFAULT_CONTEXT,
    layers: Sequence[int] | None = None,
    steps: int = 60,
    batch_size: int = 16,
    lr: float = 0.01,
    gen_tokens: int = 40,
    seed: int = 0,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> FutureLensPrompt:
    """Train a Future Lens soft prompt: k = `n_soft` embedding vectors (default: as many as `init` has tokens,
    initialised from `init`'s token embeddings, so training starts from the fixed prompt) such that, with a
    state resid_post[l] at position t transplanted into resid_post[l] at the prompt's last position, the model
    teacher-forced on the following tokens predicts tokens t+1..t+n_future (mean cross-entropy, Adam).

    Data: every position t of the training sequences with n_future tokens after it, at each of `layers`
    (default all). The sequences are `texts` (targets: the text's own next tokens) or, with texts=None, the
    model's greedy (EOS excluded) continuations of `SEED_PROMPTS` by `gen_tokens` tokens (so the targets
    are the model's own greedy continuation, what `.accuracy` compares with). Each step draws `batch_size`
    (sequence, position, layer) triples (seeded). Local models only. Measured with the defaults on
    SmolLM2-135M-Instruct (16 sequences of ~47 tokens, 30 layers, 60 steps of 16, 10 soft tokens): 456 s on
    two CPU cores shared with other jobs (load ~6), loss 5.09 -> ~3.0; fewer `steps` for a quicker prompt.
    On 8 held-out sentences (11 layers) it raised t+2 accuracy from 0.14 / 0.24 (fixed, layers 15 / 24) to
    0.32 / 0.33, against a bigram baseline of 0.06."""
    require_local(model, "Training a Future Lens prompt")
    n_future = _check_n_future(n_future)
    steps = as_int(steps, "steps", lo=1, hi=100_000)
    batch_size = as_int(batch_size, "batch_size", lo=1, hi=4096)
    gen_tokens = as_int(gen_tokens, "gen_tokens", lo=n_future + 1, hi=1024)
    if not isinstance(lr, int | float) or not lr > 0:
        raise WorkbenchError(f"lr={lr!r}: the learning rate must be a positive number, e.g. lr=0.01.")
    layer_ids = source_grid(model, layers, None, 1)[0]
    init_ids = model.to_tokens(init, what="init prompt")[0].tolist()
    k = len(init_ids) if n_soft is None else as_int(n_soft, "n_soft", lo=1, hi=256)
    if k > len(init_ids):
        init_ids = init_ids + [init_ids[-1]] * (k - len(init_ids))
    init_ids = init_ids[-k:]
    start = time.perf_counter()
    hf = model.hf
    with model.lock, job_status(model, progress, cancel):
        seqs = _training_sequences(model, texts, gen_tokens, cancel)
        examples = [(i, t) for i, s in enumerate(seqs) for t in range(len(s) - n_future)]
        if not examples:
            raise WorkbenchError(
                f"The training texts are too short: each needs more than n_future={n_future} tokens. Give "
                "longer texts, or texts=None to train on the model's own generations."
            )
        states = []  # per sequence: [n_layers_used, S, D]
        for s in seqs:
            check_cancel(cancel)
            got = collect(model, s[None], "resid_post", layer_ids)
            states.append(torch.stack([got[lyr][0].float() for lyr in layer_ids]))
        embed = _embed_module(model)
        with torch.no_grad():
            soft = embed(torch.tensor([init_ids])).float()[0].clone()
        soft.requires_grad_(True)
        opt = torch.optim.Adam([soft], lr=float(lr))
        gen = torch.Generator().manual_seed(int(seed))
        dtype = next(hf.parameters()).dtype
        blocks = [model.module(model.site_ref("resid_post", lyr)) for lyr in range(model.n_layers)]
        losses: list[float] = []
        flags = [p.requires_grad for p in hf.parameters()]
        for p in hf.parameters():
            p.requires_grad_(False)
        try:
            for step in range(steps):
                check_cancel(cancel)
                pick = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
                lpick = torch.randint(len(layer_ids), (batch_size,), generator=gen).tolist()
                rows = [examples[i] for i in pick]
                targets = torch.stack([seqs[i][t + 1 : t + 1 + n_future] for i, t in rows])  # [B, N]
                st = torch.stack([states[i][li, t] for (i, t), li in zip(rows, lpick, strict=True)])
                with torch.no_grad():
                    forced = embed(targets[:, :-1]).float() if n_future > 1 else None
                x = soft[None].expand(batch_size, -1, -1)
                if forced is not None:
                    x = torch.cat([x, forced], 1)
                handles = []
                for li, lyr in enumerate(layer_ids):
                    idx = [r for r, v in enumerate(lpick) if v == li]
                    if not idx:
                        continue

                    def hook(_m, _a, out, idx=idx, vals=st[idx]):
                        h = _block_output(out).clone()
                        h[torch.tensor(idx), k - 1] = vals.to(h.dtype)
                        return (h, *out[1:]) if isinstance(out, tuple) else h

                    handles.append(blocks[lyr].register_forward_hook(hook))
                try:
                    with torch.enable_grad():
                        logits = hf(inputs_embeds=x.to(dtype), use_cache=False).logits.float()
                        pred = logits[:, k - 1 : k - 1 + n_future]  # [B, N, V]
                        loss = torch.nn.functional.cross_entropy(
                            pred.reshape(-1, pred.shape[-1]), targets.reshape(-1)
                        )
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                finally:
                    for h in handles:
                        h.remove()
                losses.append(float(loss.detach()))
                if progress is not None:
                    progress(
                        (step + 1) / steps,
                        f"training the Future Lens prompt: step {step + 1}/{steps}, loss {losses[-1]:.3f}",
                    )
        finally:
            for p, f in zip(hf.parameters(), flags, strict=True):
                p.requires_grad_(f)
    return FutureLensPrompt(
        vectors=soft.detach().clone(),
        placeholder_ids=init_ids,
        model_name=_model_name(model),
        d_model=model.d_model,
        n_future=n_future,
        layers=layer_ids,
        losses=losses,
        options=dict(
            texts=None if texts is None else len(texts),
            n_soft=k,
            init=init,
            steps=steps,
            batch_size=batch_size,
            lr=float(lr),
            gen_tokens=gen_tokens,
            seed=int(seed),
        ),  # fmt: skip
        seconds=time.perf_counter() - start,
    )


def prompt_loss(
    model: Model,
    p: FutureLensPrompt,
    texts: Sequence[str] | None = None,
    gen_tokens: int = 40,
    layers: Sequence[int] | None = None,
) -> float:
    """The training objective of `p` (mean cross-entropy over all (sequence, position, layer) examples) on
    `texts` (or the model's own generations of `SEED_PROMPTS`), without training: for checking that training
    lowered it."""
    require_local(model, "prompt_loss")
    n = p.n_future
    k = p.vectors.shape[0]
    layer_ids = p.layers if layers is None else list(layers)
    hf = model.hf
    dtype = next(hf.parameters()).dtype
    with model.lock, torch.no_grad():
        seqs = _training_sequences(model, texts, gen_tokens, None)
        embed = _embed_module(model)
        total, count = 0.0, 0
        for s in seqs:
            got = collect(model, s[None], "resid_post", layer_ids)
            ts = list(range(len(s) - n))
            if not ts:
                continue
            targets = torch.stack([s[t + 1 : t + 1 + n] for t in ts])
            forced = embed(targets[:, :-1]).float() if n > 1 else None
            for lyr in layer_ids:
                vals = got[lyr][0, ts].float()

                def hook(_m, _a, out, vals=vals):
                    h = _block_output(out).clone()
                    h[:, k - 1] = vals.to(h.dtype)
                    return (h, *out[1:]) if isinstance(out, tuple) else h

                x = p.vectors[None].expand(len(ts), -1, -1).float()
                if forced is not None:
                    x = torch.cat([x, forced], 1)
                handle = model.module(model.site_ref("resid_post", lyr)).register_forward_hook(hook)
                try:
                    logits = hf(inputs_embeds=x.to(dtype), use_cache=False).logits.float()
                finally:
                    handle.remove()
                pred = logits[:, k - 1 : k - 1 + n]
                ce = torch.nn.functional.cross_entropy(
                    pred.reshape(-1, pred.shape[-1]), targets.reshape(-1), reduction="sum"
                )
                total += float(ce)
                count += targets.numel()
    return total / max(1, count)


# ------------------------------------------------------------------------------------------------ decoding


def _continuations(
    model: Model, prefixes: Sequence[torch.Tensor], n_new: int, cancel: threading.Event | None
) -> list[list[int]]:
    """Greedy (EOS excluded) continuation by `n_new` tokens of each prefix ([T_i] ids): one left-padded
    nnsight generate (explicit position ids), one request remotely; chunks that fit locally."""
    width = max(len(p) for p in prefixes) + n_new
    size = len(prefixes) if model.remote else rows_per_chunk(model, width)
    out: list[list[int]] = []
    for lo in range(0, len(prefixes), max(1, size)):
        check_cancel(cancel)
        padded = left_pad(list(prefixes[lo : lo + size]), pad_id(model.tokenizer))
        n_in = padded.input_ids.shape[1]
        with (
            torch.no_grad(),
            model.nn.generate(
                padded.input_ids,
                attention_mask=padded.attention_mask,
                max_new_tokens=n_new,
                min_new_tokens=n_new,  # EOS excluded: every row decodes n_new tokens
                do_sample=False,
                pad_token_id=pad_id(model.tokenizer),
                **model.trace_options(),
            ) as tracer,
        ):
            generated = tracer.result.save()
        out.extend(generated[:, n_in:].tolist())
    return out


def _transplanted(
    model: Model,
    context: torch.Tensor,
    soft: torch.Tensor | None,
    rows: list[tuple[int, torch.Tensor]],
    n_future: int,
    top_k: int,
    progress: Progress,
    cancel: threading.Event | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode n_future tokens from each (layer, state) transplanted into resid_post[layer] at the context's
    last position (and, for a learned context, `soft` over its embedding output), on the prompt pass only.
    Returns top_ids int32 [n, N, k], top_probs float32 [n, N, k] (raw softmax) and decoded ids [n, N]."""
    n_ctx = context.shape[1]
    prefix = _prefix_cache(model, context, soft)
    size = len(rows) if model.remote else rows_per_chunk(model, n_ctx + n_future)
    embed_envoy = None
    if soft is not None:
        ref = model.site_ref("embed", 0)
        embed_envoy = (model.envoy(ref), ref.use_input)
    ids_out, probs_out, dec_out = [], [], []
    nn = model.nn
    for lo in range(0, len(rows), max(1, size)):
        check_cancel(cancel)
        part = rows[lo : lo + size]
        by_layer: dict[int, tuple[list[int], list[torch.Tensor]]] = {}
        for i, (layer, state) in enumerate(part):
            got = by_layer.setdefault(layer, ([], []))
            got[0].append(i)
            got[1].append(state)
        steps = []  # plain values for the body (it travels to NDIF by value)
        for layer in sorted(by_layer):
            idx, vals = by_layer[layer]
            ref = model.site_ref("resid_post", layer)
            steps.append((model.envoy(ref), ref.use_input, torch.tensor(idx), torch.stack(vals)))
        batch = context.repeat(len(part), 1)
        extra = {}
        if prefix is not None:  # the context's shared positions once, not once per row
            extra["past_key_values"] = _repeat_cache(prefix, len(part))
        with (
            torch.no_grad(),
            nn.generate(
                batch,
                attention_mask=torch.ones_like(batch),
                **extra,
                max_new_tokens=n_future,
                min_new_tokens=n_future,  # EOS excluded
                do_sample=False,
                **model.trace_options(),
            ) as tracer,
        ):
            tops, vals_ = [], []
            for step in tracer.iter[:n_future]:
                if step == 0:  # the prompt pass: the transplant; later steps read its keys and values
                    if embed_envoy is not None:
                        e = read(embed_envoy[0], embed_envoy[1])
                        e[:, -e.shape[1] :] = soft[-e.shape[1] :].to(e.dtype)
                    for envoy, use_input, idx, vals in steps:
                        h = read(envoy, use_input)
                        h[idx, -1] = vals.to(h.dtype)  # the context's last position
                top = torch.softmax(nn.output.logits[:, -1].float(), -1).topk(top_k, dim=-1)
                tops.append(top.indices)
                vals_.append(top.values)
            top_ids = torch.stack(tops, 1).save()  # [n, N, k]
            top_probs = torch.stack(vals_, 1).save()
            generated = tracer.result.save()
        ids_out.append(top_ids.to(torch.int32))
        probs_out.append(top_probs.float())
        dec_out.append(generated[:, n_ctx:])
        if progress is not None:
            progress(
                min(1.0, (lo + len(part)) / len(rows)) * 0.9 + 0.05,
                "Future Lens: decoding transplanted states",
            )
    return (
        torch.cat(ids_out).numpy(),
        torch.cat(probs_out).numpy(),
        torch.cat(dec_out).numpy().astype(np.int64),
    )


def _remote_session(
    model: Model,
    ids: torch.Tensor,
    layer_ids: list[int],
    pos_ids: list[int],
    context: torch.Tensor,
    soft: torch.Tensor | None,
    n_future: int,
    top_k: int,
    prefixes: list[torch.Tensor],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]]]:
    """A remote Future Lens in ONE NDIF request: an nnsight session holding the source trace (its resid_post
    states stay on the server), the transplanted decoding (one generate over copies of the context, row
    i * P + j the state of source layer i at position j, as `_transplanted` does it) and the continuations
    of `prefixes` (one left-padded generate, as `_continuations`). Returns what those two return."""
    nn = model.nn
    d = model.d_model
    n_ctx, n_pos = context.shape[1], len(pos_ids)
    n_runs = len(layer_ids) * n_pos
    sources = [model.envoy(model.site_ref("resid_post", lyr)) for lyr in layer_ids]
    pos = torch.tensor(pos_ids, dtype=torch.long)
    dests = []  # per source layer (forward order): its envoy, its index in `states`, the rows it goes into
    for i, lyr in enumerate(layer_ids):
        ref = model.site_ref("resid_post", lyr)
        runs = torch.arange(i * n_pos, (i + 1) * n_pos)
        dests.append((model.envoy(ref), ref.use_input, i, runs))
    embed = None
    if soft is not None:
        ref = model.site_ref("embed", 0)
        embed = (model.envoy(ref), ref.use_input)
    batch = context.repeat(n_runs, 1)
    padded = left_pad(list(prefixes), pad_id(model.tokenizer))
    pad = pad_id(model.tokenizer)
    inner = {k: v for k, v in model.trace_options().items() if k != "remote"}  # the session is the request
    # The body references plain values only (envoys, tensors, lists): it travels to NDIF by value.
    with torch.no_grad(), nn.session(**model.trace_options()):
        with nn.trace(ids, logits_to_keep=1, **inner):
            states = torch.stack(
                [read(envoy, False)[0, pos] for envoy in sources]
            )  # [layers, P, D]: stays there
        with nn.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=n_future,
                         min_new_tokens=n_future, do_sample=False, **inner) as tracer:  # fmt: skip
            tops, vals_ = [], []
            for step in tracer.iter[:n_future]:
                if step == 0:  # the prompt pass: the transplant; later steps read its keys and values
                    if embed is not None:
                        e = read(embed[0], embed[1])
                        e[:, -e.shape[1] :] = soft[-e.shape[1] :].to(e.dtype)
                    for envoy, use_input, i, runs in dests:
                        h = read(envoy, use_input)
                        h[runs, -1] = states[i].reshape(-1, d).to(h.dtype)  # the context's last position
                top = torch.softmax(nn.output.logits[:, -1].float(), -1).topk(top_k, dim=-1)
                tops.append(top.indices)
                vals_.append(top.values)
            top_ids = torch.stack(tops, 1).save()  # [n, N, k]
            top_probs = torch.stack(vals_, 1).save()
            decoded = tracer.result.save()
        with nn.generate(padded.input_ids, attention_mask=padded.attention_mask, max_new_tokens=n_future,
                         min_new_tokens=n_future, do_sample=False, pad_token_id=pad, **inner) as tracer:  # fmt: skip
            continued = tracer.result.save()
    n_in = padded.input_ids.shape[1]
    return (
        top_ids.to(torch.int32).numpy(),
        top_probs.float().numpy(),
        decoded[:, n_ctx:].numpy().astype(np.int64),
        continued[:, n_in:].tolist(),
    )


def _prefix_cache(model: Model, context: torch.Tensor, soft: torch.Tensor | None) -> Any:
    """Locally, the key/value cache of the context's first n-1 positions (nothing there depends on the
    state), computed once with a plain forward (the soft prompt's vectors as input embeddings for a learned
    context); the decoding then runs the last position and the new tokens only. None remotely (the whole
    context runs in the request) or for a one-token context."""
    if model.remote or context.shape[1] < 2:
        return None
    hf = model.hf
    with torch.no_grad():
        if soft is None:
            out = hf(input_ids=context[:, :-1], use_cache=True)
        else:
            dtype = next(hf.parameters()).dtype
            out = hf(inputs_embeds=soft[None, :-1].to(dtype), use_cache=True)
    return out.past_key_values


def _repeat_cache(cache: Any, n: int) -> Any:
    import copy

    got = copy.deepcopy(cache)
    got.batch_repeat_interleave(n)
    return got


# ---------------------------------------------------------------------------------------------- the result


@dataclass(repr=False)
class FutureLensResult(Figured):
    """Future Lens over source (layer, position) states: row i is layer `layer_ids[i]`, column j position
    `positions[j]`; step s (0-based) is the prediction for position t+s+1.

    `.top_ids` int32 / `.top_probs` float32 [L, T, n_future, k]: the raw next-token distribution at each
    decoding step; `.predicted_ids` int64 [L, T, n_future] / `.predicted[i][j]` (n_future strings): the
    decoded (greedy, EOS excluded) tokens. `.own_ids` [T, n_future]: the model's own greedy continuation of
    prompt[:t+1]; `.bigram_ids` [T, n_future]: the greedy continuation of the token at t alone.
    `.accuracy` float32 [L, n_future]: fraction of positions whose decoded token s equals own token s;
    `.bigram_baseline` float32 [n_future]: the same for the single-token continuation."""

    _figure_name = "future_lens"

    tokens: list[str]
    layer_ids: list[int]
    positions: list[int]
    method: str
    context_tokens: list[str]
    top_ids: np.ndarray
    top_probs: np.ndarray
    top_tokens: list[list[list[list[str]]]]
    predicted_ids: np.ndarray
    predicted: list[list[list[str]]]
    own_ids: np.ndarray
    own: list[list[str]]
    bigram_ids: np.ndarray
    accuracy: np.ndarray
    bigram_baseline: np.ndarray
    options: dict[str, Any]
    _code: Callable[[], str] | str = field(repr=False)
    learned_prompt: FutureLensPrompt | None = None

    @property
    def n_future(self) -> int:
        return int(self.top_ids.shape[2])

    @property
    def layers(self) -> list[str]:
        return [str(i) for i in self.layer_ids]

    def to_code(self) -> str:
        return _code_of(self)

    def __getstate__(self) -> dict[str, Any]:
        return _picklable(self.__dict__, self)

    def __repr__(self) -> str:
        n_layers, n_tokens, n, k = self.top_ids.shape
        o = self.options
        ctx = (
            _short(o.get("context", ""), 50)
            if self.method == "fixed"
            else f"a learned soft prompt ({len(self.context_tokens)} vectors)"
        )
        lines = [
            f"FutureLensResult [{n_layers} layers x {n_tokens} positions] x n_future={n}, top_k={k}, method="
            f"{self.method!r}, prompt {_short(o.get('prompt', ''))}",
            f"  each state transplanted into {ctx} at its last position, same layer",
        ]
        if n_layers:
            best = int(self.accuracy[:, min(1, n - 1)].argmax())
            s = min(1, n - 1)
            lines.append(
                f"  accuracy t+{s + 1}: best L{self.layer_ids[best]} {self.accuracy[best, s]:.2f} "
                f"(bigram baseline {self.bigram_baseline[s]:.2f}); .accuracy [{n_layers}, {n}]"
            )
            mid = n_layers // 2
            lines.append(
                f"  L{self.layer_ids[mid]} at {self.tokens[-1]!r} predicts {self.predicted[mid][-1]}"
            )
        return "\n".join(lines)


def future_lens(
    model: Model,
    prompt: str,
    n_future: int = 3,
    method: str = "fixed",
    context: str | FutureLensPrompt | None = None,
    top_k: int = 5,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    texts: Sequence[str] | None = None,
    *,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> FutureLensResult:
    """Future Lens: for each source (layer, position) of `prompt`, transplant resid_post there into the
    context's last position (same layer) and decode `n_future` tokens greedily (see the module docstring for
    the exact definitions of decoding, `.accuracy` and `.bigram_baseline`).

    method="fixed": `context` a string (default `DEFAULT_CONTEXT`). method="learned": `context` a
    `FutureLensPrompt` from `wb.train_future_lens`, or None to train one with its defaults on `texts` (or
    the model's own generations; cached on the model for later calls, `.learned_prompt` on the result):
    train once with `train_future_lens` and pass it to choose the training yourself."""
    n_future = _check_n_future(n_future)
    top_k = check_top_k(model, top_k, lo=1)
    if method not in ("fixed", "learned"):
        raise WorkbenchError(
            f"method={method!r}: give method='fixed' (a fixed context prompt) or 'learned' (a trained soft prompt)."
        )
    ids = model.to_tokens(prompt)
    n_tokens = ids.shape[1]
    layer_ids, pos_ids = source_grid(model, layers, positions, n_tokens)
    soft = None
    learned: FutureLensPrompt | None = None
    if method == "fixed":
        if isinstance(context, FutureLensPrompt):
            raise WorkbenchError("context= is a trained FutureLensPrompt: use it with method='learned'.")
        context = DEFAULT_CONTEXT if context is None else context
        if not isinstance(context, str) or not context.strip():
            raise WorkbenchError(
                f"context= must be a non-empty string (the prompt each state is transplanted into, at its last "
                f"token); got {context!r:.40}. The default is {DEFAULT_CONTEXT!r}."
            )
        ctx = model.to_tokens(context, what="context")
    else:
        if context is None:
            key = ("future_lens_prompt", n_future, None if texts is None else tuple(texts))
            cache = model.__dict__.setdefault("_future_lens_prompts", {})
            if key not in cache:
                cache[key] = train_future_lens(
                    model, texts, n_future=n_future, progress=progress, cancel=cancel
                )
            learned = cache[key]
        elif isinstance(context, FutureLensPrompt):
            learned = context
        else:
            raise WorkbenchError(
                "method='learned' takes context= a FutureLensPrompt (from wb.train_future_lens(model)), or None "
                f"to train one now; got {type(context).__name__}. For a text context use method='fixed'."
            )
        _check_prompt_for(model, learned)
        ctx = torch.tensor([learned.placeholder_ids])
        soft = learned.vectors.float()
    if ctx.shape[1] + n_future > model.n_ctx or n_tokens + n_future > model.n_ctx:
        raise WorkbenchError(
            f"n_future={n_future} runs past this model's context of {model.n_ctx} tokens: ask for fewer."
        )
    check_cancel(cancel)
    places = [(lyr, t) for lyr in layer_ids for t in pos_ids]
    with model.lock, job_status(model, progress, cancel):
        prefixes = [ids[0, : t + 1] for t in pos_ids] + _single_contexts(model, ids, pos_ids)
        if model.remote:  # ONE request: the states, their decoding and the continuations in a session
            top_ids, top_probs, dec, conts = _remote_session(
                model, ids, layer_ids, pos_ids, ctx, soft, n_future, top_k, prefixes
            )
        else:
            states = collect(model, ids, "resid_post", layer_ids)
            rows = [(lyr, states[lyr][0, t].float()) for lyr, t in places]
            top_ids, top_probs, dec = _transplanted(model, ctx, soft, rows, n_future, top_k, progress, cancel)
            conts = _continuations(model, prefixes, n_future, cancel)
    L, T = len(layer_ids), len(pos_ids)
    top_ids = top_ids.reshape(L, T, n_future, top_k)
    top_probs = top_probs.reshape(L, T, n_future, top_k)
    dec = dec.reshape(L, T, n_future)
    own = np.asarray(conts[:T], dtype=np.int64).reshape(T, n_future)
    bigram = np.asarray(conts[T:], dtype=np.int64).reshape(T, n_future)
    accuracy = (dec == own[None]).mean(1).astype(np.float32)
    baseline = (bigram == own).mean(0).astype(np.float32)
    unique = np.unique(np.concatenate([top_ids.ravel(), dec.ravel(), own.ravel()])).tolist()
    lookup = dict(zip(unique, model.str_tokens(unique), strict=True))
    options = dict(
        op="future_lens",
        prompt=prompt,
        n_future=n_future,
        method=method,
        context=context if method == "fixed" else None,
        top_k=top_k,
        layers=layer_ids,
        positions=pos_ids,
    )
    if progress is not None:
        progress(1.0, "Future Lens done")
    return FutureLensResult(
        tokens=[model.str_tokens(ids)[t] for t in pos_ids],
        layer_ids=layer_ids,
        positions=pos_ids,
        method=method,
        context_tokens=model.str_tokens(ctx),
        top_ids=top_ids.astype(np.int32),
        top_probs=top_probs.astype(np.float32),
        top_tokens=[[[[lookup[i] for i in s] for s in cell] for cell in row] for row in top_ids.tolist()],
        predicted_ids=dec,
        predicted=[[[lookup[i] for i in cell] for cell in row] for row in dec.tolist()],
        own_ids=own,
        own=[[lookup[i] for i in row] for row in own.tolist()],
        bigram_ids=bigram,
        accuracy=accuracy,
        bigram_baseline=baseline,
        options=options,
        _code=lambda: future_lens_code(model, options, learned),
        learned_prompt=learned,
    )


def _single_contexts(model: Model, ids: torch.Tensor, pos_ids: list[int]) -> list[torch.Tensor]:
    """The bigram baseline's contexts: the token at t alone, after BOS when the tokenizer adds one (and t is
    not the BOS itself)."""
    bos = getattr(model.tokenizer, "bos_token_id", None)
    lead = bos is not None and int(ids[0, 0]) == bos and model.to_tokens("a", what="probe")[0, 0] == bos
    out = []
    for t in pos_ids:
        tok = ids[0, t : t + 1]
        out.append(torch.cat([ids[0, :1], tok]) if lead and t > 0 else tok)
    return out


# ------------------------------------------------------------------------------------------------- to_code


def future_lens_code(model: Model, o: dict[str, Any], learned: FutureLensPrompt | None) -> str:
    """nnsight code of a Future Lens: the source states in one trace, the transplanted decoding in one
    generate over copies of the context, the model's own continuations, and the accuracy."""
    o = codegen.plain(o)
    resid = codegen.site_code(model, "resid_post", "l").read
    embed = codegen.site_code(model, "embed", 0).read
    n, k = o["n_future"], o["top_k"]
    eos = sorted(e for e in _eos_ids(model) if 0 <= e < model.vocab_size)
    if learned is None:
        ctx = f"context = model.tokenizer({codegen.lit(o['context'])}, return_tensors='pt').input_ids\n"
        soft_line = ""
    else:
        ctx = (
            f"context = torch.tensor([{codegen.lit(learned.placeholder_ids)}])  # placeholders for the soft prompt\n"
            f"soft = torch.tensor({codegen.lit(learned.vectors.float().tolist())})  # the learned vectors [k, d]\n"
        )
        soft_line = f"            {embed}[:, :] = soft  # the learned soft prompt\n"
    code = (
        codegen._load(model) + f"prompt = {codegen.lit(o['prompt'])}\n"
        f"layers, positions, n_future = {codegen.lit(o['layers'])}, {codegen.lit(o['positions'])}, {n}\n"
        "ids = model.tokenizer(prompt, return_tensors='pt').input_ids\n"
        + ctx
        + "with torch.no_grad(), model.trace(ids):\n"
        f"    states = torch.stack([{resid}[0] for l in layers]).save()  # resid_post: each block's output\n"
        "places = [(i, l, t) for i, l in enumerate(layers) for t in positions]\n"
        "batch = context.repeat(len(places), 1)  # one copy of the context per source state\n"
        "P = context.shape[1] - 1  # the state goes into the context's last position\n"
        "with torch.no_grad(), model.generate(batch, attention_mask=torch.ones_like(batch), "
        "max_new_tokens=n_future, min_new_tokens=n_future, do_sample=False) as tracer:  # EOS excluded\n"
        "    tops, probs = [], []\n"
        "    for step in tracer.iter[:n_future]:\n"
        "        if step == 0:  # the prompt pass: the transplant\n"
        + soft_line
        + "            for l in sorted(set(layers)):\n"
        f"                x = {resid}\n"
        "                for r, (i, sl, t) in enumerate(places):\n"
        "                    if sl == l:\n"
        "                        x[r, P] = states[i, t]\n"
        f"        top = torch.softmax(model.output.logits[:, -1].float(), -1).topk({k}, dim=-1)\n"
        "        tops.append(top.indices)\n"
        "        probs.append(top.values)\n"
        "    top_ids, top_probs = torch.stack(tops, 1).save(), torch.stack(probs, 1).save()\n"
        "    out = tracer.result.save()\n"
        "predicted = out[:, context.shape[1]:].reshape(len(layers), len(positions), n_future)\n"
        "own = []  # the model's own greedy (EOS excluded) continuation of prompt[:t+1]\n"
        f"eos = {codegen.lit(eos)}\n"
        "for t in positions:\n"
        "    seq = ids[:, : t + 1]\n"
        "    for _ in range(n_future):\n"
        "        with torch.no_grad(), model.trace(seq):\n"
        "            logits = model.output.logits[0, -1].save()\n"
        "        logits[eos] = -float('inf')\n"
        "        seq = torch.cat([seq, logits.argmax().view(1, 1)], 1)\n"
        "    own.append(seq[0, t + 1 :])\n"
        "own = torch.stack(own)  # [positions, n_future]\n"
        "accuracy = (predicted == own[None]).float().mean(1)  # [layers, n_future]\n"
        "shape = (len(layers), len(positions), n_future, -1)\n"
        "result = top_ids.reshape(shape).numpy(), top_probs.reshape(shape).numpy(), accuracy.numpy()\n"
    )
    return codegen._remote(model, code)


__all__ = [
    "DEFAULT_CONTEXT",
    "SEED_PROMPTS",
    "FutureLensPrompt",
    "FutureLensResult",
    "future_lens",
    "prompt_loss",
    "train_future_lens",
]
