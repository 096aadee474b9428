"""A randomly initialised model with SmolLM2-1.7B's shape, saved once as a model folder for `run.py --big`.

Timing does not need trained weights, so the folder holds seeded random weights (transformers' own init,
`initializer_range` 0.02) in the shape of HuggingFaceTB/SmolLM2-1.7B (config values below, as its
config.json has them) and the embedded model's tokenizer (the SmolLM2 family shares the 49,152-token vocab).
Workbench (`wb.load(folder)`) and TransformerLens (`TransformerBridge.boot_transformers(folder)`) both load
this folder, so they run the same weights. The build runs in its own process (`python -m benchmarks.big
FOLDER TOKENIZER_FOLDER`) so the runner never holds a second 6.8 GB copy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# HuggingFaceTB/SmolLM2-1.7B (config.json): llama, 24 layers, d_model 2048, 32 heads, 32 kv heads,
# head_dim 64, MLP 8192, vocab 49152, tied embeddings, RMSNorm eps 1e-5, rope theta 130000.
CONFIG = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=24,
    num_attention_heads=32,
    num_key_value_heads=32,
    head_dim=64,
    hidden_act="silu",
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=130000.0,
    tie_word_embeddings=True,
    vocab_size=49152,
    bos_token_id=0,
    eos_token_id=0,
    attention_bias=False,
    mlp_bias=False,
    initializer_range=0.02,
)
SEED = 0
NAME = "SmolLM2-1.7B-shape-random-seed0"


def default_folder() -> Path:
    """Where the folder is kept ($WORKBENCH_BENCH_CACHE or ~/.cache/workbench-bench)."""
    root = os.environ.get("WORKBENCH_BENCH_CACHE") or Path.home() / ".cache" / "workbench-bench"
    return Path(root) / NAME


def ready(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def build(folder: Path, tokenizer_folder: Path) -> None:
    """Build the seeded random model and save it with the tokenizer (about 6.8 GB of float32 weights)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(**CONFIG)
    with torch.no_grad():
        model = LlamaForCausalLM(config).float().eval()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(tokenizer_folder).save_pretrained(tmp)
    n = sum(p.numel() for p in model.parameters())
    del model
    for f in tmp.iterdir():  # a finished folder only: an interrupted build leaves .partial behind
        f.replace(folder / f.name)
    tmp.rmdir()
    print(f"built {folder}: {n / 1e9:.2f}B parameters", flush=True)


def ensure(tokenizer_folder: Path, folder: Path | None = None) -> Path:
    """The folder, built in a child process the first time."""
    import subprocess

    folder = folder or default_folder()
    if not ready(folder):
        print(f"building the random 1.7B-shaped model in {folder} (once, ~1 min, 6.8 GB on disk)", flush=True)
        root = Path(__file__).resolve().parent.parent
        subprocess.run(
            [sys.executable, "-m", "benchmarks.big", str(folder), str(tokenizer_folder)], check=True, cwd=root
        )
    return folder


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
