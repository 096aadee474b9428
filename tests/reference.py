"""An independent reference implementation of the workbench ops, for testing the engine.

Plain PyTorch forward hooks on a raw transformers model; no nnsight and nothing from `workbench`.
Everything here is deliberately naive: one forward pass per patched cell, explicit loops, float32.

Sites (per block `l`):
  resid_pre  the block's input            resid_post  the block's output
  attn_out   what the attention sub-block adds to the residual stream
  mlp_out    what the MLP sub-block adds to the residual stream
  head       the input of the attention output projection, sliced h*d_head:(h+1)*d_head
For gemma2 and gemma3_text attn_out / mlp_out are the outputs of post_attention_layernorm /
post_feedforward_layernorm; for gpt_neox (parallel residual) and phi the attention and MLP both read the block
input; for granite they are the self_attn / mlp outputs, which the block multiplies by
config.residual_multiplier before adding them (and its logits are lm_head's output / config.logits_scaling).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head")


@dataclass(frozen=True)
class Family:
    layers: str  # ModuleList of blocks, from the top model
    final_norm: str
    unembed: str
    attn: str  # attention module, relative to a block (its output[1] = eager attention weights)
    attn_out: str  # module whose output (or output[0]) is what attention adds to the stream
    mlp_out: str  # module whose output is what the MLP adds to the stream
    out_proj: str  # attention output projection; its input holds the per-head outputs


_LLAMA_LIKE = Family(
    layers="model.layers",
    final_norm="model.norm",
    unembed="lm_head",
    attn="self_attn",
    attn_out="self_attn",
    mlp_out="mlp",
    out_proj="self_attn.o_proj",
)

# Our own table: written from the transformers 5.x modeling files, independent of workbench's.
FAMILY_TABLE: dict[str, Family] = {
    "gpt2": Family(
        layers="transformer.h",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        attn="attn",
        attn_out="attn",
        mlp_out="mlp",
        out_proj="attn.c_proj",
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,  # Qwen3Attention: q_norm / k_norm act inside self_attn, after q_proj / k_proj
    "olmo": _LLAMA_LIKE,  # OlmoLayerNorm has no parameters; clip_qkv clamps inside self_attn
    "granite": _LLAMA_LIKE,  # GraniteDecoderLayer: residual + self_attn(...) * residual_multiplier
    "gemma": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gemma2": Family(
        layers="model.layers",
        final_norm="model.norm",
        unembed="lm_head",
        attn="self_attn",
        attn_out="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",
        out_proj="self_attn.o_proj",
    ),
    "gpt_neox": Family(
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
        attn="attention",
        attn_out="attention",
        mlp_out="mlp",
        out_proj="attention.dense",
    ),
    "phi": Family(
        layers="model.layers",
        final_norm="model.final_layernorm",
        unembed="lm_head",
        attn="self_attn",
        attn_out="self_attn",
        mlp_out="mlp",
        out_proj="self_attn.dense",
    ),
}
# Gemma3DecoderLayer: Gemma-2's four norms around attention and MLP (plus q/k norms inside self_attn)
FAMILY_TABLE["gemma3_text"] = FAMILY_TABLE["gemma2"]


# ----------------------------------------------------------------------------------------------
# model geometry


def family(hf) -> Family:
    mt = hf.config.model_type
    if mt not in FAMILY_TABLE:
        raise KeyError(f"reference has no table entry for {mt!r}")
    return FAMILY_TABLE[mt]


def _get(root, path: str):
    mod = root
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


def blocks(hf):
    return _get(hf, family(hf).layers)


def n_layers(hf) -> int:
    return len(blocks(hf))


def n_heads(hf) -> int:
    cfg = hf.config
    return getattr(cfg, "num_attention_heads", None) or cfg.n_head


def residual_multiplier(hf) -> float:
    """What the block multiplies attn_out and mlp_out by before adding them to the stream (Granite)."""
    return float(hf.config.residual_multiplier) if hf.config.model_type == "granite" else 1.0


def d_head(hf) -> int:
    proj = _get(blocks(hf)[0], family(hf).out_proj)
    d_in = proj.in_features if hasattr(proj, "in_features") else proj.weight.shape[0]  # Conv1D: [in, out]
    return d_in // n_heads(hf)


def tokens(tok, prompt: str) -> torch.Tensor:
    return tok(prompt, return_tensors="pt").input_ids


def single_token(tok, s: str) -> int:
    ids = tok(s, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"{s!r} is {len(ids)} tokens")
    return ids[0]


# ----------------------------------------------------------------------------------------------
# metrics (callables logits[B, V] -> [B]), independent of workbench's


def logit_diff(tok, target: str, foil: str) -> Callable[[torch.Tensor], torch.Tensor]:
    t, f = single_token(tok, target), single_token(tok, foil)
    return lambda logits: logits[:, t] - logits[:, f]


def prob(tok, target: str) -> Callable[[torch.Tensor], torch.Tensor]:
    t = single_token(tok, target)
    return lambda logits: torch.softmax(logits.float(), -1)[:, t]


def logprob(tok, target: str) -> Callable[[torch.Tensor], torch.Tensor]:
    t = single_token(tok, target)
    return lambda logits: torch.log_softmax(logits.float(), -1)[:, t]


# ----------------------------------------------------------------------------------------------
# hooks


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new, *x[1:]) if isinstance(x, tuple) else new


@contextlib.contextmanager
def site_hook(hf, site: str, layer: int, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Call fn(activation) at (site, layer); if fn returns a tensor it replaces the activation.

    The activation is [B, T, d_model] for residual/attn/mlp sites and [B, T, n_heads*d_head] for heads.
    """
    if site not in SITES:
        raise KeyError(site)
    fam = family(hf)
    block = blocks(hf)[layer]
    if site in ("resid_pre", "head"):
        module = block if site == "resid_pre" else _get(block, fam.out_proj)

        def pre(mod, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            key = "hidden_states" if "hidden_states" in kwargs else "input"
            new = fn(kwargs[key])
            return None if new is None else (args, {**kwargs, key: new})

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        module = {
            "resid_post": block,
            "attn_out": _get(block, fam.attn_out),
            "mlp_out": _get(block, fam.mlp_out),
        }[site]

        def post(mod, args, output):
            new = fn(_first(output))
            return None if new is None else _replace_first(output, new)

        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def hooks(hf, specs: Sequence[tuple[str, int, Callable]]):
    with contextlib.ExitStack() as stack:
        for site, layer, fn in specs:
            stack.enter_context(site_hook(hf, site, layer, fn))
        yield


def run_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    """Full logits [B, T, V] in float32 (HF's own forward, including any final softcapping)."""
    with torch.no_grad():
        return hf(input_ids=ids, use_cache=False).logits.float()


def run_last_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    """Last-position logits [B, V] in float32, skipping the unembedding of other positions if HF can."""
    with torch.no_grad():
        if "logits_to_keep" in inspect.signature(hf.forward).parameters:
            return hf(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        return hf(input_ids=ids, use_cache=False).logits[:, -1].float()


def capture(hf, ids: torch.Tensor, site: str, layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """Activations {layer: [T, width]} of one unpatched forward (batch 1)."""
    layers = range(n_layers(hf)) if layers is None else layers
    out: dict[int, torch.Tensor] = {}

    def grab(layer):
        def fn(x):
            out[layer] = x[0].detach().clone()

        return fn

    with hooks(hf, [(site, layer, grab(layer)) for layer in layers]):
        run_logits(hf, ids)
    return out


def _cols(hf, site: str, head: int | None) -> slice:
    if site == "head" and head is not None:
        dh = d_head(hf)
        return slice(head * dh, (head + 1) * dh)
    return slice(None)


def _setter(hf, site, position, head, values: torch.Tensor):
    """fn that writes `values` ([T or 1, width] or broadcastable) into the activation at position/head."""
    cols = _cols(hf, site, head)
    pos = slice(None) if position is None else position

    def fn(x):
        x = x.clone()
        v = values.to(x.dtype)
        if position is None:
            x[:, pos, cols] = v[..., cols] if v.dim() == 2 else v[cols]
        else:
            x[:, pos, cols] = v[cols] if v.dim() == 1 else v[position, cols]
        return x

    return fn


def _final(logits: torch.Tensor):
    return logits[:, -1, :]


def _summary(logits_last: torch.Tensor, k: int = 5) -> dict:
    p = torch.softmax(logits_last[0].float(), -1)
    top = torch.topk(p, k)
    return {"top_ids": top.indices.numpy().astype("int32"), "top_probs": top.values.numpy().astype("float32")}


# ----------------------------------------------------------------------------------------------
# patching


def reference_patch(
    hf,
    tok,
    clean: str,
    corrupt: str,
    metric,
    site: str = "resid_pre",
    layer: int = 0,
    position: int | None = None,
    head: int | None = None,
    source_layer: int | None = None,
    source_position: int | None = None,
    k: int = 5,
) -> dict:
    """Run clean, capture (site, source_layer); run corrupt with it written at (layer, position, head)."""
    c_ids, x_ids = tokens(tok, clean), tokens(tok, corrupt)
    src_layer = layer if source_layer is None else source_layer
    act = capture(hf, c_ids, site, [src_layer])[src_layer]  # [T, width]
    if source_position is not None:
        values = act[source_position]  # one vector, written at `position` (or everywhere)
    elif position is not None:
        values = act[position]
    else:
        values = act
    with hooks(hf, [(site, layer, _setter(hf, site, position, head, values))]):
        logits = run_logits(hf, x_ids)
    out = {
        "value": float(metric(_final(logits))[0]),
        "clean": float(metric(_final(run_logits(hf, c_ids)))[0]),
        "corrupt": float(metric(_final(run_logits(hf, x_ids)))[0]),
    }
    out.update(_summary(_final(logits), k))
    return out


def reference_patch_sweep(
    hf,
    tok,
    clean: str,
    corrupt: str,
    metric,
    site: str = "resid_pre",
    by_position: bool = False,
    batch: bool = False,
    layers: Sequence[int] | None = None,
) -> dict:
    """One corrupt forward per cell. [L, T] for resid/attn/mlp; [L, H] or [L, T, H] for heads.

    batch=True runs the cells of one layer as the rows of one batched forward (same numbers up to float
    noise; only for speed on big models).
    """
    c_ids, x_ids = tokens(tok, clean), tokens(tok, corrupt)
    L, T, H = n_layers(hf), x_ids.shape[1], n_heads(hf)
    acts = capture(hf, c_ids, site, layers)
    clean_m = float(metric(_final(run_logits(hf, c_ids)))[0])
    corrupt_m = float(metric(_final(run_logits(hf, x_ids)))[0])

    if site != "head":
        cells = [(p, None) for p in range(T)]
    elif not by_position:
        cells = [(None, h) for h in range(H)]
    else:
        cells = [(p, h) for p in range(T) for h in range(H)]

    def cell(layer, position, head):
        values = acts[layer] if position is None else acts[layer][position]
        with hooks(hf, [(site, layer, _setter(hf, site, position, head, values))]):
            return float(metric(_final(run_logits(hf, x_ids)))[0])

    def layer_batched(layer):
        setters = [_setter(hf, site, p, h, acts[layer] if p is None else acts[layer][p]) for p, h in cells]

        def fn(x):
            return torch.cat([s(x[i : i + 1]) for i, s in enumerate(setters)])

        with hooks(hf, [(site, layer, fn)]):
            return metric(run_last_logits(hf, x_ids.expand(len(cells), -1))).tolist()

    layers = list(range(L)) if layers is None else list(layers)  # a subset: rows in this order
    rows = []
    for layer in layers:
        row = layer_batched(layer) if batch else [cell(layer, p, h) for p, h in cells]
        rows.append(row)
    values = torch.tensor(rows, dtype=torch.float32)
    if site == "head" and by_position:
        values = values.reshape(len(layers), T, H)
    return {
        "values": values.numpy(),
        "clean": clean_m,
        "corrupt": corrupt_m,
        "normalized": ((values - corrupt_m) / (clean_m - corrupt_m)).numpy(),
    }


# ----------------------------------------------------------------------------------------------
# ablation


def ablation_values(hf, tok, prompt: str, site: str, layer: int, method: str, reference: str | None = None):
    """What an ablated activation is replaced with: [T, width] (or [width] for mean)."""
    ids = tokens(tok, prompt)
    if method == "zero":
        act = capture(hf, ids, site, [layer])[layer]
        return torch.zeros_like(act)
    if method == "mean":
        if reference is None:
            return capture(hf, ids, site, [layer])[layer].mean(0)  # mean over the prompt's positions
        refs = [reference] if isinstance(reference, str) else list(reference)
        # mean over every token of the reference prompts
        return torch.cat([capture(hf, tokens(tok, r), site, [layer])[layer] for r in refs]).mean(0)
    if method == "resample":
        if reference is None:
            raise ValueError("resample needs a reference prompt")
        return capture(hf, tokens(tok, reference), site, [layer])[layer]
    raise KeyError(method)


def reference_ablate(
    hf,
    tok,
    prompt: str,
    metric,
    site: str = "mlp_out",
    layer: int = 0,
    position: int | None = None,
    head: int | None = None,
    method: str = "zero",
    reference: str | None = None,
    k: int = 5,
) -> dict:
    ids = tokens(tok, prompt)
    values = ablation_values(hf, tok, prompt, site, layer, method, reference)
    with hooks(hf, [(site, layer, _setter(hf, site, position, head, values))]):
        logits = run_logits(hf, ids)
    out = {"value": float(metric(_final(logits))[0]), "clean": float(metric(_final(run_logits(hf, ids)))[0])}
    out.update(_summary(_final(logits), k))
    return out


def reference_ablate_sweep(
    hf,
    tok,
    prompt: str,
    metric,
    site: str,
    method: str = "zero",
    reference: str | None = None,
    by_position=False,
) -> dict:
    ids = tokens(tok, prompt)
    L, T, H = n_layers(hf), ids.shape[1], n_heads(hf)
    per_layer = {
        layer: ablation_values(hf, tok, prompt, site, layer, method, reference) for layer in range(L)
    }

    def cell(layer, position, head):
        with hooks(hf, [(site, layer, _setter(hf, site, position, head, per_layer[layer]))]):
            return float(metric(_final(run_logits(hf, ids)))[0])

    if site != "head":
        values = [[cell(layer, p, None) for p in range(T)] for layer in range(L)]
    elif not by_position:
        values = [[cell(layer, None, h) for h in range(H)] for layer in range(L)]
    else:
        values = [[[cell(layer, p, h) for h in range(H)] for p in range(T)] for layer in range(L)]
    return {
        "values": torch.tensor(values, dtype=torch.float32).numpy(),
        "clean": float(metric(_final(run_logits(hf, ids)))[0]),
    }


# ----------------------------------------------------------------------------------------------
# logit lens


def unembed(hf, resid: torch.Tensor) -> torch.Tensor:
    """resid [..., d_model] -> logits [..., V] via the final norm, the unembedding, Granite's logits_scaling
    (GraniteForCausalLM.forward divides by it) and Gemma2's softcap."""
    fam = family(hf)
    with torch.no_grad():
        logits = _get(hf, fam.unembed)(_get(hf, fam.final_norm)(resid)).float()
        if hf.config.model_type == "granite":
            logits = logits / hf.config.logits_scaling
        cap = getattr(hf.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    return logits


def reference_logit_lens(
    hf, tok, prompt: str, top_k: int = 5, intervention_hooks: Sequence[tuple[str, int, Callable]] = ()
) -> dict:
    """Per layer l: resid_post[l] -> final norm -> unembedding -> softmax. Row L-1 is the model's output."""
    ids = tokens(tok, prompt)
    L = n_layers(hf)
    posts: dict[int, torch.Tensor] = {}

    def grab(layer):
        def fn(x):
            posts[layer] = x[0].detach().clone()

        return fn

    # interventions first, so the capture on the same module sees the patched value
    with (
        hooks(hf, list(intervention_hooks)),
        hooks(hf, [("resid_post", layer, grab(layer)) for layer in range(L)]),
    ):
        final_logits = run_logits(hf, ids)[0]
    logits = torch.stack([unembed(hf, posts[layer]) for layer in range(L)])  # [L, T, V]
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    top = torch.topk(p, top_k, dim=-1)
    entropy = -(p * logp).sum(-1)
    logp_final = logp[-1]
    kl = (logp_final.exp() * (logp_final - logp)).sum(-1)  # KL(final || layer)
    return {
        "probs": p,
        "logits": logits,
        "model_logits": final_logits,
        "top_ids": top.indices.numpy().astype("int32"),
        "top_probs": top.values.numpy().astype("float32"),
        "entropy": entropy.numpy().astype("float32"),
        "kl": kl.numpy().astype("float32"),
    }


def lens_prob(lens: dict, token_id: int):
    return lens["probs"][..., token_id].numpy().astype("float32")


def lens_rank_bounds(lens: dict, token_id: int, tol: float = 1e-7):
    """(lowest, highest) 0-based rank that float32 noise of size `tol` on the probabilities allows."""
    p = lens["probs"]
    pt = p[..., token_id : token_id + 1]
    lo = (p > pt + tol).sum(-1)
    hi = (p > pt - tol).sum(-1) - 1
    return lo.numpy().astype("int32"), hi.numpy().astype("int32")


def lens_rank(lens: dict, token_id: int):
    """0-based rank: how many vocabulary entries have a strictly higher probability."""
    p = lens["probs"]
    return (p > p[..., token_id : token_id + 1]).sum(-1).numpy().astype("int32")


# ----------------------------------------------------------------------------------------------
# attention


@contextlib.contextmanager
def eager_attention(hf):
    old = hf.config._attn_implementation
    if old != "eager":
        hf.set_attn_implementation("eager")
    try:
        yield
    finally:
        if old != "eager":
            hf.set_attn_implementation(old)


def reference_attention(hf, tok, prompt: str) -> torch.Tensor:
    """Eager attention probabilities [L, H, T, T] (GQA already expanded to the query heads)."""
    ids = tokens(tok, prompt)
    fam = family(hf)
    pats: dict[int, torch.Tensor] = {}
    handles = []
    for layer, block in enumerate(blocks(hf)):

        def fn(mod, args, output, layer=layer):
            pats[layer] = output[1][0].detach().float().clone()

        handles.append(_get(block, fam.attn).register_forward_hook(fn))
    try:
        with eager_attention(hf):
            run_logits(hf, ids)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([pats[layer] for layer in range(n_layers(hf))])


# ----------------------------------------------------------------------------------------------
# attribution patching


def reference_attribution_patch(
    hf, tok, clean: str, corrupt: str, metric, site: str = "resid_pre", by_position: bool = False
) -> torch.Tensor:
    """(clean_act - corrupt_act) . d metric / d act, gradient taken at the corrupt run.

    Summed over d_model: [L, T]. Heads: summed over d_head, [L, T, H] if by_position else summed over
    positions too, [L, H].
    """
    c_ids, x_ids = tokens(tok, clean), tokens(tok, corrupt)
    L = n_layers(hf)
    clean_acts = capture(hf, c_ids, site)
    acts: dict[int, torch.Tensor] = {}

    def keep(layer):
        def fn(x):
            if x.requires_grad:
                x.retain_grad()
            acts[layer] = x
            return None

        return fn

    # make the graph reach every site even if the parameters are frozen
    emb = hf.get_input_embeddings()
    h_emb = emb.register_forward_hook(lambda m, a, out: out.detach().requires_grad_(True))
    try:
        with torch.enable_grad(), hooks(hf, [(site, layer, keep(layer)) for layer in range(L)]):
            logits = hf(input_ids=x_ids, use_cache=False).logits.float()
            m = metric(logits[:, -1, :]).sum()
            m.backward()
    finally:
        h_emb.remove()
    hf.zero_grad(set_to_none=True)
    missing = [layer for layer in range(L) if acts[layer].grad is None]
    if missing:
        raise RuntimeError(f"reference: no gradient reached {site} at layers {missing}")
    rows = []
    for layer in range(L):
        a = acts[layer]
        g = a.grad[0].detach()
        diff = clean_acts[layer] - a[0].detach()
        prod = diff * g  # [T, width]
        if site == "head":
            H = n_heads(hf)
            prod = prod.reshape(prod.shape[0], H, -1).sum(-1)  # [T, H]
            rows.append(prod if by_position else prod.sum(0))
        else:
            rows.append(prod.sum(-1))
    return torch.stack(rows).float()


# ----------------------------------------------------------------------------------------------
# steering


def reference_steer(
    hf,
    tok,
    prompt: str,
    vector: torch.Tensor | None,
    layer: int,
    scale: float = 1.0,
    max_new_tokens: int = 10,
) -> dict:
    """Greedy generation with scale*vector added to block `layer`'s input at every position."""
    ids = tokens(tok, prompt)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ctx = contextlib.nullcontext()
    if vector is not None:
        v = vector.detach().reshape(-1)
        ctx = site_hook(hf, "resid_pre", layer, lambda x: x + scale * v.to(x.dtype))
    with torch.no_grad(), ctx:
        out = hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    new = out[0, ids.shape[1] :]
    return {
        "ids": new.tolist(),
        "text": tok.decode(new, skip_special_tokens=True),
        "full": tok.decode(out[0]),
    }


def steering_vector(hf, tok, positive: str, negative: str, layer: int, how: str = "last") -> torch.Tensor:
    """resid_pre[layer] of positive minus negative, at the last position ('last') or averaged ('mean')."""
    a = capture(hf, tokens(tok, positive), "resid_pre", [layer])[layer]
    b = capture(hf, tokens(tok, negative), "resid_pre", [layer])[layer]
    if how == "last":
        return a[-1] - b[-1]
    return a.mean(0) - b.mean(0)


def kl_div(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    lp, lq = F.log_softmax(p_logits.float(), -1), F.log_softmax(q_logits.float(), -1)
    return float((lp.exp() * (lp - lq)).sum())
