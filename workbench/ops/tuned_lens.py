"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens").

Each layer l but the last gets an affine translator h -> h + A_l h + b_l, read out through the model's own
final norm and unembedding. A_l and b_l start at zero, so an untrained tuned lens IS the logit lens; the last
layer's translator is the identity and is not trained (its read-out is the model's output), as in the
`tuned-lens` package (`TunedLens.layer_translators`, zero-initialised `nn.Linear`s added to the residual).
Training minimises KL(final-layer distribution || lens distribution at layer l), summed over layers and
averaged over token positions, on the resid_post states of the user's texts, or of the model's own greedy
continuations of a few short generic prompts.

Cost: the unembedding of every (layer, token) row over the whole vocabulary dominates (forward and its
backward, two [rows, D] x [D, V] products per step). Training therefore runs that product in bfloat16 when
this CPU computes it faster than float32 (measured at the start of training); the softmax, KL, the
targets (the model's own output, float32) and every read-out afterwards (`wb.logit_lens(..., lens=tl)`) are
float32.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.dataset import Dataset
from ..engine import fast_lens, padded_lens
from ..engine.batching import Progress, check_cancel
from ..engine.kernels import finish_logits, translate
from ..engine.model_key import digest
from ..engine.padding import left_pad, pad_id
from ..engine.traced import collect
from ..errors import WorkbenchError
from ..model import Model, _get_path
from ..remote import job_status
from ..validate import as_int
from .steering import _eos_ids

FORMAT = "workbench.tuned_lens"
VERSION = 1

# Short generic prompts whose greedy continuations are the training text when none is given: a mix of
# narrative, factual, instructional, code and list-like text, so the states cover more than one register.
GENERIC_PROMPTS = (
    "The history of the city begins",
    "Once upon a time, there was a",
    "The main ingredients of bread are",
    "In mathematics, a prime number is",
    "def fibonacci(n):\n",
    "The weather today is",
    "Scientists have discovered that",
    "Here is a list of things to do on a rainy day:\n1.",
    "The capital of France is Paris. The capital of Germany is",
    "My favourite book is",
    "To install the package, run",
    "The meeting was moved to Thursday because",
)


@dataclass(frozen=True)
class Translator:
    """One layer's read-out map: h -> h + weight @ h + bias; weight None for the last layer (the identity)."""

    layer: int
    weight: torch.Tensor | None  # [D, D] (A_l), or None
    bias: torch.Tensor | None  # [D] (b_l), or None

    @property
    def trained(self) -> bool:
        return self.weight is not None

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if self.weight is None or self.bias is None:
            return h
        return translate(h, self.weight, self.bias)

    def __repr__(self) -> str:
        if self.weight is None or self.bias is None:
            return f"Translator(layer {self.layer}: identity)"
        return (
            f"Translator(layer {self.layer}: |A|_F {float(self.weight.norm()):.3g}, "
            f"|b| {float(self.bias.norm()):.3g})"
        )


def fingerprint(model: Model) -> dict[str, Any]:
    """What a tuned lens must match: the family, shapes, and (local models) a content hash of the final norm
    and unembedding weights, the read-out the translators were fitted to. A remote model has no weights
    here: it is matched on the rest (a lens trained on a local copy of the same weights loads for it)."""
    cfg = model.config
    fp: dict[str, Any] = dict(
        source=str(model.source),
        model_type=str(cfg.model_type),
        n_layers=int(model.n_layers),
        d_model=int(model.d_model),
        vocab_size=int(model.vocab_size),
        unembed=None,
    )
    if not model.remote:
        norm = _get_path(model.hf, model.arch.final_norm)
        unembed = _get_path(model.hf, model.arch.unembed)
        h = hashlib.sha256()
        for t in (*unembed.parameters(), *norm.parameters()):
            h.update(f"{tuple(t.shape)}:{t.dtype}:{digest(t):016x};".encode())
        fp["unembed"] = h.hexdigest()[:24]
    return fp


class TunedLens:
    """A tuned lens for one model: `.layers[l]` the translator of layer l (`Translator`; the last one is the
    identity), `.weight` [L-1, D, D] and `.bias` [L-1, D] all of them, `.train_loss` [steps] the mean over
    trained layers of KL(final || lens) on each step's batch (nats; step 0 is the logit lens's), `.layer_loss`
    [steps, L] per layer. Read with `wb.logit_lens(model, prompt, lens=tl)`; `.save(path)` /
    `wb.TunedLens.load(path)` (also `wb.tuned_lens.load(path)`)."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        fingerprint: dict[str, Any],
        train_loss: np.ndarray | None = None,
        layer_loss: np.ndarray | None = None,
        options: dict[str, Any] | None = None,
        path: str | None = None,
    ) -> None:
        self.weight = weight.detach().float().contiguous()
        self.bias = bias.detach().float().contiguous()
        self.fingerprint = dict(fingerprint)
        n = self.weight.shape[0] + 1
        self.train_loss = (
            np.zeros(0, np.float32) if train_loss is None else np.asarray(train_loss, np.float32)
        )
        self.layer_loss = (
            np.zeros((0, n), np.float32) if layer_loss is None else np.asarray(layer_loss, np.float32)
        )
        self.options = dict(options or {})
        self.path = path

    # ------------------------------------------------------------------ construction
    @classmethod
    def identity(cls, model: Model) -> TunedLens:
        """An untrained tuned lens (every translator zero): its read-out is exactly the logit lens."""
        n, d = model.n_layers, model.d_model
        return cls(torch.zeros(n - 1, d, d), torch.zeros(n - 1, d), fingerprint(model), options={"steps": 0})

    # ------------------------------------------------------------------ facts
    @property
    def n_layers(self) -> int:
        return int(self.weight.shape[0]) + 1

    @property
    def d_model(self) -> int:
        return int(self.weight.shape[1])

    @property
    def layers(self) -> list[Translator]:
        out = [Translator(i, self.weight[i], self.bias[i]) for i in range(self.n_layers - 1)]
        return out + [Translator(self.n_layers - 1, None, None)]

    def translators(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [L-1, D, D], bias [L-1, D]): what the lens engines apply (`kernels.translated`)."""
        return self.weight, self.bias

    def key(self) -> str:
        """A content hash of the translators (the result cache's key of a lens argument)."""
        return f"{digest(self.weight):016x}{digest(self.bias):016x}"

    def __repr__(self) -> str:
        fp = self.fingerprint
        steps = int(self.options.get("steps", len(self.train_loss)))
        lines = [
            f"TunedLens for {fp.get('source')!r} ({fp.get('model_type')}, {self.n_layers} layers, d_model "
            f"{self.d_model}): {self.n_layers - 1} affine translators + identity at the last layer, "
            f"{steps} training steps" + (f", file {self.path!r}" if self.path else "")
        ]
        if len(self.train_loss):
            tail = float(self.train_loss[-min(5, len(self.train_loss)) :].mean())
            lines.append(
                f"  train KL(final || lens), mean over layers: {float(self.train_loss[0]):.3f} (logit lens) -> "
                f"{tail:.3f} nats (last steps); {self.options.get('tokens', '?')} training tokens, "
                f"{self.options.get('seconds', float('nan')):.0f} s"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------------ checks
    def check(self, model: Model) -> None:
        """WorkbenchError unless this lens was trained for `model` (family, shapes, read-out weights)."""
        fp, mine = fingerprint(model), self.fingerprint
        fix = (
            "Train a tuned lens for this model: tl = wb.tuned_lens(model) (or texts=[...]), or load the file "
            "saved for it with wb.TunedLens.load(path)."
        )
        for name in ("model_type", "n_layers", "d_model", "vocab_size"):
            if fp[name] != mine.get(name):
                raise WorkbenchError(
                    f"This tuned lens was trained for {mine.get('source')!r} ({name} {mine.get(name)!r}); this "
                    f"model {fp['source']!r} has {name} {fp[name]!r}. {fix}"
                )
        if (self.n_layers, self.d_model) != (fp["n_layers"], fp["d_model"]):
            raise WorkbenchError(
                f"This tuned lens's translators are {self.n_layers - 1} x [{self.d_model}, {self.d_model}]; "
                f"this model has {fp['n_layers']} layers of width {fp['d_model']}. {fix}"
            )
        if fp["unembed"] is not None and mine.get("unembed") is not None and fp["unembed"] != mine["unembed"]:
            raise WorkbenchError(
                f"This tuned lens was trained for {mine.get('source')!r}, whose final norm and unembedding "
                f"weights differ from this model's ({fp['source']!r}): another model, or its read-out was "
                f"edited after training. {fix}"
            )

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the translators, fingerprint and training history to `path` (a torch file); returns it."""
        path = str(Path(path).expanduser())
        state = dict(
            format=FORMAT,
            version=VERSION,
            weight=self.weight,
            bias=self.bias,
            fingerprint=self.fingerprint,
            train_loss=torch.from_numpy(self.train_loss.copy()),
            layer_loss=torch.from_numpy(self.layer_loss.copy()),
            options={k: v for k, v in self.options.items() if isinstance(v, int | float | str | bool)},
        )
        torch.save(state, path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Model | None = None) -> TunedLens:
        """A lens saved with `.save(path)`; with `model`, checked to fit it (else checked when used)."""
        path = str(Path(path).expanduser())
        try:
            state = torch.load(path, weights_only=True)
        except FileNotFoundError:
            raise WorkbenchError(f"No tuned lens file at {path!r}: save one with tl.save(path).") from None
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same readable message
            raise WorkbenchError(
                f"{path!r} is not a tuned lens file written by TunedLens.save ({type(exc).__name__})."
            ) from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise WorkbenchError(
                f"{path!r} is not a tuned lens file written by TunedLens.save (no {FORMAT!r} header)."
            )
        lens = cls(
            state["weight"],
            state["bias"],
            state["fingerprint"],
            state["train_loss"].numpy(),
            state["layer_loss"].numpy(),
            state.get("options"),
            path=path,
        )
        if model is not None:
            lens.check(model)
        return lens

    def saved_path(self) -> str:
        """A file holding these translators: `.path` when it is one, else a cache file named by their hash
        (what `to_code()` of a lens result loads)."""
        if self.path and Path(self.path).exists():
            return self.path
        target = Path(tempfile.gettempdir()) / f"workbench_tuned_lens_{self.key()}.pt"
        if not target.exists():
            path = self.path
            self.save(target)
            self.path = path  # the lens stays "unsaved" for the user; to_code just has a file to load
        return str(target)

    def describe(self) -> dict[str, Any]:
        """The lens as a result's option (small and plain)."""
        return dict(kind="tuned", path=self.path, steps=int(self.options.get("steps", 0)), key=self.key())


def lens_translators(model: Model, lens: Any) -> tuple[Any, dict[str, Any] | None]:
    """`logit_lens(lens=)`: (translators for the engines or None, the lens option or None)."""
    if lens is None or (isinstance(lens, str) and lens == "logit"):
        return None, None
    if not isinstance(lens, TunedLens):
        raise WorkbenchError(
            f"lens= takes a wb.TunedLens (tl = wb.tuned_lens(model) or wb.TunedLens.load(path)), or None / "
            f"'logit' for the logit lens; got {type(lens).__name__}."
        )
    lens.check(model)
    return lens.translators(), lens.describe()


# ---------------------------------------------------------------------------------------------- training
def _texts(texts: Any) -> list[str] | None:
    if texts is None:
        return None
    if isinstance(texts, str):
        texts = [texts]
    elif isinstance(texts, Dataset):
        texts = [ex.clean for ex in texts]
    elif not isinstance(texts, Sequence):
        raise WorkbenchError(
            f"texts= takes a list of strings (or one string, or a wb.Dataset); got {type(texts).__name__}."
        )
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise WorkbenchError(f"texts= takes strings; got a {type(bad[0]).__name__} among them.")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise WorkbenchError(
            "texts= is empty: give the tuned lens some text to train on (a few hundred tokens or more), or "
            "texts=None to train on the model's own greedy continuations of a few generic prompts."
        )
    return texts


def _pool(model: Model, id_lists: list[torch.Tensor], cancel: threading.Event | None) -> torch.Tensor:
    """resid_post of every layer at every token of the texts: [L, N, D] float32. Local fast path: left-padded
    batches of texts (mask and position ids: each text sees exactly its own tokens); else one trace a text."""
    if not fast_lens.enabled(model):
        out = []
        for ids in id_lists:
            check_cancel(cancel)
            acts = collect(model, ids, "resid_post", range(model.n_layers))
            out.append(torch.stack([acts[layer][0] for layer in range(model.n_layers)]).float())
        return torch.cat(out, dim=1)
    parts = []
    size = 16
    for start in range(0, len(id_lists), size):
        check_cancel(cancel)
        group = id_lists[start : start + size]
        batch = left_pad(group, pad_id(model.tokenizer))
        rows = torch.cat([torch.full((g.shape[1],), b) for b, g in enumerate(group)])
        cols = torch.cat([batch.pad[b] + torch.arange(g.shape[1]) for b, g in enumerate(group)])
        with torch.no_grad():
            parts.append(torch.stack(padded_lens._resid_rows(model, batch, rows, cols)).float())
    return torch.cat(parts, dim=1)


def _greedy(model: Model, prompts: list[torch.Tensor], max_new_tokens: int) -> list[torch.Tensor]:
    """Each prompt [1, T] and its greedy continuation (one left-padded HF generate on the local model; a
    continuation ends at EOS)."""
    pad = model.tokenizer.pad_token_id
    if pad is None:
        pad = model.tokenizer.eos_token_id
    width = max(p.shape[1] for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - p.shape[1] :], mask[i, width - p.shape[1] :] = p[0], 1
    with torch.no_grad():
        out = model.hf.generate(
            ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
        )
    eos = set(_eos_ids(model))
    texts = []
    for i, p in enumerate(prompts):
        new = out[i, width:].tolist()
        cut = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
        texts.append(torch.cat([p, torch.tensor([new[:cut]], dtype=p.dtype)], 1))
    return texts


def _fast_dtype(weight: torch.Tensor) -> torch.dtype:
    """bfloat16 for the training unembedding when this CPU multiplies in it faster than in float32."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return weight.dtype
    x = torch.randn(64, weight.shape[1])
    times = {}
    for dt in (torch.float32, torch.bfloat16):
        w, xx = weight.to(dt), x.to(dt)
        xx @ w.T  # warm up
        start = time.perf_counter()
        for _ in range(2):
            xx @ w.T
        times[dt] = time.perf_counter() - start
    return torch.bfloat16 if times[torch.bfloat16] < 0.8 * times[torch.float32] else torch.float32


def tuned_lens(
    model: Model,
    texts: Any = None,
    *,
    steps: int = 40,
    tokens_per_step: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    max_new_tokens: int = 40,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> TunedLens:
    """Train a tuned lens: per-layer affine translators (zero-initialised: step 0 is the logit lens) that
    minimise KL(final-layer distribution || translated read-out) at every layer but the last.

    `texts`: strings (or a wb.Dataset: its clean prompts) whose resid_post states are the training data; None:
    the model's greedy continuations (`max_new_tokens` each) of `GENERIC_PROMPTS`. Each of `steps` Adam steps
    (learning rate `lr`, decayed linearly to 0) uses `tokens_per_step` positions drawn (seeded by `seed`) from
    all texts, at every layer. Defaults (40 steps x 64 tokens) take about a minute on the embedded
    SmolLM2-135M on two CPU cores; see the module docstring for the cost. Local models only (training needs
    the read-out weights here); a lens trained on a local copy of a remote model's weights reads it remotely.
    """
    steps = as_int(steps, "steps", lo=1, hi=1_000_000)
    tokens_per_step = as_int(tokens_per_step, "tokens_per_step", lo=1, hi=1_000_000)
    max_new_tokens = as_int(max_new_tokens, "max_new_tokens", lo=1, hi=4096)
    seed = as_int(seed, "seed")
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise WorkbenchError(f"lr= takes a positive number, got {lr!r:.40}.") from None
    if not (lr > 0 and math.isfinite(lr)):
        raise WorkbenchError(f"lr= takes a positive number, got {lr!r}.")
    given = _texts(texts)
    if model.remote:
        raise WorkbenchError(
            "Training a tuned lens needs the model's final norm and unembedding weights on this machine, which a "
            "remote model does not have. Train it on a local copy of the same weights (tl = wb.tuned_lens("
            "wb.load(path)); tl.save('lens.pt')), then read the remote model with wb.logit_lens(remote_model, "
            "prompt, lens=wb.TunedLens.load('lens.pt'))."
        )
    if model.n_layers < 2:
        raise WorkbenchError("A tuned lens needs a model of at least 2 layers (the last is not translated).")
    check_cancel(cancel)
    started = time.perf_counter()
    n_layers = model.n_layers

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(min(1.0, fraction), message)

    with model.lock, job_status(model, progress, cancel):
        # ---- the training text's token ids
        if given is None:
            id_lists = _greedy(model, [model.to_tokens(p) for p in GENERIC_PROMPTS], max_new_tokens)
            report(0.1, f"generated {len(id_lists)} texts")
        else:
            id_lists = [model.to_tokens(t)[:, : model.n_ctx] for t in given]
        # ---- their hidden states, pooled over texts: [L, N, D]
        pool = _pool(model, id_lists, cancel)
        n_pool = pool.shape[1]
        report(0.12, f"hidden states of {n_pool} tokens")
        weight, bias, loss_rows = _train(model, pool, steps, tokens_per_step, lr, seed, report, cancel)
    layer_loss = np.stack(loss_rows).astype(np.float32)  # [steps, L]
    options = dict(
        steps=steps,
        tokens_per_step=min(tokens_per_step, n_pool),
        lr=lr,
        seed=seed,
        tokens=n_pool,
        texts="generated" if given is None else len(given),
        seconds=time.perf_counter() - started,
    )
    report(1.0, "tuned lens trained")
    return TunedLens(
        weight,
        bias,
        fingerprint(model),
        train_loss=layer_loss[:, : n_layers - 1].mean(1),
        layer_loss=layer_loss,
        options=options,
    )


def _train(
    model: Model,
    pool: torch.Tensor,
    steps: int,
    tokens_per_step: int,
    lr: float,
    seed: int,
    report: Any,
    cancel: threading.Event | None,
) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    n_layers, d = model.n_layers, model.d_model
    norm = _get_path(model.hf, model.arch.final_norm)
    unembed = _get_path(model.hf, model.arch.unembed)
    divisor, softcap = model.logit_divisor, model.logit_softcap
    u_weight = unembed.weight.detach()
    u_bias = unembed.bias.detach() if getattr(unembed, "bias", None) is not None else None
    dt = _fast_dtype(u_weight)
    w_fast = u_weight.to(dt)
    b_fast = None if u_bias is None else u_bias.to(dt)

    def kl_and_grad(
        normed: torch.Tensor, p_target: torch.Tensor, neg_entropy: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(target || lens) of rows `normed` [k * n, D] (mean over each layer's n tokens: [k]) and its
        gradient with respect to `normed`, from one pass over each [rows, V] block (no autograd there):
        d KL / d logits = softmax(logits) - p_target."""
        logits = torch.nn.functional.linear(normed.to(dt), w_fast, b_fast).float()
        if divisor != 1.0:
            logits /= divisor
        logits = logits.view(k, n, -1)
        if softcap:  # Gemma-2: logits = c tanh(z / c); d/dz = 1 - (logits / c)^2
            logits = torch.tanh(logits / softcap) * softcap
        m = logits.amax(-1, keepdim=True)
        e = (logits - m).exp_()
        s = e.sum(-1, keepdim=True)
        lse = (m + s.log()).squeeze(-1)  # [k, n]
        kl = (neg_entropy - (p_target * logits).sum(-1) + lse).mean(1)  # [k]
        g = e.div_(s).sub_(p_target)  # softmax - target, [k, n, V]
        if softcap:
            g.mul_(1 - (logits / softcap) ** 2)
        if divisor != 1.0:
            g /= divisor
        grad = (g.view(k * n, -1).to(dt) @ w_fast).float() / n
        return kl, grad

    weights = [torch.zeros(d, d, requires_grad=True) for _ in range(n_layers - 1)]
    biases = [torch.zeros(d, requires_grad=True) for _ in range(n_layers - 1)]
    params = weights + biases
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    gen = torch.Generator().manual_seed(seed)
    n_pool = pool.shape[1]
    n = min(tokens_per_step, n_pool)
    per_chunk = max(1, 512 // n)  # layers unembedded together: about 512 rows per product
    rows: list[np.ndarray] = []
    for step in range(steps):
        check_cancel(cancel)
        pick = torch.randperm(n_pool, generator=gen)[:n]
        h = pool[:, pick]  # [L, n, D]
        with torch.no_grad():  # the target: the model's own output distribution (float32)
            final = finish_logits(unembed(norm(h[-1])).float(), divisor, softcap)
            target = torch.log_softmax(final, dim=-1)
            p_target = target.exp()
            neg_entropy = (p_target * target).sum(-1)  # [n]
            del final, target
        losses = np.zeros(n_layers, np.float64)
        for lo in range(0, n_layers - 1, per_chunk):
            layers = range(lo, min(n_layers - 1, lo + per_chunk))
            normed = norm(torch.cat([translate(h[layer], weights[layer], biases[layer]) for layer in layers]))
            with torch.no_grad():
                kl, grad = kl_and_grad(normed.detach(), p_target, neg_entropy, len(layers))
            mine = [weights[layer] for layer in layers] + [biases[layer] for layer in layers]
            # back through the final norm and the translators only (never into the model's parameters)
            grads = torch.autograd.grad(normed, mine, grad_outputs=grad)
            for p, g in zip(mine, grads, strict=True):
                p.grad = g
            losses[lo : lo + len(layers)] = kl.double().numpy()
        opt.step()
        sched.step()
        rows.append(losses)
        report(
            0.12 + 0.88 * (step + 1) / steps,
            f"step {step + 1}/{steps}: KL {losses[: n_layers - 1].mean():.3f} nats (mean over layers)",
        )
    weight = torch.stack([w.detach() for w in weights])
    bias = torch.stack([b.detach() for b in biases])
    return weight, bias, rows
