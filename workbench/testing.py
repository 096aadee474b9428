"""Tiny randomly initialised models of every supported family, for fast tests with no download."""

from __future__ import annotations

from functools import lru_cache

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# One per `config.model_type` in the architecture table (tests/test_fast_paths.py checks that none is missing).
FAMILIES = (
    "gpt2",
    "llama",
    "gpt_neox",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi",
    "phi3",
    "qwen2",
    "qwen3",
    "mistral",
    "olmo",
    "granite",
)

_CORPUS = [
    "The Eiffel Tower is located in the city of Paris",
    "The Colosseum is located in the city of Rome",
    "When Mary and John went to the store, John gave a drink to Mary",
    "The cat sat on the mat and the dog sat on the log",
    "Hello world! This is a tiny tokenizer for tests.",
] * 4


@lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (about 700 tokens) in which ' Paris' and ' Rome' are single tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=128,
    )


def _config(family: str, vocab: int) -> transformers.PretrainedConfig:
    common = dict(vocab_size=vocab, max_position_embeddings=128, tie_word_embeddings=False)
    llama_like = dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        **common,
    )
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab, n_positions=128, n_embd=48, n_layer=3, n_head=4, tie_word_embeddings=False
        )
    if family == "llama":
        return transformers.LlamaConfig(**llama_like)
    if family == "mistral":
        return transformers.MistralConfig(sliding_window=None, **llama_like)
    if family == "qwen2":
        return transformers.Qwen2Config(**llama_like)
    if family == "gemma":
        return transformers.GemmaConfig(head_dim=8, **llama_like)
    if family == "gemma2":
        return transformers.Gemma2Config(
            head_dim=8,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
            query_pre_attn_scalar=8,
            **llama_like,
        )
    if family == "gemma3_text":
        # Layers 0 and 2 attend within a window of 4 positions (shorter than the 9-token test prompts, so the
        # window changes the numbers), layer 1 globally: both rotary embeddings and both masks are exercised.
        return transformers.Gemma3TextConfig(
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            **llama_like,
        )
    if family == "qwen3":  # q/k RMS norms per head
        return transformers.Qwen3Config(head_dim=8, **llama_like)
    if family == "olmo":  # parameter-free layer norms; q/k/v clipped in place after their projections
        return transformers.OlmoConfig(clip_qkv=1.0, pad_token_id=0, eos_token_id=0, **llama_like)
    if family == "granite":  # every multiplier away from 1, so a missed one changes the numbers
        return transformers.GraniteConfig(
            embedding_multiplier=2.0,
            residual_multiplier=0.5,
            attention_multiplier=0.25,
            logits_scaling=2.0,
            **llama_like,
        )
    if family == "phi3":
        return transformers.Phi3Config(pad_token_id=0, **llama_like)
    if family == "phi":
        return transformers.PhiConfig(partial_rotary_factor=0.5, **llama_like)
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=128,
            rotary_pct=0.5,
            use_parallel_residual=True,
            tie_word_embeddings=False,
        )
    raise ValueError(f"no tiny config for {family!r}; known: {', '.join(FAMILIES)}")


def tiny_hf_model(family: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A randomly initialised causal LM of `family`, float32, eval mode, eager attention."""
    torch.manual_seed(seed)
    cfg = _config(family, len(tiny_tokenizer()))
    cfg._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    # Random init gives near-uniform predictions; scale weights up so metrics have real spread.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    return model.eval()


def tiny_model(family: str = "llama", seed: int = 0):
    """A workbench Model around a tiny random model of `family`."""
    from .model import Model

    return Model.from_hf(tiny_hf_model(family, seed), tiny_tokenizer(), source=f"tiny:{family}")
