"""An independent reference implementation of the workbench ops, for testing the engine.

Plain PyTorch forward hooks on a raw transformers model; no nnsight and nothing from `workbench`.
Everything here is deliberately naive: one forward pass per patched cell, explicit loops, float32.

Sites (per block `l`):
  resid_pre  the block's input            resid_post  the block's output
  attn_out   what the attention sub-block adds to the residual stream
  mlp_out    what the MLP sub-block adds to the residual stream
  head       the input of the attention output projection, sliced h*d_head:(h+1)*d_head
  embed      the token embedding module's output (layer 0 only)
  resid_mid  the input of the norm in front of the MLP (post_attention_layernorm, gpt2 ln_2, gemma2
             pre_feedforward_layernorm); phi and parallel-residual gpt_neox have no such stream
  q, k, v    one head's columns of the query/key/value projection output (before rotary); k and v heads
             are the key-value heads. Fused projections: gpt2 c_attn [q | k | v] (each n_embd wide), phi3
             qkv_proj [H*d | kv*d | kv*d], gpt_neox query_key_value per head [q_h k_h v_h] (3*d each)
  pattern    one head's eager attention probabilities [T_q, T_k]. A patched pattern P replaces that head's
             slice of the output projection's input by P @ V_h, V_h the run's own value columns of the
             head's key-value head (h // (H / kv)); the position is the query row.
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

import numpy as np
import torch
import torch.nn.functional as F

SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head")
NEW_SITES = ("embed", "resid_mid", "q", "k", "v", "pattern")
ALL_SITES = SITES + NEW_SITES
HEAD_SITES = ("head", "q", "k", "v", "pattern")  # one slice per head


@dataclass(frozen=True)
class Family:
    layers: str  # ModuleList of blocks, from the top model
    final_norm: str
    unembed: str
    attn: str  # attention module, relative to a block (its output[1] = eager attention weights)
    attn_out: str  # module whose output (or output[0]) is what attention adds to the stream
    mlp_out: str  # module whose output is what the MLP adds to the stream
    out_proj: str  # attention output projection; its input holds the per-head outputs
    embed: str  # token embedding module, from the top model
    # query/key/value projections, relative to a block: three separate modules (q, k, v), or one fused
    # module whose columns are laid out as `qkv_layout` says ("split" [q | k | v] or "interleaved" per head)
    qkv: tuple[str, ...]
    qkv_layout: str = "separate"
    mid_norm: str = ""  # module whose input is resid_mid ("" when attention and MLP read the same input)


_SEPARATE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")

_LLAMA_LIKE = Family(
    layers="model.layers",
    final_norm="model.norm",
    unembed="lm_head",
    attn="self_attn",
    attn_out="self_attn",
    mlp_out="mlp",
    out_proj="self_attn.o_proj",
    embed="model.embed_tokens",
    qkv=_SEPARATE,
    mid_norm="post_attention_layernorm",
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
        embed="transformer.wte",
        qkv=("attn.c_attn",),
        qkv_layout="split",
        mid_norm="ln_2",
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,  # Qwen3Attention: q_norm / k_norm act inside self_attn, after q_proj / k_proj
    "olmo": _LLAMA_LIKE,  # OlmoLayerNorm has no parameters; clip_qkv clamps inside self_attn
    "granite": _LLAMA_LIKE,  # GraniteDecoderLayer: residual + self_attn(...) * residual_multiplier
    "gemma": _LLAMA_LIKE,
    "phi3": Family(
        layers="model.layers",
        final_norm="model.norm",
        unembed="lm_head",
        attn="self_attn",
        attn_out="self_attn",
        mlp_out="mlp",
        out_proj="self_attn.o_proj",
        embed="model.embed_tokens",
        qkv=("self_attn.qkv_proj",),
        qkv_layout="split",
        mid_norm="post_attention_layernorm",
    ),
    "gemma2": Family(
        layers="model.layers",
        final_norm="model.norm",
        unembed="lm_head",
        attn="self_attn",
        attn_out="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",
        out_proj="self_attn.o_proj",
        embed="model.embed_tokens",
        qkv=_SEPARATE,
        mid_norm="pre_feedforward_layernorm",
    ),
    "gpt_neox": Family(
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
        attn="attention",
        attn_out="attention",
        mlp_out="mlp",
        out_proj="attention.dense",
        embed="gpt_neox.embed_in",
        qkv=("attention.query_key_value",),
        qkv_layout="interleaved",
        mid_norm="post_attention_layernorm",  # only read as resid_mid when use_parallel_residual=False
    ),
    "phi": Family(
        layers="model.layers",
        final_norm="model.final_layernorm",
        unembed="lm_head",
        attn="self_attn",
        attn_out="self_attn",
        mlp_out="mlp",
        out_proj="self_attn.dense",
        embed="model.embed_tokens",
        qkv=_SEPARATE,
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


def n_kv_heads(hf) -> int:
    """Key-value heads (grouped-query attention); configs without the field have one per query head."""
    return getattr(hf.config, "num_key_value_heads", None) or n_heads(hf)


def n_site_heads(hf, site: str) -> int:
    return n_kv_heads(hf) if site in ("k", "v") else n_heads(hf)


def mid_norm(hf) -> str:
    """Path (from a block) of the module whose input is resid_mid; KeyError for parallel blocks."""
    path = family(hf).mid_norm
    if not path or getattr(hf.config, "use_parallel_residual", False):
        raise KeyError(f"{hf.config.model_type}: attention and MLP read the same input, no resid_mid")
    return path


def qkv_columns(hf, site: str, head: int) -> tuple[str, slice]:
    """(projection module path from a block, columns of its output) holding head `head` of q, k or v."""
    fam = family(hf)
    H, KV, d = n_heads(hf), n_kv_heads(hf), d_head(hf)
    i = "qkv".index(site)
    if fam.qkv_layout == "separate":
        return fam.qkv[i], slice(head * d, (head + 1) * d)
    # split: [q (H*d) | k (kv*d) | v (kv*d)]; interleaved: view(B, T, H, 3*d), each head's [q | k | v]
    split = fam.qkv_layout == "split"
    start = (0, H * d, H * d + KV * d)[i] + head * d if split else head * 3 * d + i * d
    return fam.qkv[0], slice(start, start + d)


def kv_head_of(hf, head: int) -> int:
    """The key-value head a query head reads (grouped-query attention)."""
    return head // (n_heads(hf) // n_kv_heads(hf))


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


def _pre_hook(module, fn):
    """Pre-hook calling fn(first input); a returned tensor replaces that input."""

    def pre(mod, args, kwargs):
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        key = "hidden_states" if "hidden_states" in kwargs else "input"
        new = fn(kwargs[key])
        return None if new is None else (args, {**kwargs, key: new})

    return module.register_forward_pre_hook(pre, with_kwargs=True)


def _post_hook(module, fn):
    """Forward hook calling fn(main output); a returned tensor replaces it."""

    def post(mod, args, output):
        new = fn(_first(output))
        return None if new is None else _replace_first(output, new)

    return module.register_forward_hook(post)


@contextlib.contextmanager
def site_hook(hf, site: str, layer: int, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Call fn(activation) at (site, layer); if fn returns a tensor it replaces the activation.

    The activation is [B, T, d_model] for residual/attn/mlp/embed sites, [B, T, n_heads*d_head] for heads
    and the whole projection output for q/k/v (fused projections: all of q, k and v).
    For "pattern" fn is called as fn(x, v) at the output projection's input x, with v the value
    projection's output of the same forward; it returns the new x (see `_pattern_setter`).
    """
    if site not in ALL_SITES:
        raise KeyError(site)
    fam = family(hf)
    if site == "embed":
        if layer != 0:
            raise KeyError("embed exists only at layer 0")
        handles = [_post_hook(_get(hf, fam.embed), fn)]
    else:
        block = blocks(hf)[layer]
        if site in ("resid_pre", "head"):
            handles = [_pre_hook(block if site == "resid_pre" else _get(block, fam.out_proj), fn)]
        elif site == "resid_mid":
            # The stream itself: the MLP's norm reads the new value, and since the block's output is
            # resid_mid + mlp_out, the same change is added to the block's output.
            delta: dict[str, torch.Tensor] = {}

            def at_norm(x):
                new = fn(x)
                if new is not None:
                    delta["d"] = new - x
                return new

            def after_block(out):
                return None if "d" not in delta else out + delta.pop("d")

            handles = [_pre_hook(_get(block, mid_norm(hf)), at_norm), _post_hook(block, after_block)]
        elif site in ("q", "k", "v"):
            handles = [_post_hook(_get(block, qkv_columns(hf, site, 0)[0]), fn)]
        elif site == "pattern":
            seen: dict[str, torch.Tensor] = {}

            def keep_v(x):
                seen["v"] = x

            handles = [
                _post_hook(_get(block, qkv_columns(hf, "v", 0)[0]), keep_v),
                _pre_hook(_get(block, fam.out_proj), lambda x: fn(x, seen["v"])),
            ]
        else:
            module = {
                "resid_post": block,
                "attn_out": _get(block, fam.attn_out),
                "mlp_out": _get(block, fam.mlp_out),
            }[site]
            handles = [_post_hook(module, fn)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


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


def site_layers(hf, site: str) -> list[int]:
    return [0] if site == "embed" else list(range(n_layers(hf)))


def capture(hf, ids: torch.Tensor, site: str, layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """Activations {layer: [T, width]} of one unpatched forward (batch 1); patterns {layer: [H, T, T]}."""
    layers = site_layers(hf, site) if layers is None else layers
    if site == "pattern":
        return {layer: p for layer, p in enumerate(_patterns(hf, ids)) if layer in layers}
    out: dict[int, torch.Tensor] = {}

    def grab(layer):
        def fn(x):
            out[layer] = x[0].detach().clone()

        return fn

    with hooks(hf, [(site, layer, grab(layer)) for layer in layers]):
        run_logits(hf, ids)
    return out


def _cols(hf, site: str, head: int | None) -> slice:
    if head is None:
        return slice(None)
    if site == "head":
        dh = d_head(hf)
        return slice(head * dh, (head + 1) * dh)
    if site in ("q", "k", "v"):
        return qkv_columns(hf, site, head)[1]
    return slice(None)


def _pattern_setter(hf, position, head, values: torch.Tensor):
    """fn(x, v) for site_hook("pattern"): head `head`'s output at the query `position` (None: every query)
    becomes P @ V_h, P the given probabilities ([H, T, T] or [T, T] per head; rows for the position) and
    V_h this run's values of the head's key-value head."""
    out_cols = _cols(hf, "head", head)
    v_cols = qkv_columns(hf, "v", kv_head_of(hf, head))[1]

    def fn(x, v):
        x = x.clone()
        p = values[head] if values.dim() == 3 else values  # [T, T]
        vh = v[..., v_cols].to(x.dtype)  # [B, T_k, d]
        if position is None:
            x[:, :, out_cols] = p.to(x.dtype) @ vh
        else:
            x[:, position, out_cols] = p[position].to(x.dtype) @ vh
        return x

    return fn


def _setter(hf, site, position, head, values: torch.Tensor):
    """fn that writes `values` ([T or 1, width] or broadcastable) into the activation at position/head."""
    if site == "pattern":
        return _pattern_setter(hf, position, head, values)
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
    act = capture(hf, c_ids, site, [src_layer])[src_layer]  # [T, width] (patterns [H, T, T])
    if site == "pattern":
        values = act  # the setter takes the rows it patches
        if source_position is not None:  # the source run's row source_position, written at row `position`
            values = act.clone()
            values[:, position] = act[:, source_position]
    elif source_position is not None:
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
    T, H = x_ids.shape[1], n_site_heads(hf, site)
    acts = capture(hf, c_ids, site, layers)
    clean_m = float(metric(_final(run_logits(hf, c_ids)))[0])
    corrupt_m = float(metric(_final(run_logits(hf, x_ids)))[0])
    cells = sweep_cells(site, T, H, by_position)

    def values_at(layer, position):
        return acts[layer] if position is None or site == "pattern" else acts[layer][position]

    def cell(layer, position, head):
        with hooks(hf, [(site, layer, _setter(hf, site, position, head, values_at(layer, position)))]):
            return float(metric(_final(run_logits(hf, x_ids)))[0])

    def layer_batched(layer):
        setters = [_setter(hf, site, p, h, values_at(layer, p)) for p, h in cells]

        def fn(x, *v):  # pattern setters also take the value projection's output
            return torch.cat([s(x[i : i + 1], *(t[i : i + 1] for t in v)) for i, s in enumerate(setters)])

        with hooks(hf, [(site, layer, fn)]):
            return metric(run_last_logits(hf, x_ids.expand(len(cells), -1))).tolist()

    layers = site_layers(hf, site) if layers is None else list(layers)  # a subset: rows in this order
    rows = []
    for layer in layers:
        row = layer_batched(layer) if batch else [cell(layer, p, h) for p, h in cells]
        rows.append(row)
    values = torch.tensor(rows, dtype=torch.float32)
    if site in HEAD_SITES and by_position:
        values = values.reshape(len(layers), T, H)
    return {
        "values": values.numpy(),
        "clean": clean_m,
        "corrupt": corrupt_m,
        "normalized": ((values - corrupt_m) / (clean_m - corrupt_m)).numpy(),
    }


def sweep_cells(site: str, T: int, H: int, by_position: bool) -> list[tuple[int | None, int | None]]:
    """(position, head) of every cell of one layer's row, in the sweep's order."""
    if site not in HEAD_SITES:
        return [(p, None) for p in range(T)]
    if not by_position:
        return [(None, h) for h in range(H)]
    return [(p, h) for p in range(T) for h in range(H)]


# ----------------------------------------------------------------------------------------------
# ablation


def ablation_values(hf, tok, prompt: str, site: str, layer: int, method: str, reference: str | None = None):
    """What an ablated activation is replaced with: [T, width] (or [width] for mean)."""
    ids = tokens(tok, prompt)
    if method == "zero":
        act = capture(hf, ids, site, [layer])[layer]
        return torch.zeros_like(act)
    if method == "mean":
        if site == "pattern":
            raise ValueError("a mean over positions of a pattern is not a pattern")
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
    T, H = ids.shape[1], n_site_heads(hf, site)
    layers = site_layers(hf, site)
    per_layer = {layer: ablation_values(hf, tok, prompt, site, layer, method, reference) for layer in layers}

    def cell(layer, position, head):
        with hooks(hf, [(site, layer, _setter(hf, site, position, head, per_layer[layer]))]):
            return float(metric(_final(run_logits(hf, ids)))[0])

    cells = sweep_cells(site, T, H, by_position)
    values = torch.tensor([[cell(layer, p, h) for p, h in cells] for layer in layers], dtype=torch.float32)
    if site in HEAD_SITES and by_position:
        values = values.reshape(len(layers), T, H)
    return {
        "values": values.numpy(),
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
    return _patterns(hf, tokens(tok, prompt))


def _patterns(hf, ids: torch.Tensor) -> torch.Tensor:
    """Eager attention probabilities [L, H, T, T] of one forward of `ids` (batch 1)."""
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

    Summed over d_model: [L, T] (embed: [1, T]). Heads (head, q, k, v): summed over each head's columns,
    [L, T, H] if by_position else summed over positions too, [L, H] (k, v: the key-value heads).
    Patterns: the gradient w.r.t. the eager attention probabilities themselves (autograd through the
    softmax output), (P_clean - P_corrupt) * grad summed over keys ([L, T_q, H]) and queries ([L, H]).
    """
    c_ids, x_ids = tokens(tok, clean), tokens(tok, corrupt)
    layers = site_layers(hf, site)
    clean_acts = capture(hf, c_ids, site)
    acts: dict[int, torch.Tensor] = {}

    def keep(layer):
        def fn(x, *_):
            if x.requires_grad:
                x.retain_grad()
            acts[layer] = x
            # q/k/v: the model gets a copy, so an in-place change after the projection (OLMo's clip_qkv) does
            # not alter the captured activation (the site is the projection's output as it returns it)
            return x.clone() if site in ("q", "k", "v") else None

        return fn

    fam = family(hf)
    # make the graph reach every site even if the parameters are frozen (registered first: the embed
    # site's hook then sees the leaf)
    emb = hf.get_input_embeddings()
    handles = [emb.register_forward_hook(lambda m, a, out: out.detach().requires_grad_(True))]
    with contextlib.ExitStack() as stack:
        if site == "pattern":
            stack.enter_context(eager_attention(hf))
            for layer in layers:
                attn = _get(blocks(hf)[layer], fam.attn)
                handles.append(attn.register_forward_hook(lambda m, a, out, layer=layer: keep(layer)(out[1])))
        else:
            stack.enter_context(hooks(hf, [(site, layer, keep(layer)) for layer in layers]))
        try:
            with torch.enable_grad():
                logits = hf(input_ids=x_ids, use_cache=False).logits.float()
                m = metric(logits[:, -1, :]).sum()
                m.backward()
        finally:
            for h in handles:
                h.remove()
    hf.zero_grad(set_to_none=True)
    missing = [layer for layer in layers if acts[layer].grad is None]
    if missing:
        raise RuntimeError(f"reference: no gradient reached {site} at layers {missing}")
    rows = []
    for layer in layers:
        a = acts[layer]
        g = a.grad[0].detach()
        diff = clean_acts[layer] - a[0].detach()
        prod = diff * g  # [T, width] (patterns [H, T_q, T_k])
        if site == "pattern":
            per_query = prod.sum(-1).T  # [T_q, H]
            rows.append(per_query if by_position else per_query.sum(0))
        elif site in HEAD_SITES:
            n = n_site_heads(hf, site)
            per_head = torch.stack([prod[:, _cols(hf, site, h)].sum(-1) for h in range(n)], -1)  # [T, n]
            rows.append(per_head if by_position else per_head.sum(0))
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


def _eos(hf, tok) -> set[int]:
    eos = getattr(hf.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tok.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def reference_steer_loop(
    hf,
    tok,
    prompt: str,
    vector: torch.Tensor | None,
    layer: int,
    scale: float = 1.0,
    max_new_tokens: int = 10,
    positions: str = "all",
    k: int = 5,
) -> dict:
    """Greedy generation as a plain loop of full forwards (no KV cache): each step runs the whole sequence so
    far with scale*vector added to block `layer`'s input at every position ("all") or at positions >= T-1
    ("last": the prompt's last token and every generated token), T the prompt's length. Stops after the
    first EOS pick (kept). Returns the ids, the text, each step's top-k ids/probabilities (softmax of that
    step's last-position logits) and each pick's probability."""
    ids = tokens(tok, prompt)
    T = ids.shape[1]
    eos = _eos(hf, tok)
    ctx = contextlib.nullcontext()
    if vector is not None:
        v = scale * vector.detach().reshape(-1).float()

        def add(x):
            x = x.clone()
            if positions == "all":
                x += v.to(x.dtype)
            else:
                x[:, T - 1 :] += v.to(x.dtype)
            return x

        ctx = site_hook(hf, "resid_pre", layer, add)
    seq = ids
    out, top_ids, top_probs, probs = [], [], [], []
    with torch.no_grad(), ctx:
        for _ in range(max_new_tokens):
            logits = (
                hf(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False).logits[0, -1].float()
            )
            p = torch.softmax(logits, -1)
            pick = int(logits.argmax())
            top = p.topk(k)
            out.append(pick)
            top_ids.append(top.indices)
            top_probs.append(top.values)
            probs.append(float(p[pick]))
            if pick in eos:
                break
            seq = torch.cat([seq, torch.tensor([[pick]])], 1)
    return {
        "ids": out,
        "text": tok.decode(out, skip_special_tokens=True),
        "top_ids": torch.stack(top_ids),
        "top_probs": torch.stack(top_probs),
        "probs": probs,
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


# ----------------------------------------------------------------------------------------------
# path patching


def receiver_inputs(hf, receivers) -> list[tuple[str, int, int | None, int]]:
    """A receiver list of (site, layer, position, head) as q/k/v slots: a `head` receiver is its query and its
    key-value head's key and value (`kv_head_of`, grouped-query attention)."""
    out = []
    for site, layer, pos, head in receivers:
        if site == "head":
            kv = kv_head_of(hf, head)
            cells = [("q", layer, pos, head), ("k", layer, pos, kv), ("v", layer, pos, kv)]
        else:
            cells = [(site, layer, pos, head)]
        out += [c for c in cells if c not in out]
    return out


def _qkv_hooks(hf, cells, fn) -> list:
    """Forward hooks calling fn(module output [B, T, W], columns, cell) for each q/k/v cell (`qkv_columns`:
    several cells per module)."""
    handles = []
    by_module: dict[int, tuple] = {}
    for cell in cells:
        site, layer, _, head = cell
        path, cols = qkv_columns(hf, site, head)
        mod = _get(blocks(hf)[layer], path)
        by_module.setdefault(id(mod), (mod, []))[1].append((cols, cell))
    for mod, group in by_module.values():

        def hook(_m, _a, out, group=group):
            out = out.clone()
            for cols, cell in group:
                fn(out, cols, cell)
            return out

        handles.append(mod.register_forward_hook(hook))
    return handles


def reference_path_patch(
    hf, tok, clean: str, corrupt: str, metric, senders, receivers="logits", batch: bool = False
):
    """Path patching (Wang et al. 2022), clean into corrupt, one plain forward per step.

    senders: list of (layer, position or None, head) head outputs. Step 1 runs the corrupt prompt with every
    head output (the output projection's input) frozen at its corrupt value except the senders', which get
    their clean value, and records the receivers' q/k/v (or, for "logits", returns that run's metric). Step 2
    runs the corrupt prompt with only those q/k/v slices set. receivers: "logits" or (site, layer, position,
    head) with site q, k, v (head = key-value head for k/v) or head.

    batch=True takes a list of sender lists (one run each) and returns a list of metrics, running each step
    as one batched forward (same numbers up to float noise; for the embedded model's sweeps)."""
    rows = senders if batch else [senders]
    n = len(rows)
    c_ids, x_ids = tokens(tok, clean), tokens(tok, corrupt)
    L, H, dh = n_layers(hf), n_heads(hf), d_head(hf)
    z_clean = capture(hf, c_ids, "head")  # {layer: [T, H * d]}
    z_corrupt = capture(hf, x_ids, "head")
    fam = family(hf)

    def freeze(layer):
        def pre(mod, args, kwargs):
            z = z_corrupt[layer].expand(n, -1, -1).clone().view(n, -1, H, dh)
            src = z_clean[layer].view(-1, H, dh)
            for i, row in enumerate(rows):
                for s_layer, pos, head in row:
                    if s_layer == layer:
                        at = slice(None) if pos is None else pos
                        z[i, at, head] = src[at, head]
            z = z.view(n, -1, H * dh).to(args[0].dtype if args else kwargs["input"].dtype)
            if args:
                return (z, *args[1:]), kwargs
            return args, {**kwargs, "input": z}

        return pre

    cells = [] if receivers == "logits" else receiver_inputs(hf, receivers)
    recorded: dict[tuple, torch.Tensor] = {}

    def record(out, cols, cell):
        pos = cell[2]
        recorded[cell] = out[:, slice(None) if pos is None else pos, cols].detach().clone()

    handles = [
        _get(blocks(hf)[layer], fam.out_proj).register_forward_pre_hook(freeze(layer), with_kwargs=True)
        for layer in range(L)
    ]
    handles += _qkv_hooks(hf, cells, record)
    try:
        frozen = run_last_logits(hf, x_ids.expand(n, -1))
    finally:
        for h in handles:
            h.remove()
    if receivers == "logits":
        values = metric(frozen)
    else:

        def put(out, cols, cell):
            pos = cell[2]
            out[:, slice(None) if pos is None else pos, cols] = recorded[cell].to(out.dtype)

        handles = _qkv_hooks(hf, cells, put)
        try:
            values = metric(run_last_logits(hf, x_ids.expand(n, -1)))
        finally:
            for h in handles:
                h.remove()
    return [float(v) for v in values] if batch else float(values[0])


def reference_path_patch_sweep(hf, tok, clean: str, corrupt: str, metric, receivers="logits", batch=False):
    """[L, H]: every head (all positions) as the only sender in turn; NaN where the sender's layer is at or
    above the lowest receiver's layer (no path)."""
    L, H = n_layers(hf), n_heads(hf)
    top = L if receivers == "logits" else min(r[1] for r in receivers)
    out = torch.full((L, H), float("nan"))
    senders = [(layer, None, h) for layer in range(top) for h in range(H)]
    if batch and senders:
        values = reference_path_patch(
            hf, tok, clean, corrupt, metric, [[s] for s in senders], receivers, True
        )
    else:
        values = [reference_path_patch(hf, tok, clean, corrupt, metric, [s], receivers) for s in senders]
    for (layer, _, h), v in zip(senders, values, strict=True):
        out[layer, h] = v
    return out.numpy()


# joint edits


def _joint_value(hf, tok, prompt: str, source: str | None, site: str, layer: int, position, head, how, arg):
    """What one edit writes at its place ([T, w] or [w], w the place's width): see `reference_joint`."""
    cols = _cols(hf, site, head)
    pos = slice(None) if position is None else position
    if how == "source":
        if source is None:
            raise ValueError("a 'source' edit needs a source prompt")
        return capture(hf, tokens(tok, source), site, [layer])[layer][pos, cols]
    if how == "zero":
        return torch.zeros(())
    if how == "mean":
        return capture(hf, tokens(tok, prompt), site, [layer])[layer].mean(0)[cols]
    if how == "mean_of":  # the mean over every token of the prompts `arg`
        acts = [capture(hf, tokens(tok, r), site, [layer])[layer] for r in arg]
        return torch.cat(acts).mean(0)[cols]
    if how in ("set", "add"):
        return arg.detach().float()
    raise KeyError(how)


def reference_joint(hf, tok, prompt: str, metric, edits, source: str | None = None, k: int = 5) -> dict:
    """Run `prompt` once with every edit applied at the same time, one plain hook per edit.

    An edit is (site, layer, position or None, head or None, how, arg): how "source" (the unedited
    activation of the `source` prompt at the same place), "zero", "mean" (the prompt's own mean over
    positions), "mean_of" (the mean over every token of the prompts `arg`), "set" (write the tensor `arg`)
    or "add" (add the tensor `arg` to the live activation). Hooks on one module run in the given order.
    """
    ids = tokens(tok, prompt)
    with hooks(hf, joint_hooks(hf, tok, prompt, edits, source)):
        logits = run_logits(hf, ids)
    base = float(metric(_final(run_logits(hf, ids)))[0])
    out = {
        "value": float(metric(_final(logits))[0]),
        "clean": float(metric(_final(run_logits(hf, tokens(tok, source))))[0]) if source else base,
        "corrupt": base,
        "logits": _final(logits)[0],
    }
    out.update(_summary(_final(logits), k))
    return out


# ----------------------------------------------------------------------------------------------
# lens of joint edits


def joint_hooks(hf, tok, prompt: str, edits, source: str | None = None) -> list:
    """The plain hooks of `reference_joint`'s edits (same tuples, same meaning), for another reference
    to run with, e.g. the logit lens of the jointly edited run."""
    specs = []
    for site, layer, position, head, how, arg in edits:
        value = _joint_value(hf, tok, prompt, source, site, layer, position, head, how, arg)
        cols = _cols(hf, site, head)
        pos = slice(None) if position is None else position

        def fn(x, value=value, cols=cols, pos=pos, add=how == "add"):
            x = x.clone()
            v = value.to(x.dtype)
            x[:, pos, cols] = x[:, pos, cols] + v if add else v
            return x

        specs.append((site, layer, fn))
    return specs


def reference_joint_lens(hf, tok, prompt: str, edits, source: str | None = None, top_k: int = 5) -> dict:
    """`reference_logit_lens` of `prompt` run once with every edit (see `reference_joint`) applied at once."""
    return reference_logit_lens(hf, tok, prompt, top_k, joint_hooks(hf, tok, prompt, edits, source))


# ----------------------------------------------------------------------------------------------
# patchscope and the generation lens (issue 15)


def reference_patchscope(
    hf,
    tok,
    prompt: str,
    target_prompt: str,
    target_position: int = -1,
    target_layer: int | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    top_k: int = 5,
) -> dict:
    """Source run with a forward hook recording each block's output; then one target run per source
    state, with a forward hook overwriting the block output at the target position and layer. The target's
    next-token top-k and entropy at its last position. Arrays [n_layers, n_positions(, k)]."""
    ids, target = tokens(tok, prompt), tokens(tok, target_prompt)
    L, T = n_layers(hf), ids.shape[1]
    layers = list(range(L)) if layers is None else list(layers)
    positions = list(range(T)) if positions is None else [p % T for p in positions]
    tpos = target_position % target.shape[1]
    states: dict[int, torch.Tensor] = {}

    def record(layer):
        def fn(_mod, _args, out):
            states[layer] = _first(out)[0].detach().clone()

        return fn

    handles = [blocks(hf)[layer].register_forward_hook(record(layer)) for layer in layers]
    try:
        run_logits(hf, ids)
    finally:
        for h in handles:
            h.remove()
    top_ids = torch.zeros(len(layers), len(positions), top_k, dtype=torch.long)
    top_probs = torch.zeros(len(layers), len(positions), top_k)
    entropy = torch.zeros(len(layers), len(positions))
    for i, layer in enumerate(layers):
        for j, t in enumerate(positions):
            state = states[layer][t]

            def overwrite(_mod, _args, out, state=state):
                h = _first(out).clone()
                h[:, tpos] = state
                return _replace_first(out, h)

            into = layer if target_layer is None else target_layer
            handle = blocks(hf)[into].register_forward_hook(overwrite)
            try:
                logits = run_logits(hf, target)[0, -1]
            finally:
                handle.remove()
            logp = torch.log_softmax(logits, -1)
            top = logp.exp().topk(top_k)
            top_ids[i, j], top_probs[i, j] = top.indices, top.values
            entropy[i, j] = -(logp.exp() * logp).sum()
    return {
        "top_ids": top_ids.numpy().astype("int32"),
        "top_probs": top_probs.numpy().astype("float32"),
        "entropy": entropy.numpy().astype("float32"),
    }


def reference_token_probs(hf, ids: torch.Tensor, n_prompt: int) -> torch.Tensor:
    """Each token after the prompt's probability under the model (one plain forward on all of `ids`)."""
    logp = torch.log_softmax(run_logits(hf, ids)[0], -1)
    new = ids[0, n_prompt:]
    return logp[torch.arange(n_prompt - 1, ids.shape[1] - 1), new].exp()


# causal tracing (ROME)


def trace_window(layer: int, window: int, L: int) -> range:
    """ROME's `trace_important_window` layers for a centre `layer`: max(0, l - w//2) .. min(L, l - (-w//2)) - 1."""
    return range(max(0, layer - window // 2), min(L, layer - (-window // 2)))


def reference_causal_trace(
    hf,
    ids: torch.Tensor,
    span: tuple[int, int],
    noise: torch.Tensor,
    target: int | None = None,
    kind: str = "resid",
    window: int = 10,
    sever: str | None = None,
    batch: int = 1,
    cells: Sequence[tuple[int, int]] | None = None,
) -> tuple[np.ndarray, float, float]:
    """ROME's causal trace (experiments/causal_trace.py `trace_with_patch`; severed paths: the frozen-MLP
    notebook's `trace_with_repatch` / `trace_important_states_3`), with plain forward hooks.

    Per (layer, position) cell one batch of S+1 copies of `ids` [1, T]: row 0 clean, rows 1..S get
    `noise` [S, b - a, d_model] ADDED to the embedding module's output at the subject positions a..b-1
    (`span`). The state restored from row 0 into rows 1..S at the cell's position is the block output
    (kind "resid") or the MLP / attention output (`Family.mlp_out` / `attn_out`, what the block adds to the
    stream) in every layer of ROME's window (`trace_window`). sever="mlp"/"attn" additionally freezes that
    sub-block's output at the cell's position, in ALL layers, at its value in a first pass with the noise
    only (ROME draws fresh noise in that pass; here the same noise tensor, so both passes see the same
    corruption). p(target) = softmax(last-position logits)[target], averaged over rows 1..S.

    Returns (values float32 [L, T], high = p(target) of row 0, low = rows 1..S with nothing restored).
    target None: the clean top-1. cells: only these (layer, position) cells (NaN elsewhere; to keep the
    embedded model's tests short). batch > 1 stacks that many cells' (S+1)-row batches into one forward
    (each with its own clean row: the same numbers up to float noise; only for speed on big models)."""
    L, T = n_layers(hf), ids.shape[1]
    a, b = span
    S = noise.shape[0]
    site = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}[kind]
    sever_site = None if sever is None else {"mlp": "mlp_out", "attn": "attn_out"}[sever]
    rows = S + 1

    def add_noise(x):
        x = x.clone()
        n = x.shape[0] // rows
        x.view(n, rows, *x.shape[1:])[:, 1:, a:b] += noise.to(x.dtype).unsqueeze(0)
        return x

    def probs(specs, n_groups):
        """softmax(last logits) [n_groups, S+1, V] of n_groups stacked (S+1)-row batches."""
        with hooks(hf, [("embed", 0, add_noise), *specs]):
            logits = run_last_logits(hf, ids.expand(n_groups * rows, -1))
        return torch.softmax(logits.float(), -1).view(n_groups, rows, -1)

    p0 = probs([], 1)[0]  # nothing restored
    if target is None:
        target = int(p0[0].argmax())
    high, low = float(p0[0, target]), float(p0[1:, target].mean())

    frozen: dict[int, torch.Tensor] = {}
    if sever_site is not None:  # the first pass: noise only, keep the severed sub-block's outputs

        def keep(layer):
            def fn(x):
                frozen[layer] = x.detach().clone()  # [S+1, T, D]

            return fn

        with hooks(hf, [("embed", 0, add_noise)] + [(sever_site, j, keep(j)) for j in range(L)]):
            run_last_logits(hf, ids.expand(rows, -1))

    cells = [(layer, t) for layer in range(L) for t in range(T)] if cells is None else list(cells)
    values = torch.full((L, T), float("nan"))
    for start in range(0, len(cells), batch):
        group = cells[start : start + batch]
        n = len(group)
        restore: dict[int, list[tuple[int, int]]] = {}  # layer -> [(group index, position)]
        for g, (layer, t) in enumerate(group):
            for j in [layer] if kind == "resid" else trace_window(layer, window, L):
                restore.setdefault(j, []).append((g, t))

        def restorer(cells_here, n=n):
            def fn(x):
                x = x.clone()
                v = x.view(n, rows, *x.shape[1:])
                for g, t in cells_here:
                    v[g, 1:, t] = v[g, 0, t]  # h[1:, t] = h[0, t]
                return x

            return fn

        def freezer(layer, n=n, group=group):
            def fn(x):
                x = x.clone()
                v = x.view(n, rows, *x.shape[1:])
                for g, (_, t) in enumerate(group):
                    v[g, 1:, t] = frozen[layer][1:, t].to(x.dtype)
                return x

            return fn

        specs = [(site, j, restorer(c)) for j, c in restore.items()]
        if sever_site is not None:
            specs += [(sever_site, j, freezer(j)) for j in range(L)]
        p = probs(specs, n)
        for g, (layer, t) in enumerate(group):
            values[layer, t] = p[g, 1:, target].mean()
    return values.numpy().astype("float32"), high, low


# ----------------------------------------------------------------------------------------------
# function vectors (Todd et al. 2024): the authors' CIE and FV, with plain hooks, one forward per (head, prompt)


def last_head_outputs(hf, ids: torch.Tensor) -> torch.Tensor:
    """The output projection's input at the last position, [L, n_heads * d_head] (batch 1)."""
    got = capture(hf, ids, "head")
    return torch.stack([got[layer][-1] for layer in range(n_layers(hf))]).float()


def reference_head_means(hf, tok, prompts: Sequence[str]) -> torch.Tensor:
    """Each head's mean output at the last position over `prompts`, [L, H, d_head] (the paper's
    `get_mean_head_activations`, last token)."""
    z = torch.stack([last_head_outputs(hf, tokens(tok, p)) for p in prompts]).mean(0)
    return z.view(n_layers(hf), n_heads(hf), d_head(hf))


def reference_head_effects(
    hf, tok, clean: Sequence[str], shuffled: Sequence[str], answers: Sequence[str]
) -> dict:
    """The paper's `compute_indirect_effect` (last_token_only): the clean prompts' mean head outputs, then for
    every shuffled prompt and every (layer, head) one forward with that head's slice of the output projection's
    input at the last position replaced by its mean; effect = p(answer) patched - p(answer) of the shuffled
    prompt. Returns values [L, H] (mean effect), per_example [N, L, H], clean / corrupt [N], means."""
    L, H, dh = n_layers(hf), n_heads(hf), d_head(hf)
    means = reference_head_means(hf, tok, clean)
    flat = means.reshape(L, H * dh)
    per = torch.zeros(len(shuffled), L, H)
    clean_p, corrupt_p = torch.zeros(len(shuffled)), torch.zeros(len(shuffled))
    for i, (c, s, a) in enumerate(zip(clean, shuffled, answers, strict=True)):
        p = prob(tok, a)
        ids = tokens(tok, s)
        T = ids.shape[1]
        clean_p[i] = p(run_last_logits(hf, tokens(tok, c)))[0]
        base = p(run_last_logits(hf, ids))[0]
        corrupt_p[i] = base
        for layer in range(L):
            for h in range(H):
                with site_hook(hf, "head", layer, _setter(hf, "head", T - 1, h, flat[layer])):
                    per[i, layer, h] = p(run_last_logits(hf, ids))[0] - base
    return {
        "values": per.mean(0).numpy(),
        "per_example": per.numpy(),
        "clean": clean_p.numpy(),
        "corrupt": corrupt_p.numpy(),
        "means": means.numpy(),
    }


def reference_head_output(hf, layer: int, head: int, z: torch.Tensor) -> torch.Tensor:
    """Head `head`'s vector z [d_head] through its columns of the output projection's weight, [d_model]
    (computed directly from the weight matrix: nn.Linear [d_model, H*d], GPT-2's Conv1D [H*d, d_model]; no bias)."""
    proj = _get(blocks(hf)[layer], family(hf).out_proj)
    dh = d_head(hf)
    cols = slice(head * dh, (head + 1) * dh)
    w = proj.weight.detach().float()
    if isinstance(proj, torch.nn.Linear):
        return w[:, cols] @ z.float()
    return z.float() @ w[cols, :]  # Conv1D: y = x @ W + b


def reference_function_vector(hf, means: torch.Tensor, heads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The paper's `compute_function_vector`: the sum of the heads' mean outputs through the output projection."""
    return torch.stack(
        [reference_head_output(hf, layer, h, torch.as_tensor(means)[layer, h]) for layer, h in heads]
    ).sum(0)


def reference_decode(hf, vector: torch.Tensor, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The paper's `fv_to_vocab`: softmax(unembed(final_norm(vector))) top-k (ids, probs)."""
    p = torch.softmax(unembed(hf, torch.as_tensor(vector).float()[None]), -1)[0]
    top = p.topk(k)
    return top.indices.numpy(), top.values.numpy()


def reference_evaluate_vector(
    hf, tok, prompts: Sequence[str], answers: Sequence[str], vector: torch.Tensor, layers: Sequence[int]
) -> dict:
    """The paper's `function_vector_intervention`: the vector added to block l's output at the last position
    of each zero-shot prompt (one forward per prompt and layer); p(answer) and the top-1 id [N, len(layers)],
    and without the vector (base_p, base_top [N])."""
    vec = torch.as_tensor(vector).float()
    N, k = len(prompts), len(layers)
    probs, top = torch.zeros(N, k), torch.zeros(N, k, dtype=torch.long)
    base_p, base_top = torch.zeros(N), torch.zeros(N, dtype=torch.long)

    def add(x):
        x = x.clone()
        x[:, -1] += vec.to(x.dtype)
        return x

    for i, (prompt, a) in enumerate(zip(prompts, answers, strict=True)):
        p = prob(tok, a)
        ids = tokens(tok, prompt)
        logits = run_last_logits(hf, ids)
        base_p[i], base_top[i] = p(logits)[0], logits[0].argmax()
        for j, layer in enumerate(layers):
            with site_hook(hf, "resid_post", layer, add):
                logits = run_last_logits(hf, ids)
            probs[i, j], top[i, j] = p(logits)[0], logits[0].argmax()
    return {
        "probs": probs.numpy(),
        "top": top.numpy(),
        "base_p": base_p.numpy(),
        "base_top": base_top.numpy(),
    }


# ----------------------------------------------------------------------------------------------
# circuits: edge attribution and edge ablation, one receiver at a time
#
# Senders: the embeddings (the input of block 0), each head's output in the stream (the output projection
# applied to the head's slice alone, minus the projection of zero, times the residual multiplier) and each
# MLP's output (times the multiplier). Receivers: each head's q/k/v input (k/v: key-value heads), each MLP's
# input and the logits, each receiver's input being its own copy of the residual stream before its norm.

# the norms in front of attention and the MLP, from a block (our own table, from the transformers files)
CIRCUIT_NORMS: dict[str, tuple[str, str]] = {
    "gpt2": ("ln_1", "ln_2"),
    "llama": ("input_layernorm", "post_attention_layernorm"),
    "qwen2": ("input_layernorm", "post_attention_layernorm"),
    "mistral": ("input_layernorm", "post_attention_layernorm"),
    "gpt_neox": ("input_layernorm", "post_attention_layernorm"),
    "phi": ("input_layernorm", "input_layernorm"),
    "phi3": ("input_layernorm", "post_attention_layernorm"),
    "granite": ("input_layernorm", "post_attention_layernorm"),
}


def circuit_nodes(hf) -> tuple[list[str], list[tuple[str, int, str, int]]]:
    """Sender names, and receivers as (name, layer, kind q/k/v/mlp/logits, head)."""
    L, H, KV = n_layers(hf), n_heads(hf), n_kv_heads(hf)
    senders = ["embed"] + [
        n for layer in range(L) for n in [f"L{layer}H{h}" for h in range(H)] + [f"MLP{layer}"]
    ]
    receivers = []
    for layer in range(L):
        receivers += [(f"L{layer}H{h}.q", layer, "q", h) for h in range(H)]
        receivers += [(f"L{layer}H{g}.k", layer, "k", g) for g in range(KV)]
        receivers += [(f"L{layer}H{g}.v", layer, "v", g) for g in range(KV)]
        receivers.append((f"MLP{layer}", layer, "mlp", 0))
    receivers.append(("logits", L, "logits", 0))
    return senders, receivers


def _parallel(hf) -> bool:
    return hf.config.model_type == "phi" or bool(getattr(hf.config, "use_parallel_residual", False))


def reaches(hf, sender: str, receiver: tuple[str, int, str, int]) -> bool:
    """Whether a sender feeds a receiver's input directly."""
    _, layer, kind, _ = receiver
    if sender == "embed" or kind == "logits":
        return True
    s_layer = int(sender[3:]) if sender.startswith("MLP") else int(sender[1:].split("H")[0])
    if sender.startswith("MLP"):
        return s_layer < layer
    return s_layer < layer or (kind == "mlp" and s_layer == layer and not _parallel(hf))


class _SenderTap:
    """Hooks that record every sender's output in the stream during a forward: {name: [T, d]}."""

    def __init__(self, hf) -> None:
        self.hf, self.out = hf, {}
        fam = family(hf)
        H, d = n_heads(hf), d_head(hf)
        scale = residual_multiplier(hf)
        self.handles = []

        def block0(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.out["embed"] = x[0]

        self.handles.append(blocks(hf)[0].register_forward_pre_hook(block0, with_kwargs=True))
        for layer, block in enumerate(blocks(hf)):
            proj = _get(block, fam.out_proj)

            def heads(mod, args, layer=layer, proj=proj):
                z = args[0]
                zero = proj.forward(torch.zeros_like(z))
                for h in range(H):
                    only = torch.zeros_like(z)
                    only[..., h * d : (h + 1) * d] = z[..., h * d : (h + 1) * d]
                    self.out[f"L{layer}H{h}"] = ((proj.forward(only) - zero) * scale)[0]

            self.handles.append(proj.register_forward_pre_hook(heads))

            def mlp(mod, args, out, layer=layer):
                self.out[f"MLP{layer}"] = (_first(out) * scale)[0]

            self.handles.append(_get(block, fam.mlp_out).register_forward_hook(mlp))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def sender_outputs(
    hf, ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    tap = _SenderTap(hf)
    try:
        with torch.no_grad():
            if inputs_embeds is None:
                hf(input_ids=ids, use_cache=False)
            else:
                hf(inputs_embeds=inputs_embeds, use_cache=False)
    finally:
        tap.remove()
    return {k: v.detach().clone() for k, v in tap.out.items()}


@contextlib.contextmanager
def receiver_input(hf, receiver: tuple[str, int, str, int], fn: Callable[[torch.Tensor], torch.Tensor]):
    """Give one receiver its own input: fn(stream [B, T, d] it would read) -> its input; the receiver's
    query/key/value columns (or the MLP's input, or the final norm's input) are recomputed from it."""
    _, layer, kind, head = receiver
    fam = family(hf)
    handles = []
    if kind == "logits":
        handles.append(_pre_hook(_get(hf, fam.final_norm), fn))
    else:
        block = blocks(hf)[layer]
        attn_norm, mlp_norm = (_get(block, p) for p in CIRCUIT_NORMS[hf.config.model_type])
        seen: dict[str, torch.Tensor] = {}
        if kind == "mlp":

            def keep(x):
                seen["x"] = x

            handles.append(_pre_hook(mlp_norm, keep))
            handles.append(_pre_hook(_get(block, fam.mlp_out), lambda _x: mlp_norm.forward(fn(seen["x"]))))
        else:
            path, cols = qkv_columns(hf, kind, head)
            proj = _get(block, path)

            def keep_a(x):
                seen["x"] = x

            def replace(out):
                new = proj.forward(attn_norm.forward(fn(seen["x"])))
                out = out.clone()
                out[..., cols] = new[..., cols]
                return out

            handles.append(_pre_hook(attn_norm, keep_a))
            handles.append(_post_hook(proj, replace))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def receiver_grad(
    hf, ids: torch.Tensor, receiver, metric, inputs_embeds: torch.Tensor | None = None
) -> torch.Tensor:
    """d metric / d (the receiver's own input) [T, d], at the run of `ids` (or of `inputs_embeds`)."""
    leaf: dict[str, torch.Tensor] = {}

    def fn(x):
        leaf["x"] = x.detach().clone().requires_grad_(True)
        return leaf["x"]

    with receiver_input(hf, receiver, fn), torch.enable_grad():
        if inputs_embeds is None:
            logits = hf(input_ids=ids, use_cache=False).logits.float()
        else:
            logits = hf(inputs_embeds=inputs_embeds, use_cache=False).logits.float()
        metric(logits[:, -1, :]).sum().backward()
    hf.zero_grad(set_to_none=True)
    return leaf["x"].grad[0].detach()


def reference_edge_attribution(
    hf, tok, clean: str, corrupt: str, metric, steps: int = 0, receivers: Sequence[str] | None = None
) -> dict[tuple[str, str], float]:
    """{(sender, receiver): (sender clean - corrupt output) . d metric / d receiver input, summed over positions}.

    steps = 0: gradient at the corrupt run (EAP); steps = n: the mean gradient over runs with token embeddings
    corrupt + k/n (clean - corrupt), k = 1..n (EAP-IG). `receivers` limits the receivers (names)."""
    c_ids, x_ids = tokens(tok, clean), tokens(tok, corrupt)
    clean_out, corrupt_out = sender_outputs(hf, c_ids), sender_outputs(hf, x_ids)
    senders, all_receivers = circuit_nodes(hf)
    chosen = [r for r in all_receivers if receivers is None or r[0] in receivers]
    emb = hf.get_input_embeddings()
    with torch.no_grad():
        e_clean, e_corrupt = emb(c_ids), emb(x_ids)
    out = {}
    for r in chosen:
        if steps == 0:
            g = receiver_grad(hf, x_ids, r, metric)
        else:
            g = (
                sum(
                    receiver_grad(hf, x_ids, r, metric, e_corrupt + (k / steps) * (e_clean - e_corrupt))
                    for k in range(1, steps + 1)
                )
                / steps
            )
        for s in senders:
            if reaches(hf, s, r):
                out[(s, r[0])] = float(((clean_out[s] - corrupt_out[s]) * g).sum())
    return out


def reference_edge_ablation(hf, tok, prompt: str, reference: str, metric, kept: set[tuple]) -> float:
    """The metric of `prompt`'s run in which every receiver reads its own stream minus, for each edge not in
    `kept`, (the sender's output in this run - its output in the run of `reference`). All receivers at once:
    the senders' outputs of this run are recorded as the forward reaches them. An entry (sender, receiver)
    keeps the edge at every position, (sender, receiver, p) at token position p only."""
    ids = tokens(tok, prompt)
    n = ids.shape[1]
    ref_out = sender_outputs(hf, tokens(tok, reference))
    senders, receivers = circuit_nodes(hf)
    tap = _SenderTap(hf)
    specs = []
    for r in receivers:
        # per sender: the positions at which its edge into r is dropped
        dropped = {}
        for s in senders:
            if not reaches(hf, s, r):
                continue
            if (s, r[0]) in kept:
                continue
            at = torch.ones(n, 1)
            for p in range(n):
                if (s, r[0], p) in kept:
                    at[p] = 0.0
            if at.any():
                dropped[s] = at
        if not dropped:
            continue

        def fn(x, dropped=dropped):
            return x - sum(at * (tap.out[s] - ref_out[s]) for s, at in dropped.items()).unsqueeze(0)

        specs.append((r, fn))
    try:
        with contextlib.ExitStack() as stack:
            for r, fn in specs:
                stack.enter_context(receiver_input(hf, r, fn))
            with torch.no_grad():
                logits = hf(input_ids=ids, use_cache=False).logits.float()
    finally:
        tap.remove()
    return float(metric(logits[:, -1, :])[0])


# head detectors: eager patterns, one prompt at a time, target keys found by explicit loops over the tokens


def _detector_targets(ids: list[int], name: str, t: int) -> list[int] | None:
    """The key positions detector `name` targets for query t, or None where it is not defined."""
    if name == "previous_token":
        return [t - 1] if t >= 1 else None
    earlier = [s for s in range(t) if ids[s] == ids[t]]
    if not earlier:
        return None
    return earlier if name == "duplicate_token" else [s + 1 for s in earlier]


def reference_head_detectors(hf, rows: Sequence[Sequence[int]], names: Sequence[str]) -> dict:
    """Per detector: [L, H] mean over every prompt's defined queries (pooled) of the attention on the targets,
    and the number of those queries. Absent detectors (no defined query) are left out."""
    sums = {n: torch.zeros(n_layers(hf), n_heads(hf), dtype=torch.float64) for n in names}
    counts = dict.fromkeys(names, 0)
    for ids in rows:
        ids = [int(i) for i in ids]
        pats = _patterns(hf, torch.tensor([ids])).double()  # [L, H, T, T]
        for name in names:
            for t in range(len(ids)):
                keys = _detector_targets(ids, name, t)
                if keys is None:
                    continue
                sums[name] += pats[:, :, t, keys].sum(-1)
                counts[name] += 1
    return {n: ((sums[n] / counts[n]).numpy(), counts[n]) for n in names if counts[n]}


# ----------------------------------------------------------------------------------------------
# direct logit attribution: the parts of the final stream from hooks and weight matrices, the final norm
# written out per family with its scale frozen, the metric's gradient at the model's own logits


def _final_norm_frozen(hf, x: torch.Tensor):
    """(f, bias): f(c) = the final norm's linear part with x's scale frozen, and the norm's bias (or zeros)."""
    norm = _get(hf, family(hf).final_norm)
    mt = hf.config.model_type
    centred = mt in ("gpt2", "gpt_neox", "phi", "olmo")
    eps = getattr(norm, "variance_epsilon", None) or norm.eps
    xs = x.double()
    xc = xs - xs.mean() if centred else xs
    s = torch.sqrt((xc * xc).mean() + eps)
    w = getattr(norm, "weight", None)
    gain = torch.ones_like(xs) if w is None else w.detach().double()
    if mt in ("gemma", "gemma2", "gemma3_text"):
        gain = 1.0 + gain
    b = getattr(norm, "bias", None)
    bias = torch.zeros_like(xs) if b is None else b.detach().double()

    def f(c: torch.Tensor) -> torch.Tensor:
        c = c.double()
        return gain * ((c - c.mean()) if centred else c) / s

    return f, bias


def reference_logit_attribution(hf, tok, prompt: str, metric) -> dict:
    """Direct logit attribution at the last position: heads [L, H], mlps [L], embed, rest (output projection
    biases, final norm bias, unembedding bias), metric, and the parts' sum check. A part c contributes
    grad . (W_U f(c) / logits_scaling), grad = d metric / d logits at the model's own last-position logits."""
    ids = tokens(tok, prompt)
    L, H, dh = n_layers(hf), n_heads(hf), d_head(hf)
    fam = family(hf)
    got: dict = {}

    def keep(key):
        def fn(x):
            got[key] = x[0, -1].detach().double().clone()

        return fn

    specs = [("resid_pre", 0, keep("embed"))]
    specs += [("head", layer, keep(("z", layer))) for layer in range(L)]
    specs += [("mlp_out", layer, keep(("mlp", layer))) for layer in range(L)]
    norm = _get(hf, fam.final_norm)
    handle = _pre_hook(norm, keep("final"))
    try:
        with hooks(hf, specs):
            logits = run_logits(hf, ids)[0, -1]
    finally:
        handle.remove()
    scale = residual_multiplier(hf)
    lg = logits.detach().clone().requires_grad_(True)
    value = metric(lg[None])[0]
    (grad,) = torch.autograd.grad(value, lg)
    grad = grad.double()
    w_u = _get(hf, fam.unembed).weight.detach().double()  # [V, D]
    divisor = float(hf.config.logits_scaling) if hf.config.model_type == "granite" else 1.0
    f, bias = _final_norm_frozen(hf, got["final"])

    def effect(c: torch.Tensor) -> float:
        return float(grad @ (w_u @ f(c)) / divisor)

    heads = np.zeros((L, H))
    mlps = np.zeros(L)
    parts = got["embed"].clone()
    rest = 0.0
    for layer in range(L):
        proj = _get(blocks(hf)[layer], fam.out_proj)
        z = got[("z", layer)]
        for h in range(H):
            out = reference_head_output(hf, layer, h, z[h * dh : (h + 1) * dh].float()).double() * scale
            heads[layer, h] = effect(out)
            parts = parts + out
        if getattr(proj, "bias", None) is not None:
            b = proj.bias.detach().double() * scale
            rest += effect(b)
            parts = parts + b
        mlps[layer] = effect(got[("mlp", layer)] * scale)
        parts = parts + got[("mlp", layer)] * scale
    rest += float(grad @ (w_u @ bias) / divisor)
    ub = getattr(_get(hf, fam.unembed), "bias", None)
    if ub is not None:
        rest += float(grad @ ub.detach().double() / divisor)
    return {
        "heads": heads,
        "mlps": mlps,
        "embed": effect(got["embed"]),
        "rest": rest,
        "metric": float(value),
        "stream_error": float((parts - got["final"]).abs().max()),
    }
