"""The live model: facts, tokenisation and the standard sites (resid_pre/post, attn_out, mlp_out, heads).

Everything above this module speaks in sites and layers; only this module and `architectures.py`
know module paths. The `site_*` helpers run *inside* an nnsight trace body.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .architectures import Arch, arch_for
from .engine.sites import SITES, site
from .errors import SiteError, TokenizationError, WorkbenchError
from .validate import as_int, check_text

__all__ = ["SITES", "Model", "SiteRef"]


@dataclass(frozen=True)
class SiteRef:
    """Where a site lives for one layer of one model: what trace bodies and hooks need to read or edit it.

    `path` is the module's dotted path from the root (also printed by codegen); the value is that module's
    first input (`use_input`) or main output; `layout` (for `kernels.slot`) cuts a per-head view out of it:
    None (the whole [B, T, D] tensor), ("heads", offset, n, d) or ("interleaved", index, n, d).
    A pattern site's module is the attention module; the engines edit the attention function's output."""

    site: str
    layer: int
    path: str
    use_input: bool
    layout: tuple | None
    pattern: bool = False


def _get_path(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _path_index(root: Any, path: str) -> Any:
    """`_get_path` for paths with one `[i]` (e.g. "model.layers[3].mlp")."""
    if "[" not in path:
        return _get_path(root, path)
    head, rest = path.split("[", 1)
    index, tail = rest.split("]", 1)
    obj = _get_path(root, head)[int(index)]
    return _get_path(obj, tail[1:]) if tail else obj


class Model:
    """A causal LM with the facts and sites Workbench needs; wraps an nnsight `TransformersModel`."""

    def __init__(
        self,
        hf: torch.nn.Module,
        tokenizer: Any,
        *,
        source: str,
        nn: Any = None,
        remote: bool = False,
        load_info: dict[str, Any] | None = None,
    ) -> None:
        from nnsight import TransformersModel

        self.hf = hf
        self.tokenizer = tokenizer
        self.source = source
        self.remote = remote
        self.load_info = dict(load_info or {})
        cfg = hf.config
        self.config = cfg
        self.arch: Arch = arch_for(cfg.model_type)
        if nn is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                nn = TransformersModel(hf, tokenizer=tokenizer)
        self.nn = nn
        # one lock per torch model, shared by every workbench Model that wraps it
        self.lock: threading.RLock = _LOCKS.get(hf) or threading.RLock()
        self._trace_options: dict[str, Any] = {}
        self.n_layers: int = int(cfg.num_hidden_layers)
        self.n_heads: int = int(cfg.num_attention_heads)
        self.n_kv_heads: int = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.d_model: int = int(cfg.hidden_size)
        self.d_head: int = int(getattr(cfg, "head_dim", None) or self.d_model // self.n_heads)
        self.vocab_size: int = int(cfg.vocab_size)
        self.n_ctx: int = int(
            getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)
        )
        self.logit_softcap: float | None = getattr(cfg, "final_logit_softcapping", None)
        self._set_default_attention()
        if not remote:
            _serialise_calls(hf, self.lock)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_hf(cls, hf: torch.nn.Module, tokenizer: Any, *, source: str = "custom") -> Model:
        """Wrap an already loaded transformers causal LM and its tokenizer."""
        return cls(hf.eval(), tokenizer, source=source)

    def __repr__(self) -> str:
        return (
            f"<workbench.Model {self.source!r}: {self.config.model_type}, {self.n_layers} layers, "
            f"{self.n_heads} heads ({self.n_kv_heads} kv), d_model {self.d_model}, vocab {self.vocab_size}"
            f"{', remote' if self.remote else ''}>"
        )

    # ---------------------------------------------------------------- attention implementation
    def _set_default_attention(self) -> None:
        """Prefer SDPA (fast, batched); families without it stay on eager."""
        if self.remote:
            return
        with contextlib.suppress(Exception):
            self.hf.set_attn_implementation("sdpa")

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Eager attention for the duration of the block, so attention modules return their weights."""
        if self.remote:
            yield
            return
        with self.lock:
            before = self.hf.config._attn_implementation
            if before == "eager":
                yield
                return
            self.hf.set_attn_implementation("eager")
            try:
                yield
            finally:
                self.hf.set_attn_implementation(before)

    # ---------------------------------------------------------------- tokens
    def to_tokens(self, text: str, *, what: str = "prompt") -> torch.Tensor:
        """Token ids [1, T] of `text` as the model sees them (BOS included when the tokenizer adds one)."""
        check_text(text, what)
        if not text.strip():
            raise TokenizationError(f"The {what} is empty: give it some text, e.g. 'The Eiffel Tower is in'.")
        ids = self.tokenizer(text, return_tensors="pt").input_ids
        if ids.shape[1] == 0:
            raise TokenizationError(f"The {what} {text!r} tokenizes to nothing: give it some text.")
        if ids.shape[1] > self.n_ctx:
            raise TokenizationError(
                f"The {what} is {ids.shape[1]} tokens long, more than this model's context of {self.n_ctx}: "
                "shorten it."
            )
        return ids

    def str_tokens(self, ids: torch.Tensor | list[int]) -> list[str]:
        """Each id decoded on its own, as the tokenizer prints it (e.g. ' Paris')."""
        flat = ids.flatten().tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return [self.tokenizer.decode([i]) for i in flat]

    def to_str_tokens(self, text: str) -> list[str]:
        """The tokens of `text` as strings, one per position the model sees."""
        return self.str_tokens(self.to_tokens(text))

    def token_id(self, token: str | int) -> int:
        """The id of a token given as text (must be exactly one token, e.g. ' Paris') or as an id."""
        if not isinstance(token, str):
            token = as_int(
                token,
                "A token id",
                error=TokenizationError,
                hint=" Give a token as text (e.g. ' Paris') or as an integer id.",
            )
            if not 0 <= token < self.vocab_size:
                raise TokenizationError(
                    f"Token id {token} is outside the vocabulary (0..{self.vocab_size - 1})."
                )
            return token
        check_text(token, "token")
        if token == "":
            raise TokenizationError("A token must be a non-empty string (e.g. ' Paris') or an id, got ''.")
        ids = self.tokenizer(token, add_special_tokens=False).input_ids
        if len(ids) != 1:
            pieces = self.str_tokens(ids)
            hint = " Most tokenizers fold the leading space into the word: try ' Paris' not 'Paris'."
            raise TokenizationError(
                f"{token!r} is {len(ids)} tokens {pieces}, but a metric token must be exactly one token."
                + (hint if not token.startswith(" ") else " Pick a word that is a single token.")
            )
        return int(ids[0])

    # ---------------------------------------------------------------- validation
    def check_site(self, name: str) -> str:
        """A site name this model has (see `workbench.engine.sites`), or an error naming the fix."""
        return self.check_site_available(site(name).name)

    def check_site_available(self, name: str) -> str:
        rec = site(name)
        if rec.sequential_only and not self._sequential():
            raise SiteError(
                f"Site {name!r} (the stream between attention and MLP) does not exist in "
                f"{self.config.model_type!r} blocks: their attention and MLP both read the block input "
                "(parallel attention and MLP), so the MLP never sees resid_pre + attn_out. Use resid_pre, "
                "attn_out or mlp_out instead."
            )
        return name

    def _sequential(self) -> bool:
        """Whether the MLP reads the stream after attention (False for parallel attention and MLP)."""
        if not self.arch.mid_norm:
            return False
        flag = self.arch.parallel_config
        return not (flag and getattr(self.config, flag, False))

    def check_layer(self, layer: int, what: str = "layer") -> int:
        layer = as_int(layer, what, error=SiteError, hint=f" This model has layers 0..{self.n_layers - 1}.")
        if not 0 <= layer < self.n_layers:
            raise SiteError(f"{what} {layer} is out of range: this model has layers 0..{self.n_layers - 1}.")
        return layer

    def check_head(self, head: int, *, kv: bool = False, site: str = "head") -> int:
        """A query-head index 0..n_heads-1, or (kv=True, for k/v sites) a key-value head 0..n_kv_heads-1."""
        n = self.n_kv_heads if kv else self.n_heads
        hint = f" This model has heads 0..{n - 1}."
        head = as_int(head, "head", error=SiteError, hint=hint)
        if not 0 <= head < n:
            if kv:
                group = self.n_heads // self.n_kv_heads
                raise SiteError(
                    f"head {head} is out of range for site {site!r}: keys and values belong to the "
                    f"{self.n_kv_heads} key-value heads (0..{self.n_kv_heads - 1}); with grouped-query "
                    f"attention query head h reads key-value head h // {group}"
                    + (
                        f", so query head {head} reads key-value head {head // group}."
                        if head < self.n_heads
                        else "."
                    )
                )
            raise SiteError(f"head {head!r} is out of range: this model has heads 0..{self.n_heads - 1}.")
        return head

    @staticmethod
    def check_position(position: int, n_tokens: int, what: str = "position") -> int:
        """A position 0..T-1 (negative counts from the right, like Python)."""
        position = as_int(position, what, error=SiteError, hint=f" The prompt has {n_tokens} tokens.")
        if not -n_tokens <= position < n_tokens:
            raise SiteError(
                f"{what} {position!r} is out of range: the prompt has {n_tokens} tokens (0..{n_tokens - 1})."
            )
        return position % n_tokens

    # ---------------------------------------------------------------- module access (envoys)
    def layers(self) -> Any:
        return _get_path(self.nn, self.arch.layers)

    def block(self, layer: int) -> Any:
        return self.layers()[layer]

    def embed(self) -> Any:
        return _get_path(self.nn, self.arch.embed)

    def final_norm(self) -> Any:
        return _get_path(self.nn, self.arch.final_norm)

    def unembed(self) -> Any:
        return _get_path(self.nn, self.arch.unembed)

    def site_ref(self, name: str, layer: int) -> SiteRef:
        """Where `name` lives at `layer` (the only place that maps a site to a module of this family)."""
        arch, rec = self.arch, site(name)
        self.check_site_available(rec.name)
        block = f"{arch.layers}[{layer}]"
        h, kv, d = self.n_heads, self.n_kv_heads, self.d_head
        if rec.name == "embed":
            return SiteRef(rec.name, layer, arch.embed, False, None)
        if rec.name in ("q", "k", "v"):
            index = "qkv".index(rec.name)
            n = h if rec.name == "q" else kv
            if arch.qkv:
                if arch.qkv_layout == "interleaved":
                    layout: tuple = ("interleaved", index, n, d)
                else:
                    layout = ("heads", (0, h * d, h * d + kv * d)[index], n, d)
                return SiteRef(rec.name, layer, f"{block}.{arch.qkv}", False, layout)
            sub = (arch.q_proj, arch.k_proj, arch.v_proj)[index]
            return SiteRef(rec.name, layer, f"{block}.{sub}", False, ("heads", 0, n, d))
        if rec.pattern:
            return SiteRef(rec.name, layer, f"{block}.{arch.attn}", False, None, pattern=True)
        sub, use_input = {
            "resid_pre": ("", True),
            "resid_post": ("", False),
            "attn_out": (arch.attn_out, False),
            "mlp_out": (arch.mlp_out, False),
            "head": (arch.o_proj, True),
            "resid_mid": (arch.mid_norm, True),
        }[rec.name]
        layout = ("heads", 0, h, d) if rec.name == "head" else None
        return SiteRef(rec.name, layer, block + (f".{sub}" if sub else ""), use_input, layout)

    def envoy(self, ref: SiteRef) -> Any:
        """The nnsight envoy of a site's module (read it in a trace body with `kernels.read`).

        A pattern's envoy (the attention module) has its `.source` built here, before any trace: nnsight
        instruments a forward on the first `.source` access, and inside a trace that is too late when the
        module is already running (a q/k/v site of the same layer read first: OutOfOrderError)."""
        envoy = _path_index(self.nn, ref.path)
        if ref.pattern:
            _ = envoy.source
        return envoy

    def module(self, ref: SiteRef) -> torch.nn.Module:
        """The raw torch module of a site (for the local engines' plain hooks)."""
        return _path_index(self.hf, ref.path)

    def module_path(self, name: str, layer: int) -> str:
        """Dotted path (for generated code) of the module that carries the site."""
        return self.site_ref(name, layer).path

    def attn_envoy(self, layer: int) -> Any:
        """The attention module of block `layer`; with eager attention its output[1] is the pattern."""
        return _get_path(self.block(layer), self.arch.attn)

    @property
    def logit_divisor(self) -> float:
        """What the model divides the unembedding's output by (`Arch.logits_divisor`; 1 for most families),
        read from the config when asked, as the model's forward reads it."""
        attr = self.arch.logits_divisor
        return float(getattr(self.config, attr)) if attr else 1.0

    def residual_scale(self, layer: int) -> float:
        """What block `layer` multiplies attn_out and mlp_out by before adding them to the stream
        (`Arch.residual_multiplier`; 1 for most families), read from the block as its forward reads it."""
        attr = self.arch.residual_multiplier
        return float(getattr(_get_path(self.hf, self.arch.layers)[layer], attr)) if attr else 1.0

    def final_norm_form(self) -> tuple[bool, float]:
        """(centred, eps) of the final norm: LayerNorm (x - mean) / sqrt(var + eps) or RMSNorm x / sqrt(mean x^2
        + eps), each times its gain (plus a bias for LayerNorm); what freezing its scale needs."""
        norm = _get_path(self.hf, self.arch.final_norm)
        name = type(norm).__name__
        centred = isinstance(norm, torch.nn.LayerNorm) or ("LayerNorm" in name and "RMS" not in name)
        eps = getattr(norm, "variance_epsilon", None)
        if eps is None:
            eps = getattr(norm, "eps", None)
        if eps is None and centred:
            eps = 1e-5  # F.layer_norm's default (OlmoLayerNorm passes it as a literal); the op checks the result
        if eps is None:
            raise WorkbenchError(
                f"The final norm of this {self.config.model_type!r} model ({name}) has no eps attribute, so its "
                "scale cannot be frozen for direct logit attribution."
            )
        return centred, float(eps)

    def decoder(self) -> tuple[Any, Any, float, float | None]:
        """(final norm envoy, unembedding envoy, logit divisor, soft cap) for `kernels.decode`."""
        return self.final_norm(), self.unembed(), self.logit_divisor, self.logit_softcap

    def trace_options(self) -> dict[str, Any]:
        """Keyword arguments every `self.nn.trace(...)` gets (the NDIF backend for remote models)."""
        return dict(self._trace_options)


# ------------------------------------------------------------------------ one computation at a time
# torch module -> the lock of the workbench Model that wraps it (weak: nothing here keeps a model alive)
_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()


def _serialise_calls(hf: torch.nn.Module, lock: threading.RLock) -> None:
    """Whole-model calls from any thread (`model.hf(...)`, `generate`, nnsight traces) hold `lock`, the
    lock every op holds: nnsight's interleaver and the fast paths' module swaps belong to the model, not
    to a thread, so a user's own forward while a view computes waits for it instead of corrupting both.

    The model's class becomes a same-named subclass whose `__call__` holds the lock in a `with` block
    (released whatever ends the call, a KeyboardInterrupt included, which forward hooks are not)."""
    if hf in _LOCKS:
        return
    _LOCKS[hf] = lock
    if not getattr(type(hf), "workbench_locked", False):  # a copy of a wrapped model has the class already
        hf.__class__ = _locked_class(type(hf))
    _lock_nnsight()


@functools.cache
def _locked_class(cls: type) -> type:
    def __call__(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        lock = _LOCKS.get(self)
        if lock is None:  # a copy of a wrapped model: nobody else shares it
            return cls.__call__(self, *args, **kwargs)
        if not lock.acquire(blocking=False):
            print(
                "Workbench: this model is busy with a view's computation; waiting for it to finish "
                "(view.cancel() stops it).",
                file=sys.stderr,
            )
            lock.acquire()
        try:
            return cls.__call__(self, *args, **kwargs)
        finally:
            lock.release()

    # Same names, so saved configs (`architectures`) and reprs are unchanged.
    return type(
        cls.__name__,
        (cls,),
        {
            "__call__": __call__,
            "workbench_locked": True,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        },
    )


@functools.cache
def _lock_nnsight() -> None:
    """Make nnsight's trace execution (which fills the model's shared interleaver before the forward
    starts) hold the lock of the workbench model it runs on; other models are untouched."""
    from nnsight.intervention.envoy import Envoy
    from nnsight.intervention.tracer import InterleavingTracer

    def locked(fn: Any, module_of: Any) -> Any:
        @functools.wraps(fn)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            lock = _LOCKS.get(module_of(self))
            if lock is None:
                return fn(self, *args, **kwargs)
            with lock:
                return fn(self, *args, **kwargs)

        return run

    InterleavingTracer.execute = locked(InterleavingTracer.execute, lambda t: t.envoy.__dict__.get("_module"))
    Envoy.interleave = locked(Envoy.interleave, lambda e: e.__dict__.get("_module"))


def require_local(model: Model, what: str) -> None:
    if model.remote:
        raise WorkbenchError(f"{what} is not available for remote models yet; run it on a local model.")
