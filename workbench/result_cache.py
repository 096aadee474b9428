"""A workshop cache: op results on disk, keyed by the model's weights, the op and its arguments.

An instructor runs the notebooks once with `wb.cache("workshop-cache")` (or `WORKBENCH_CACHE_RESULTS=...`)
and ships the folder; students' calls and views with the same model and arguments then load instantly,
and any changed argument computes live. The key holds a content hash of every weight (the same xxh3
digests the fast paths use), the config and the tokenizer, so an edited model never reads a stale result.
Calls whose inputs cannot be keyed exactly (a custom Python metric, a model with hooks or a replaced
forward) always compute. Entries are pickles: load only a cache folder you trust, as with any pickle.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import pickle
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import xxhash

from .errors import WorkbenchError

F = TypeVar("F", bound=Callable[..., Any])

_ENV = "WORKBENCH_CACHE_RESULTS"
_UNSET = object()
_active: Any = _UNSET  # ResultCache | None once decided
_lock = threading.Lock()
_SKIPPED_ARGS = frozenset({"model", "progress", "cancel"})


class Uncacheable(Exception):
    """An argument or model state that has no exact, process-independent key."""


class ResultCache:
    """A folder of results, one file per (model fingerprint, op, arguments)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkbenchError(
                f"Cannot use {str(self.path)!r} as a result cache ({exc.strerror}): pass a folder you can write."
            ) from None
        self.hits = 0
        self.misses = 0
        self._previous: Any = _UNSET

    def __repr__(self) -> str:
        n = len(list(self.path.glob("*.pkl")))
        return (
            f"<workbench.ResultCache {str(self.path)!r}: {n} results, {self.hits} hits, {self.misses} misses>"
        )

    # -------------------------------------------------------------------- as a context manager
    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        global _active
        if self._previous is not _UNSET:
            _active, self._previous = self._previous, _UNSET

    # -------------------------------------------------------------------- entries
    def key(self, model: Any, op: str, arguments: dict[str, Any]) -> str:
        """The entry name for `op` on `model` with `arguments` (raises Uncacheable)."""
        payload = json.dumps([op, model_fingerprint(model), canonical(arguments)], sort_keys=True)
        return xxhash.xxh3_128_hexdigest(payload.encode())

    def get(self, key: str) -> Any | None:
        path = self.path / f"{key}.pkl"
        try:
            with open(path, "rb") as fh:
                return pickle.load(fh)
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - a damaged entry is a miss, and is rebuilt
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def put(self, key: str, result: Any) -> None:
        try:
            data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - a result that does not pickle is simply not stored
            return
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-", suffix=".pkl")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path / f"{key}.pkl")
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def clear(self) -> None:
        """Delete every stored result."""
        for path in self.path.glob("*.pkl"):
            with contextlib.suppress(OSError):
                path.unlink()


def cache(path: str | os.PathLike[str] | None) -> ResultCache | None:
    """Store results under `path` from now on (None: stop caching); usable as `with wb.cache(path):`,
    which restores the previous setting at the end. Returns the cache (its `.hits`, `.misses`, `.clear()`)."""
    global _active
    with _lock:
        previous = active()
        _active = ResultCache(path) if path is not None else None
        if _active is not None:
            _active._previous = previous
        return _active


def active() -> ResultCache | None:
    """The cache in use: set by `cache()`, else `$WORKBENCH_CACHE_RESULTS`, else none."""
    global _active
    if _active is _UNSET:
        env = os.environ.get(_ENV)
        _active = ResultCache(env) if env else None
    return _active


def cached(op: str) -> Callable[[F], F]:
    """Make an op read and fill the active cache (a no-op when no cache is active)."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            store = active()
            if store is None:
                return fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = {k: v for k, v in bound.arguments.items() if k not in _SKIPPED_ARGS}
            try:
                key = store.key(bound.arguments["model"], op, arguments)
            except Uncacheable:
                return fn(*args, **kwargs)
            hit = store.get(key)
            if hit is not None:
                # a result that names its model (a Graph) names this one
                rebind = getattr(hit, "_rebind", None)
                if callable(rebind):
                    rebind(bound.arguments["model"])
                store.hits += 1
                progress = bound.arguments.get("progress")
                if progress is not None:
                    progress(1.0, "from the result cache")
                return hit
            store.misses += 1
            result = fn(*args, **kwargs)
            store.put(key, result)
            return result

        return run  # type: ignore[return-value]

    return wrap


# ------------------------------------------------------------------------------------------ keys
def canonical(value: Any) -> Any:
    """A JSON value that equals another exactly when the two arguments mean the same (raises Uncacheable)."""
    from .data.dataset import Dataset, Example
    from .engine.edits import Add, Cell, Edit
    from .ops.lens import Intervention
    from .ops.metrics import CustomMetric, Metric

    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return ["float", float(value).hex()]
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, torch.Tensor | np.ndarray):
        t = torch.as_tensor(value).detach().cpu()
        from .engine.model_key import digest

        return ["tensor", str(t.dtype), list(t.shape), digest(t)]
    if isinstance(value, Dataset):
        return ["Dataset", [canonical(e) for e in value]]
    if isinstance(value, Example):
        spans = None if value.spans is None else {k: list(v) for k, v in value.spans.items()}
        fields = [list(f) for f in value.fields]
        return ["Example", canonical([value.clean, value.corrupt, value.target, value.foil, spans, fields,
                                      list(value.segments)])]  # fmt: skip
    if isinstance(value, Intervention):
        return ["Intervention", canonical(asdict(value))]
    from .ops.tuned_lens import TunedLens

    if isinstance(value, TunedLens):  # the translators' content and the model they were trained for
        return ["TunedLens", value.key(), canonical(value.fingerprint)]
    from .data.task import Task
    from .ops.vector_results import FunctionVector, HeadEffects

    if isinstance(value, Task):
        return ["Task", canonical([list(p) for p in value.pairs]), value.template, value.name]
    if isinstance(value, FunctionVector):  # what an op reads of it: the vector (and the heads, for the code)
        return ["FunctionVector", canonical(value.vector), canonical(value.heads)]
    if isinstance(value, HeadEffects):  # the ranking, the means and the task they came from
        return ["HeadEffects", canonical(value.values), canonical(value.head_means), canonical(value.task),
                canonical(value.options)]  # fmt: skip
    from .ops.circuit_results import Circuit, Edge, Graph

    if isinstance(value, Edge):
        return ["Edge", str(value)]
    if isinstance(value, Graph):  # its content (the model key holds an object id: the fingerprint covers it)
        return ["Graph", canonical(value.matrix), value.senders, value.receivers, canonical(value.columns),
                canonical(value.clean), canonical(value.corrupt), canonical(value.options),
                [value.n_layers, value.n_heads, value.n_kv_heads], canonical(value.dataset_key)]  # fmt: skip
    if isinstance(value, Circuit):  # its edges, and the graph it was cut from (ops check that graph's model)
        graph = None if value.graph is None else canonical(value.graph)
        return ["Circuit", [str(e) for e in value.edges], graph]
    if isinstance(value, Cell):
        return ["Cell", canonical(asdict(value))]
    if isinstance(value, Add):
        return ["Add", canonical(value.tensor), canonical(float(value.scale))]
    if isinstance(value, Edit):
        return ["Edit", canonical(value.cell), canonical(value.value)]
    if isinstance(value, set | frozenset):
        return ["set", sorted((canonical(v) for v in value), key=repr)]
    if isinstance(value, Metric) and not isinstance(value, CustomMetric):
        fields = canonical(asdict(value)) if is_dataclass(value) else None
        return ["metric", type(value).__name__, value.name, fields]
    raise Uncacheable(type(value).__name__)


def model_fingerprint(model: Any) -> list[Any]:
    """What the model computes, independent of the process: config, tokenizer, every weight's content.
    Raises Uncacheable for a model with hooks or replaced forwards (their effect has no key)."""
    from .engine.model_key import digest

    config = model.config.to_json_string(use_diff=False)
    fingerprint: list[Any] = [model.source, bool(model.remote), xxhash.xxh3_64_hexdigest(config.encode())]
    fingerprint.append(_tokenizer_digest(model.tokenizer))
    if model.remote:
        return fingerprint
    _check_plain(model)
    fingerprint.append(model.hf.config._attn_implementation)
    fingerprint.append(
        [[name, type(m).__module__, type(m).__qualname__] for name, m in model.hf.named_modules()]
    )
    for name, t in (*model.hf.named_parameters(), *model.hf.named_buffers()):
        fingerprint.append([name, str(t.dtype), list(t.shape), digest(t)])
    return fingerprint


_TOKENIZERS: dict[tuple[int, int], tuple[Any, str]] = {}  # (id, len) -> (tokenizer, digest): ~30 ms each


def _tokenizer_digest(tokenizer: Any) -> str:
    memo = (id(tokenizer), len(tokenizer))
    hit = _TOKENIZERS.get(memo)
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    digest = xxhash.xxh3_64_hexdigest(text.encode())
    _TOKENIZERS[memo] = (tokenizer, digest)
    return digest


def _check_plain(model: Any) -> None:
    from torch.nn.modules import module as torch_module

    from .engine.model_key import user_hooks

    for d in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        if getattr(torch_module, d, None):
            raise Uncacheable("global hooks")
    for m in model.hf.modules():
        if user_hooks(m):
            raise Uncacheable("module hooks")
        forward = m.__dict__.get("forward")
        if forward is not None and getattr(forward, "__wrapped__", None) is not type(m).forward:
            raise Uncacheable("a replaced forward")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """No caching inside the block (e.g. to time the live computation)."""
    global _active
    previous = active()
    _active = None
    try:
        yield
    finally:
        _active = previous
