"""The circuit engine: edge attribution and edge-level interventions on a local model, with plain hooks.

The graph (Hanna et al. 2024, MIB): senders are the embeddings (block 0's residual input), every attention
head's output in the residual stream (W_O,h z_h, times the block's residual multiplier) and every MLP's output;
receivers are every head's query, key and value input, every MLP's input and the logits (the final norm's input).
A receiver's input is its own copy of the residual stream it reads, before its norm: the sum of the senders
below it plus biases that every run shares. Under grouped-query attention a key or value receiver is a
key-value head (the unit that has an input), as in `wb.Cell("k", layer, head=kv)`.

- `attribute`: (sender's clean - corrupt output) . d metric / d receiver input for every edge, the gradient
  taken at the corrupt run (EAP) or averaged over runs whose token embeddings step from the corrupt to the
  clean ones (EAP-IG). One backward gives the gradient at every q/k/v projection output and MLP input; each
  receiver's own gradient in the stream is that slice mapped back through its projection rows and its norm.
- `mixed`: run one input with every receiver's input rebuilt as the reference run's stream plus, for each
  edge kept, the sender's current minus reference output (faithfulness: base clean, reference corrupt, kept =
  the circuit; exact edge patching: base corrupt, reference clean).

Nothing is cached between calls (the weights are read when the call starts); hooks act in the calling thread only.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import UnsupportedModelError, WorkbenchError
from ..model import Model, _path_index
from .batching import check_cancel
from .fast import first, has_hooks, on_cpu
from .kernels import slot
from .padding import left_pad, pad_id
from .threads import mine


# ----------------------------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class Layout:
    """The nodes of one model's graph and which sender reaches which receiver."""

    n_layers: int
    n_heads: int
    n_kv: int
    parallel: bool  # the MLP reads the block's input (it does not see the block's heads)

    @property
    def per_layer_senders(self) -> int:
        return self.n_heads + 1

    @property
    def per_layer_receivers(self) -> int:
        return self.n_heads + 2 * self.n_kv + 1

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * self.per_layer_senders

    @property
    def n_receivers(self) -> int:
        return self.n_layers * self.per_layer_receivers + 1

    def head(self, layer: int, head: int) -> int:
        return 1 + layer * self.per_layer_senders + head

    def mlp(self, layer: int) -> int:
        return 1 + layer * self.per_layer_senders + self.n_heads

    def receiver(self, layer: int, kind: str, head: int = 0) -> int:
        base = layer * self.per_layer_receivers
        return base + {"q": head, "k": self.n_heads + head, "v": self.n_heads + self.n_kv + head}.get(
            kind, self.n_heads + 2 * self.n_kv
        )

    @property
    def logits(self) -> int:
        return self.n_layers * self.per_layer_receivers

    def senders_before(self, r: int) -> int:
        """How many senders (a prefix of the sender order) reach receiver r."""
        if r == self.logits:
            return self.n_senders
        layer, k = divmod(r, self.per_layer_receivers)
        if k == self.n_heads + 2 * self.n_kv and not self.parallel:  # a sequential MLP sees its block's heads
            return 1 + layer * self.per_layer_senders + self.n_heads
        return 1 + layer * self.per_layer_senders

    def sender_names(self) -> list[str]:
        out = ["embed"]
        for layer in range(self.n_layers):
            out += [f"L{layer}H{h}" for h in range(self.n_heads)] + [f"MLP{layer}"]
        return out

    def receiver_names(self) -> list[str]:
        out = []
        for layer in range(self.n_layers):
            out += [f"L{layer}H{h}.q" for h in range(self.n_heads)]
            out += [f"L{layer}H{g}.k" for g in range(self.n_kv)]
            out += [f"L{layer}H{g}.v" for g in range(self.n_kv)]
            out.append(f"MLP{layer}")
        return out + ["logits"]

    def valid(self) -> np.ndarray:
        """[S, R] bool: which sender reaches which receiver directly."""
        out = np.zeros((self.n_senders, self.n_receivers), bool)
        for r in range(self.n_receivers):
            out[: self.senders_before(r), r] = True
        return out


def layout(model: Model) -> Layout:
    """The graph layout of a model (its family must keep head outputs additive: checked when it runs)."""
    arch = model.arch
    if not arch.attn_norm or not arch.mlp_norm:
        raise UnsupportedModelError(
            f"Circuits need the norms in front of attention and MLP; the {arch.name} entry of "
            "workbench/architectures.py names none (add attn_norm= and mlp_norm=)."
        )
    return Layout(model.n_layers, model.n_heads, model.n_kv_heads, not model._sequential())


# ----------------------------------------------------------------------------------------- module facts
@dataclass
class _Block:
    """One block's modules and the affine maps the engine needs (read from the weights when the call starts)."""

    attn_norm: torch.nn.Module
    mlp_norm: torch.nn.Module
    proj: list[torch.nn.Module]  # the q/k/v projection modules (one when fused)
    # per receiver kind q/k/v: (projection index, [n, d_head] output columns of each head)
    cols: dict[str, tuple[int, torch.Tensor]]
    weights: list[tuple[torch.Tensor, torch.Tensor]]  # per projection: W [d, D_out], b [D_out]
    o_proj: torch.nn.Module
    w_o: torch.Tensor  # [H, d_head, d]: each head's rows of the output projection
    b_o: torch.Tensor  # [d]
    mlp: torch.nn.Module
    attn_out: torch.nn.Module
    scale: float


def _affine(module: torch.nn.Module, d_in: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [d_in, D_out], b [D_out]) of an affine module: a Linear's or Conv1D's own weights (read now, so an
    edit made before the call is seen), else its output on the identity minus its output on 0."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    forward = type(module).forward
    # no instance-level forward swapped in (nnsight's own instrumentation runs the module's forward unchanged)
    swapped = module.__dict__.get("forward")
    own = swapped is None or type(swapped).__module__.startswith("nnsight.")
    if own and isinstance(module, torch.nn.Linear) and forward is torch.nn.Linear.forward:
        w = weight.detach().t()
        return w, (bias.detach() if bias is not None else torch.zeros(w.shape[1], dtype=w.dtype))
    if (
        own and type(module).__name__ == "Conv1D" and weight is not None and weight.shape[0] == d_in
    ):  # GPT-2: x @ W + b
        return weight.detach(), bias.detach()
    with torch.no_grad():
        eye = torch.eye(d_in, dtype=dtype).unsqueeze(0)
        zero = torch.zeros(1, 1, d_in, dtype=dtype)
        b = module.forward(zero)[0, 0]
        w = module.forward(eye)[0] - b
    return w, b


def _columns(ref_layout: tuple, width: int) -> torch.Tensor:
    """[n, d_head] output columns of each head of a projection output laid out as `ref_layout`."""
    index = torch.arange(width, dtype=torch.float64).view(1, 1, width)
    return slot(index, ref_layout)[0, 0].round().long()


def _blocks(model: Model) -> list[_Block]:
    hf, arch = model.hf, model.arch
    dtype = next(hf.parameters()).dtype
    out = []
    for layer in range(model.n_layers):
        block = f"{arch.layers}[{layer}]"
        refs = {s: model.site_ref(s, layer) for s in "qkv"}
        paths = list(dict.fromkeys(ref.path for ref in refs.values()))
        proj = [_path_index(hf, p) for p in paths]
        weights = [_affine(m, model.d_model, dtype) for m in proj]
        cols = {}
        for s, ref in refs.items():
            i = paths.index(ref.path)
            cols[s] = (i, _columns(ref.layout, weights[i][0].shape[1]))
        head_ref = model.site_ref("head", layer)
        o_proj = _path_index(hf, head_ref.path)
        width = model.n_heads * model.d_head
        w_o, b_o = _affine(o_proj, width, dtype)
        rows = _columns(head_ref.layout, width)  # [H, d_head]
        out.append(
            _Block(
                attn_norm=_path_index(hf, f"{block}.{arch.attn_norm}"),
                mlp_norm=_path_index(hf, f"{block}.{arch.mlp_norm}"),
                proj=proj,
                cols=cols,
                weights=weights,
                o_proj=o_proj,
                w_o=w_o[rows],
                b_o=b_o,
                mlp=_path_index(hf, model.site_ref("mlp_out", layer).path),
                attn_out=_path_index(hf, model.site_ref("attn_out", layer).path),
                scale=model.residual_scale(layer),
            )
        )
    return out


def check_local(model: Model) -> None:
    """The engine runs the local model with its own hooks: refuse states it cannot be exact in."""
    if model.remote:
        raise WorkbenchError("internal: the local circuit engine got a remote model")
    if not on_cpu(model):
        raise UnsupportedModelError("Circuits run on CPU models here: move the model with model.hf.cpu().")
    if has_hooks(model):
        raise WorkbenchError(
            "The model has hooks of your own on it; circuits run with their own hooks and cannot order them "
            "with yours. Remove yours (handle.remove()) and call again."
        )


def _arg(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    return kwargs.get("hidden_states", next(iter(kwargs.values())))


# ------------------------------------------------------------------------------------------ one run
@dataclass
class Run:
    """What one hooked forward saw, per layer: the norms' inputs, the projection outputs, the head outputs (the
    output projection's input), the MLP inputs (their own copy) and outputs, and the final norm's input."""

    x_attn: list[torch.Tensor]
    x_mlp: list[torch.Tensor]
    proj_out: list[list[torch.Tensor]]
    z: list[torch.Tensor]
    mlp_in: list[torch.Tensor]
    mlp_out: list[torch.Tensor]
    attn_out: list[torch.Tensor]
    x_final: torch.Tensor | None
    logits: torch.Tensor


Rewrite = Callable[[str, int, torch.Tensor], torch.Tensor | None]


@contextlib.contextmanager
def _hooks(
    model: Model, blocks: list[_Block], run: Run, rewrite: Rewrite | None, embed_grad: bool
) -> Iterator[None]:
    """Record a forward into `run`; `rewrite(kind, layer, value)` may replace a projection output ("proj<i>"),
    an MLP input ("mlp_in") or the final norm's input ("final") before the model goes on with it."""
    handles = []

    def pre(kind: str, layer: int, store: list | None):
        def hook(_mod: Any, args: tuple, kwargs: dict):
            x = _arg(args, kwargs)
            if kind == "final":
                new = rewrite(kind, layer, x) if rewrite is not None else None
                run.x_final = x
                if new is not None:
                    return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
                return None
            if kind == "mlp_in":
                new = rewrite(kind, layer, x) if rewrite is not None else None
                mine_x = (
                    new if new is not None else x
                ).clone()  # the MLP's own copy (its gradient is its own)
                run.mlp_in[layer] = mine_x
                return ((mine_x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": mine_x})
            if store is not None:
                for s in store:
                    s[layer] = x
            return None

        return hook

    def post(kind: str, layer: int, i: int = 0):
        def hook(_mod: Any, _args: Any, out: Any):
            if kind == "proj":
                run.proj_out[layer][i] = out
                new = rewrite(f"proj{i}", layer, out) if rewrite is not None else None
                return (new if new is not None else out).clone()  # the model may change it in place (OLMo)
            if kind == "mlp":
                run.mlp_out[layer] = first(out)
            else:
                run.attn_out[layer] = first(out)
            return None

        return hook

    try:
        for layer, b in enumerate(blocks):
            if b.attn_norm is b.mlp_norm:
                stores = [run.x_attn, run.x_mlp]
                handles.append(
                    b.attn_norm.register_forward_pre_hook(mine(pre("norm", layer, stores)), with_kwargs=True)
                )
            else:
                handles.append(
                    b.attn_norm.register_forward_pre_hook(
                        mine(pre("norm", layer, [run.x_attn])), with_kwargs=True
                    )
                )
                handles.append(
                    b.mlp_norm.register_forward_pre_hook(
                        mine(pre("norm", layer, [run.x_mlp])), with_kwargs=True
                    )
                )
            for i, m in enumerate(b.proj):
                handles.append(m.register_forward_hook(mine(post("proj", layer, i))))
            handles.append(
                b.o_proj.register_forward_pre_hook(mine(pre("norm", layer, [run.z])), with_kwargs=True)
            )
            handles.append(
                b.mlp.register_forward_pre_hook(mine(pre("mlp_in", layer, None)), with_kwargs=True)
            )
            handles.append(b.mlp.register_forward_hook(mine(post("mlp", layer))))
            handles.append(b.attn_out.register_forward_hook(mine(post("attn", layer))))
        final = _path_index(model.hf, model.arch.final_norm)
        handles.append(final.register_forward_pre_hook(mine(pre("final", 0, None)), with_kwargs=True))
        if embed_grad:
            embed = model.hf.get_input_embeddings()
            handles.append(embed.register_forward_hook(mine(lambda _m, _a, out: out.requires_grad_(True))))
        yield
    finally:
        for h in handles:
            h.remove()


def _empty_run(model: Model, blocks: list[_Block]) -> Run:
    n = model.n_layers
    return Run(
        x_attn=[None] * n,  # type: ignore[list-item]
        x_mlp=[None] * n,  # type: ignore[list-item]
        proj_out=[[None] * len(b.proj) for b in blocks],  # type: ignore[misc]
        z=[None] * n,  # type: ignore[list-item]
        mlp_in=[None] * n,  # type: ignore[list-item]
        mlp_out=[None] * n,  # type: ignore[list-item]
        attn_out=[None] * n,  # type: ignore[list-item]
        x_final=None,
        logits=torch.zeros(0),
    )


def forward(
    model: Model,
    blocks: list[_Block],
    inputs: dict[str, torch.Tensor],
    *,
    grad: bool = False,
    rewrite: Rewrite | None = None,
    embeds: torch.Tensor | None = None,
) -> Run:
    """One hooked forward of a padded batch (last-position logits); `embeds` replaces the token embeddings."""
    run = _empty_run(model, blocks)
    kwargs = dict(inputs)
    if embeds is not None:
        kwargs.pop("input_ids")
        kwargs["inputs_embeds"] = embeds
    with _hooks(model, blocks, run, rewrite, grad and embeds is None), torch.set_grad_enabled(grad):
        run.logits = model.hf(**kwargs, logits_to_keep=1).logits[:, -1].float()
    return run


# ------------------------------------------------------------------------------------- senders, receivers
def sender_outputs(blocks: list[_Block], run: Run, n_heads: int) -> list[torch.Tensor]:
    """Each layer's senders' outputs in the stream, [H + 1, B, T, d] (heads, then the MLP); the embeddings
    are `run.x_attn[0]`."""
    out = []
    for layer, b in enumerate(blocks):
        z = run.z[layer].detach()
        zh = z.view(*z.shape[:2], n_heads, -1)  # [B, T, H, d_head]
        heads = torch.einsum("bthk,hkd->hbtd", zh, b.w_o) * b.scale
        out.append(torch.cat([heads, (run.mlp_out[layer].detach() * b.scale).unsqueeze(0)]))
    return out


def check_additive(blocks: list[_Block], run: Run, model: Model) -> None:
    """The stream must be the sum of the senders (plus shared biases): attention output = o_proj of the head
    outputs, and the final stream = embeddings + every block's terms. Else edges are not defined here."""
    checks = []
    total = run.x_attn[0].detach().clone()
    for layer, b in enumerate(blocks):
        attn = run.attn_out[layer].detach()
        z = run.z[layer].detach()
        heads = torch.einsum("bthk,hkd->btd", z.view(*z.shape[:2], model.n_heads, -1), b.w_o) + b.b_o
        checks.append((float((heads - attn).abs().max()), float(attn.abs().max())))
        total = total + b.scale * (attn + run.mlp_out[layer].detach())
    final = run.x_final.detach()
    checks.append((float((total - final).abs().max()), float(final.abs().max())))
    raise_unless_additive(model, checks)


def raise_unless_additive(model: Model, checks: Sequence[tuple[float, float]]) -> None:
    """`check_additive` from its numbers (max |heads + bias - attention output|, max |attention output|) per
    layer, then (max |senders' sum - final stream|, max |final stream|): the traced engine's check too."""
    tol = 1e-3
    for layer, (err, scale) in enumerate(checks[:-1]):
        if err > tol * (scale + 1e-6):
            raise UnsupportedModelError(
                f"Circuits need each attention output to be the sum of its heads' outputs; in the "
                f"{model.arch.name} family (layer {layer}) it is not (a norm after attention, as in Gemma-2). "
                "Use a family whose attention output is its output projection's: GPT-2, Llama, Qwen, NeoX, Phi."
            )
    err, scale = checks[-1]
    if err > tol * (scale + 1e-6):
        raise UnsupportedModelError(
            f"Circuits need the final residual stream to be the embeddings plus every block's attention and MLP "
            f"outputs; in the {model.arch.name} family it is not."
        )


def _normalised(x: torch.Tensor, centred: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, scale [.., 1]): LayerNorm's (x - mean) / sqrt(var + eps), or RMSNorm's x / sqrt(mean(x^2) + eps)."""
    xc = x - x.mean(-1, keepdim=True) if centred else x
    scale = torch.sqrt((xc * xc).mean(-1, keepdim=True) + eps)
    return xc / scale, scale


def _norm_form(norm: torch.nn.Module, x: torch.Tensor) -> tuple | None:
    """(centred, x_hat, scale, gain) of a LayerNorm / RMSNorm module at the point x, so that norm(x) =
    gain * x_hat + bias, verified on x itself (None: not such a norm, or not verified: use autograd)."""
    name = type(norm).__name__
    if isinstance(norm, torch.nn.LayerNorm) or ("LayerNorm" in name and "RMS" not in name):
        centred = True
    elif "RMSNorm" in name:
        centred = False
    else:
        return None
    eps = next((v for a in ("variance_epsilon", "eps", "epsilon") if isinstance(v := getattr(norm, a, None), float)),
               1e-5)  # fmt: skip
    d = x.shape[-1]
    with torch.no_grad():
        probe = torch.ones(1, d, dtype=x.dtype)
        probe[:, 1::2] = -1.0
        bias = norm.forward(torch.zeros(1, d, dtype=x.dtype))[0]  # x_hat(0) = 0
        p_hat, _ = _normalised(probe, centred, eps)
        gain = (norm.forward(probe)[0] - bias) / p_hat[0]
        x_hat, scale = _normalised(x, centred, eps)
        y = norm.forward(x)
        if not torch.allclose(gain * x_hat + bias, y, rtol=1e-4, atol=1e-5 * (1.0 + float(y.abs().max()))):
            return None
    return centred, x_hat, scale, gain


def _norm_vjp(norm: torch.nn.Module, x: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """[R, B, T, d]: each of R gradients at the norm's output taken back to its input, at the point x.
    LayerNorm / RMSNorm in closed form (h = gain * g; (h - mean h - x_hat mean(h x_hat)) / scale, without the
    mean term for RMSNorm), verified against the module at x; any other norm by autograd through the module."""
    form = _norm_form(norm, x.detach())
    if form is not None:
        centred, x_hat, scale, gain = form
        h = grads.to(x_hat.dtype) * gain
        out = h - x_hat * (h * x_hat).mean(-1, keepdim=True)
        if centred:
            out = out - h.mean(-1, keepdim=True)
        return out / scale
    with torch.enable_grad():
        xr = x.detach().unsqueeze(0).expand(grads.shape[0], *x.shape).clone().requires_grad_(True)
        y = norm.forward(xr)
        (g,) = torch.autograd.grad(y, xr, grads.to(y.dtype))
    return g


def receiver_grads(
    blocks: list[_Block], run: Run, proj_grads: list[list[torch.Tensor | None]], mlp_grads: list[torch.Tensor | None],
    final_grad: torch.Tensor | None, layout_: Layout,
) -> list[torch.Tensor]:  # fmt: skip
    """Each layer's receivers' gradients in the stream [R_l, B, T, d] (q heads, k, v, MLP) and, last, the
    logits' [1, B, T, d]."""
    out = []
    for layer, b in enumerate(blocks):
        x = run.x_attn[layer]
        parts = []
        for s in "qkv":
            i, cols = b.cols[s]
            g = proj_grads[layer][i]
            w = b.weights[i][0]  # [d, D_out]
            if g is None:
                parts.append(torch.zeros(cols.shape[0], *x.shape, dtype=x.dtype))
                continue
            gh = g.detach()[..., cols]  # [B, T, n, d_head]
            wh = w[:, cols]  # [d, n, d_head]
            parts.append(torch.einsum("btnk,dnk->nbtd", gh, wh))
        attn = _norm_vjp(b.attn_norm, x, torch.cat(parts))
        gm = mlp_grads[layer]
        xm = run.x_mlp[layer]
        mlp = (
            _norm_vjp(b.mlp_norm, xm, gm.detach().unsqueeze(0))
            if gm is not None
            else torch.zeros(1, *xm.shape)
        )
        out.append(torch.cat([attn, mlp.to(attn.dtype)]))
    out.append(
        (final_grad.detach() if final_grad is not None else torch.zeros_like(run.x_final)).unsqueeze(0)
    )
    return out


def _grads(run: Run, value: torch.Tensor) -> tuple[list[list[Any]], list[Any], Any]:
    targets: list[torch.Tensor] = []
    for outs in run.proj_out:
        targets += outs
    targets += run.mlp_in
    targets.append(run.x_final)
    got = torch.autograd.grad(value, targets, allow_unused=True)
    at = 0
    proj = []
    for outs in run.proj_out:
        proj.append(list(got[at : at + len(outs)]))
        at += len(outs)
    n = len(run.mlp_in)
    return proj, list(got[at : at + n]), got[at + n]


@contextlib.contextmanager
def frozen(model: Model) -> Iterator[None]:
    """The parameters do not require grad during the call (no weight gradients), restored after."""
    params = [p for p in model.hf.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# ------------------------------------------------------------------------------------------- attribution
@dataclass
class Batch:
    """A chunk of examples, left-padded: clean and corrupt inputs, each example's metric and pad."""

    clean: dict[str, torch.Tensor]
    corrupt: dict[str, torch.Tensor]
    pads: list[int]
    metrics: list[Any]
    needs_clean: bool = False  # a metric reads the clean logits (KL to clean)

    @property
    def mask(self) -> torch.Tensor:
        return self.clean["attention_mask"].bool()


def batch(model: Model, pairs: Sequence[tuple[torch.Tensor, torch.Tensor, Any]], needs_clean: bool) -> Batch:
    """Examples (clean ids, corrupt ids, bound metric) as one left-padded chunk."""
    pid = pad_id(model.tokenizer)
    clean = left_pad([c for c, _, _ in pairs], pid)
    corrupt = left_pad([k for _, k, _ in pairs], pid)
    return Batch(clean.inputs(), corrupt.inputs(), clean.pad, [m for _, _, m in pairs], needs_clean)


def k_is_last(alpha: float) -> bool:
    """Whether an EAP-IG step is the last one (alpha = 1: the clean embeddings, so the clean run)."""
    return alpha >= 1.0


def _metric_sum(
    b: Batch, logits: torch.Tensor, clean_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.stack(
        [
            m(logits[i : i + 1].clone(), clean_logits[i].detach().clone())[0].float()
            for i, m in enumerate(b.metrics)
        ]
    )
    return values.sum(), values.detach()


def attribute(
    model: Model,
    b: Batch,
    lay: Layout,
    *,
    steps: int,
    by_position: bool,
    cancel: threading.Event | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Edge scores of one chunk: `scores` [B, S, R] (or [B, S, R, T] by position, pad columns zero), and the
    clean and corrupt metrics [B]. steps = 0: EAP (gradient at the corrupt run); steps = n: EAP-IG with the
    embeddings at corrupt + k/n (clean - corrupt), k = 1..n, the gradients averaged."""
    blocks = _blocks(model)
    mask = b.mask
    with frozen(model), torch.no_grad():
        clean = forward(model, blocks, b.clean) if steps == 0 else None
        corrupt = forward(model, blocks, b.corrupt) if steps > 0 else None
    check_cancel(cancel)
    alphas: list[float | None] = [None] if steps == 0 else [k / steps for k in range(1, steps + 1)]
    if steps > 0:
        embed = model.hf.get_input_embeddings()
        with torch.no_grad():
            e_clean = embed(b.clean["input_ids"])
            e_corrupt = embed(b.corrupt["input_ids"])
    # the clean logits are the reference of a metric that reads them (KL): one more forward for EAP-IG then
    ref_logits = clean.logits if clean is not None else None
    if ref_logits is None and b.needs_clean:
        with torch.no_grad():
            ref_logits = forward(model, blocks, b.clean).logits
    acc: list[torch.Tensor] | None = None
    with frozen(model):
        for step, alpha in enumerate(alphas):
            check_cancel(cancel)
            if on_step is not None:
                on_step(step, len(alphas))
            if alpha is None:
                run = forward(model, blocks, b.corrupt, grad=True)
                corrupt = run
            else:
                e = e_clean if k_is_last(alpha) else e_corrupt + alpha * (e_clean - e_corrupt)
                e = e.detach().clone().requires_grad_(True)
                run = forward(model, blocks, b.corrupt, grad=True, embeds=e)
                if k_is_last(alpha):
                    clean = run
            value, _ = _metric_sum(b, run.logits, ref_logits if ref_logits is not None else run.logits)
            proj, mlp, final = _grads(run, value)
            g = receiver_grads(blocks, run, proj, mlp, final, lay)
            acc = g if acc is None else [a + x for a, x in zip(acc, g, strict=True)]
            del run
    assert acc is not None and clean is not None and corrupt is not None
    grads = [a / len(alphas) for a in acc]
    check_additive(blocks, clean, model)
    # senders' clean - corrupt outputs, written once into [B, S, T, d] (a prefix of senders is then a view, and
    # each block of receivers one batched matmul); a head's is W_O,h (z_clean - z_corrupt), pad positions zero
    x0 = clean.x_attn[0]
    d = torch.empty((x0.shape[0], lay.n_senders, *x0.shape[1:]), dtype=x0.dtype)
    d[:, 0] = (clean.x_attn[0] - corrupt.x_attn[0]).detach()
    for layer, blk in enumerate(blocks):
        dz = (clean.z[layer] - corrupt.z[layer]).detach()
        at = lay.head(layer, 0)
        d[:, at : at + lay.n_heads] = (
            torch.einsum("bthk,hkd->bhtd", dz.view(*dz.shape[:2], lay.n_heads, -1), blk.w_o) * blk.scale
        )
        d[:, lay.mlp(layer)] = (clean.mlp_out[layer] - corrupt.mlp_out[layer]).detach() * blk.scale
    d.mul_(mask[:, None, :, None])
    n_b, n_t = mask.shape
    shape = (n_b, lay.n_senders, lay.n_receivers) + ((n_t,) if by_position else ())
    scores = torch.zeros(shape, dtype=torch.float32)
    # Receivers in blocks of a few layers (about 100 at a time): one matmul per block against the senders
    # below its top receiver. Entries of senders above a receiver are computed too and are not edges (the
    # caller masks them with `Layout.valid`); wider blocks make the contraction compute-bound, not memory-bound.
    per_block = max(1, 96 // lay.per_layer_receivers)
    r0 = 0
    for at in range(0, len(grads), per_block):
        block = grads[at : at + per_block]
        g = torch.cat(block) if len(block) > 1 else block[0]
        n_r = g.shape[0]
        s_hi = max(lay.senders_before(r) for r in range(r0, r0 + n_r))
        ds, gs = d[:, :s_hi], g.transpose(0, 1)  # [B, s, T, d], [B, r, T, d]
        if by_position:
            scores[:, :s_hi, r0 : r0 + n_r] = torch.einsum("bstd,brtd->bsrt", ds, gs).float()
        else:
            flat = gs.reshape(n_b, n_r, -1).transpose(1, 2)  # [B, T d, r]
            scores[:, :s_hi, r0 : r0 + n_r] = torch.bmm(ds.reshape(n_b, s_hi, -1), flat).float()
        r0 += n_r
    with torch.no_grad():
        ref = (ref_logits if ref_logits is not None else clean.logits).detach()
        clean_m = _metric_sum(b, ref, ref)[1]
        corrupt_m = _metric_sum(b, corrupt.logits, ref)[1]
    return {"scores": scores, "clean": clean_m, "corrupt": corrupt_m}


def mixed(
    model: Model,
    base: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor] | Run,
    keep: torch.Tensor,
    metrics: Sequence[Any],
    lay: Layout,
    clean_logits: torch.Tensor,
    cancel: threading.Event | None = None,
    blocks: list[_Block] | None = None,
) -> torch.Tensor:
    """The metric [B] of the base input run with every receiver's input = the reference run's stream + the sum,
    over the edges kept (keep [B, S, R, T] bool, per example and position), of (sender's current output - its
    reference output); a receiver that keeps every edge at a position reads its own stream there unchanged.
    `reference` is the reference inputs or their recorded run (`forward`), to share one run between calls;
    `blocks` the weights that run was recorded with (read again when not given)."""
    blocks = blocks if blocks is not None else _blocks(model)
    if isinstance(reference, Run):
        ref = reference
    else:
        with frozen(model), torch.no_grad():
            ref = forward(model, blocks, reference)
    check_cancel(cancel)
    ref_senders = sender_outputs(blocks, ref, lay.n_heads)
    valid = torch.from_numpy(lay.valid())
    full = (keep | ~valid[None, :, :, None]).all(dim=1)  # [B, R, T]: every edge into r at t kept
    x0 = ref.x_attn[0]
    deltas = torch.zeros((lay.n_senders, *x0.shape), dtype=x0.dtype)  # current - reference, sender order
    state: dict[str, int] = {"senders": 0, "heads": -1, "mlp": -1}

    def mix(r_lo: int, r_hi: int, stream_ref: torch.Tensor, stream_cur: torch.Tensor) -> torch.Tensor:
        """[n_r, B, T, d] rebuilt inputs of receivers r_lo..r_hi (which see the same senders): from the
        reference stream plus the kept edges' deltas, or from the current stream minus the dropped edges'
        deltas, whichever names fewer senders (the same sum)."""
        n_s = lay.senders_before(r_lo)
        assert state["senders"] >= n_s, "a receiver ran before its senders were recorded"
        k = keep[:, :n_s, r_lo:r_hi]  # [B, S, n_r, T]
        kept = torch.nonzero(k.any(dim=(0, 2, 3))).flatten()
        dropped = torch.nonzero((~k).any(dim=(0, 2, 3))).flatten()
        if len(kept) <= len(dropped):
            out = stream_ref.unsqueeze(0).expand(r_hi - r_lo, *stream_ref.shape).clone()
            sign, use, which = 1.0, k, kept
        else:
            out = stream_cur.unsqueeze(0).expand(r_hi - r_lo, *stream_cur.shape).clone()
            sign, use, which = -1.0, ~k, dropped
        if len(which):  # one batched contraction over the named senders
            w = use[:, which].to(out.dtype)  # [B, s, n_r, T]
            out.add_(torch.einsum("bsrt,sbtd->rbtd", w, deltas[which]), alpha=sign)
        f = full[:, r_lo:r_hi].permute(1, 0, 2).unsqueeze(-1)  # [n_r, B, T, 1]
        return torch.where(f, stream_cur.unsqueeze(0), out)

    def add_heads(layer: int) -> None:
        if state["heads"] >= layer:
            return
        z = run.z[layer]
        zh = z.view(*z.shape[:2], lay.n_heads, -1)
        heads = torch.einsum("bthk,hkd->hbtd", zh, blocks[layer].w_o) * blocks[layer].scale
        at = lay.head(layer, 0)
        deltas[at : at + lay.n_heads] = heads - ref_senders[layer][: lay.n_heads]
        state["heads"] = layer
        state["senders"] = max(state["senders"], at + lay.n_heads)

    def add_mlp(layer: int) -> None:
        if state["mlp"] >= layer:
            return
        add_heads(layer)
        at = lay.mlp(layer)
        deltas[at] = run.mlp_out[layer] * blocks[layer].scale - ref_senders[layer][lay.n_heads]
        state["mlp"] = layer
        state["senders"] = at + 1

    def rewrite(kind: str, layer: int, value: torch.Tensor) -> torch.Tensor | None:
        b = blocks[layer]
        if kind.startswith("proj"):
            i = int(kind[4:])
            if layer > 0:
                add_mlp(layer - 1)  # every sender below this block is known now
            out = None
            for s in "qkv":
                j, cols = b.cols[s]
                n = cols.shape[0]
                r_lo = lay.receiver(layer, s, 0)
                if j != i or bool(full[:, r_lo : r_lo + n].all()):
                    continue
                x = mix(r_lo, r_lo + n, ref.x_attn[layer], run.x_attn[layer])
                u = b.attn_norm.forward(x)  # [n, B, T, d] (forward: not through our own hooks)
                w, bias = b.weights[i]
                out = value.clone() if out is None else out
                for h in range(n):
                    out[..., cols[h]] = (u[h] @ w[:, cols[h]] + bias[cols[h]]).to(out.dtype)
            return out
        if kind == "mlp_in":
            add_heads(layer)
            r = lay.receiver(layer, "mlp")
            if bool(full[:, r].all()):
                return None
            x = mix(r, r + 1, ref.x_mlp[layer], run.x_mlp[layer])[0]
            return b.mlp_norm.forward(x).to(value.dtype)
        if kind == "final":
            add_mlp(model.n_layers - 1)
            r = lay.logits
            if bool(full[:, r].all()):
                return None
            return mix(r, r + 1, ref.x_final, value)[0].to(value.dtype)
        return None

    run = _empty_run(model, blocks)

    def first_block(_m: Any, args: tuple, kwargs: dict) -> None:
        if state["senders"] == 0:
            deltas[0] = _arg(args, kwargs) - ref.x_attn[0]
            state["senders"] = 1

    norm0 = blocks[0].attn_norm
    with frozen(model), torch.no_grad():
        handle = norm0.register_forward_pre_hook(mine(first_block), with_kwargs=True)  # before the recorder
        try:
            with _hooks(model, blocks, run, rewrite, False):
                run.logits = model.hf(**base, logits_to_keep=1).logits[:, -1].float()
        finally:
            handle.remove()
        values = torch.stack(
            [
                m(run.logits[i : i + 1].clone(), clean_logits[i].clone())[0].float()
                for i, m in enumerate(metrics)
            ]
        )
    return values
