"""Where each decoder-only family keeps its standard sites: the only place that knows module names.

To add a family, add an `Arch` entry whose `model_types` lists the `config.model_type` values it covers;
paths are dotted attribute paths from the `*ForCausalLM` root (`layers`) or from one block (the rest).
Give `workbench.testing` a tiny model of each new model_type (a test fails until it has one): every family
in the table runs the reference and fast-path tests, and takes the fast paths unless `replay` says why not.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class Arch:
    """Module paths of the standard sites of one family of decoder-only models."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # the ModuleList of blocks, from the root
    embed: str  # token embedding, from the root
    final_norm: str  # from the root
    unembed: str  # from the root
    attn: str  # attention module, from a block; its output is (attn_output, attn_weights)
    o_proj: str  # attention output projection, from a block; its input is the concatenated heads
    attn_out: str  # module whose output is what attention adds to the stream, from a block
    mlp_out: str  # module whose output is what the MLP adds to the stream, from a block
    # query/key/value projections, from a block: three modules, or one fused module (qkv) whose output holds
    # q|k|v side by side ("split": [H*d | kv*d | kv*d]) or per head ("interleaved": [H, 3, d], GPT-NeoX)
    q_proj: str = ""
    k_proj: str = ""
    v_proj: str = ""
    qkv: str = ""
    qkv_layout: str = "split"
    # module whose input is the stream between attention and MLP (resid_mid); "" when the two sub-blocks
    # read the same input (parallel attention and MLP: Phi; GPT-NeoX unless use_parallel_residual=False)
    mid_norm: str = ""
    parallel_config: str = ""  # config flag that makes the block parallel when true (GPT-NeoX)
    # the norms in front of the attention and the MLP, from a block: their inputs are the residual stream the
    # sub-blocks read, their outputs what the q/k/v projections and the MLP read (circuits recompute a receiver's
    # input through them); one module for both when the sub-blocks share a norm (Phi)
    attn_norm: str = ""
    mlp_norm: str = ""
    # Scalings outside any site's module (Granite), "" for none. residual_multiplier: attribute of each block
    # that the block multiplies attn_out and mlp_out by before adding them to the stream (the sites are the
    # sub-blocks' outputs, before it); logits_divisor: config attribute the unembedding's output is divided
    # by to give the model's logits. (An embedding multiplier needs no entry: it acts between the embed site
    # and resid_pre of block 0, inside the model's forward.)
    residual_multiplier: str = ""
    logits_divisor: str = ""
    # Why the replay fast paths (engine/replay.py sweeps, engine/fast_attribution.py) do not apply to this
    # family; "" when they do: then they are exact on its tiny model (tests/test_fast_paths.py), else the
    # traced path answers and a test checks that it does.
    replay: str = ""


_LLAMA_LIKE = dict(
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    unembed="lm_head",
    attn="self_attn",
    o_proj="self_attn.o_proj",
    attn_out="self_attn",
    mlp_out="mlp",
    q_proj="self_attn.q_proj",
    k_proj="self_attn.k_proj",
    v_proj="self_attn.v_proj",
    mid_norm="post_attention_layernorm",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
)

ARCHITECTURES: tuple[Arch, ...] = (
    Arch(
        name="gpt2",
        model_types=("gpt2",),
        layers="transformer.h",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        attn="attn",
        o_proj="attn.c_proj",
        attn_out="attn",
        mlp_out="mlp",
        qkv="attn.c_attn",
        mid_norm="ln_2",
        attn_norm="ln_1",
        mlp_norm="ln_2",
    ),
    Arch(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "olmo", "gemma"),
        **_LLAMA_LIKE,
    ),
    Arch(
        name="granite",
        model_types=("granite",),
        residual_multiplier="residual_multiplier",
        logits_divisor="logits_scaling",
        **_LLAMA_LIKE,
    ),
    Arch(
        name="gemma2",
        model_types=("gemma2", "gemma3_text"),
        **{
            **_LLAMA_LIKE,
            "attn_out": "post_attention_layernorm",
            "mlp_out": "post_feedforward_layernorm",
            "mid_norm": "pre_feedforward_layernorm",
            "mlp_norm": "pre_feedforward_layernorm",
        },
    ),
    Arch(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
        attn="attention",
        o_proj="attention.dense",
        attn_out="attention",
        mlp_out="mlp",
        qkv="attention.query_key_value",
        qkv_layout="interleaved",
        mid_norm="post_attention_layernorm",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        parallel_config="use_parallel_residual",
    ),
    Arch(
        name="phi",
        model_types=("phi",),
        **{
            **_LLAMA_LIKE,
            "final_norm": "model.final_layernorm",
            "o_proj": "self_attn.dense",
            "mid_norm": "",
            "mlp_norm": "input_layernorm",
        },
    ),
    Arch(
        name="phi3",
        model_types=("phi3",),
        **{**_LLAMA_LIKE, "q_proj": "", "k_proj": "", "v_proj": "", "qkv": "self_attn.qkv_proj"},
    ),
)


def families() -> list[str]:
    """Every `config.model_type` the table covers."""
    return sorted(t for a in ARCHITECTURES for t in a.model_types)


def arch_for(model_type: str) -> Arch:
    """The table entry for a `config.model_type`, or an error that says how to add one."""
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    raise UnsupportedModelError(
        f"Workbench has no architecture entry for model_type {model_type!r}. Supported: "
        f"{', '.join(families())}. To add one, append an Arch(...) to "
        "workbench/architectures.py naming its layers, attention, MLP, output projection, final norm "
        "and unembedding modules (print(model) shows them)."
    )
