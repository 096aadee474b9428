"""Remote models on NDIF: `wb.load(repo_id, remote=True)` builds the model with no local weights.

Every op then runs its trace with `remote=True`: the trace body (envoys, tensors, and the pure functions
of `ops/_kernels.py`, shipped by value) executes on the NDIF server next to the weights, and only what the
body saves comes back. The server host and API key come from nnsight's own configuration
(`nnsight.CONFIG.API.HOST` / `APIKEY`, or the `NDIF_API_KEY` environment variable); Workbench never
stores or prints the key.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import CancelledError, ModelLoadError, RemoteError, WorkbenchError
from .model import Model


def _register_kernels() -> None:
    """Ship workbench code by value: the NDIF server does not have workbench installed.

    Only what a trace body references travels (the kernels, metric closures and the error classes they
    raise), never the model.
    """
    import nnsight

    nnsight.register("workbench")


def configure(host: str | None = None, api_key: str | None = None) -> None:
    """Point nnsight at an NDIF server (`host` like "https://api.ndif.us") and/or set the API key."""
    import nnsight

    if host is not None:
        nnsight.CONFIG.API.HOST = host
    if api_key is not None:
        nnsight.CONFIG.API.APIKEY = api_key


def _api_key() -> str | None:
    import nnsight

    key = getattr(nnsight.CONFIG.API, "APIKEY", None) or os.environ.get("NDIF_API_KEY")
    if key and not getattr(nnsight.CONFIG.API, "APIKEY", None):
        nnsight.CONFIG.API.APIKEY = key
    return key


_MIN_ECHO = 6  # a run of this many of the key's characters (any case) counts as an echo of the key


def redact(text: str) -> str:
    """`text` with the configured API key (if any) replaced, for error messages and logs.

    Servers and proxies echo keys in other forms than the exact one: upper- or lower-cased, or only a prefix
    ("key sk-abc123... rejected"). Any run of at least 6 consecutive characters of the key, in any case,
    is replaced, so a partial or re-cased echo is hidden too.
    """
    key = _api_key()
    text = str(text)
    if not key:
        return text
    key_l, low = str(key).lower(), text.lower()
    n = min(_MIN_ECHO, len(key_l))
    pieces = {key_l[i : i + n] for i in range(len(key_l) - n + 1)}
    hidden = [False] * len(text)
    for i in range(len(low) - n + 1):
        if low[i : i + n] in pieces:
            hidden[i : i + n] = [True] * n
    if len(low) != len(text) or not any(hidden):  # lower() changed the length (rare scripts): exact only
        return text.replace(key, "<api key>") if len(low) != len(text) else text
    out, i = [], 0
    while i < len(text):
        if hidden[i]:
            while i < len(text) and hidden[i]:
                i += 1
            out.append("<api key>")
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class _Scrubbed(Exception):
    """Stand-in for a raw remote error once it has been explained (its text redacted, no traceback)."""


def _scrub(exc: BaseException) -> None:
    """Strip what could carry the key from an exception that stays referenced by the interpreter (the
    `with` statement holds it as the error being handled while our readable error is raised)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        with contextlib.suppress(Exception):
            exc.args = tuple(redact(str(a)) for a in exc.args)
        with contextlib.suppress(Exception):
            for name, value in list(vars(exc).items()):
                vars(exc)[name] = redact(str(value)) if isinstance(value, str) else None
        exc.__traceback__ = None
        exc.__cause__ = exc.__context__ = None
        exc.__suppress_context__ = True
        exc = nxt


def load_remote(repo_id: str) -> Model:
    """A Model whose traces run on NDIF; only the config and tokenizer are fetched locally."""
    import nnsight.modeling.huggingface as nnhf
    from nnsight import TransformersModel
    from transformers import AutoTokenizer

    if _api_key() is None:
        raise ModelLoadError(
            "remote=True needs an NDIF API key: set the NDIF_API_KEY environment variable or run "
            "nnsight's login (nnsight.CONFIG.set_default_api_key(...)). Never write the key into a notebook."
        )
    if Path(repo_id).exists():  # a local folder served by a local NDIF: no hub look-up for the model key
        nnhf._ID_CACHE.setdefault(repo_id, repo_id)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(repo_id)
            nn = TransformersModel(repo_id, task="text-generation", tokenizer=tok)
    except (OSError, ValueError) as exc:
        err = ModelLoadError(
            f"Could not prepare remote model {repo_id!r}: its config and tokenizer must be reachable from here "
            f"(hub or local cache). Details: {redact(str(exc))}"
        )
        _scrub(exc)
        raise err from None
    _register_kernels()
    hf = nn._module
    model = Model(hf, tok, source=repo_id, nn=nn, remote=True, load_info={"remote": repo_id})
    model._trace_options = {"remote": True}
    return model


def explain(exc: BaseException) -> WorkbenchError:
    """A readable error for a failed remote request (the key is never included)."""
    raw = f"{type(exc).__name__}: {exc}"
    text = redact(raw)  # what the user sees; the classification reads the raw text
    lower = text.replace("<api key>", "").lower()  # classify without the key's own characters
    if "payload could not be read" in lower or "modulenotfounderror" in lower:
        hint = (
            "The NDIF server could not rebuild the request: something the trace uses comes from a module the "
            "server does not have. Define custom metrics in the notebook (or as a lambda), or ship their module "
            "with nnsight.register(module)."
        )
    elif "error parsing the body" in lower or "request entity too large" in lower:
        hint = (
            "The NDIF server could not read the request body: it carried more data than the server accepts "
            "(ndif servers whose API imports nnsight before anyio's asyncio backend fail on any body over "
            "1 MiB). Send less with one request: fewer prompts or examples, a shorter prompt, or a smaller grid."
        )
    elif "connect" in lower or "unreachable" in lower or "refused" in lower:
        hint = "The NDIF server could not be reached: check nnsight.CONFIG.API.HOST and your network."
    elif "api key" in lower or "apikey" in lower or "401" in lower or "403" in lower or "unauthor" in lower:
        hint = "The NDIF server rejected the API key: check NDIF_API_KEY / nnsight's saved key."
    elif "nnsight version" in lower or "incompatible" in lower or "upgrade" in lower:
        hint = "The NDIF server does not accept this nnsight version: install the nnsight version the server runs."
    else:
        hint = "The remote trace failed on the server."
    return RemoteError(f"{hint} ({text})")


_local = threading.local()
_patched = False


def _install_status_hook() -> None:
    """Route nnsight's per-update status handling through the current op's progress/cancel (thread-local)."""
    global _patched
    if _patched:
        return
    from nnsight.intervention.backends.remote import RemoteBackend

    original = RemoteBackend.note

    def note(self: Any, response: Any) -> bool:
        hooks = getattr(_local, "hooks", None)
        if hooks is not None:
            progress, cancel = hooks
            status = getattr(getattr(response, "status", None), "name", str(getattr(response, "status", "")))
            text = str(getattr(response, "description", "") or "").strip()
            if progress is not None:
                progress(0.0, f"remote {status.lower()}" + (f": {redact(text)}" if text else ""))
            if cancel is not None and cancel.is_set():
                raise CancelledError("Cancelled: the remote request was abandoned; nothing changed here.")
        return original(self, response)

    RemoteBackend.note = note
    _patched = True


@contextlib.contextmanager
def job_status(model: Model, progress: Callable[[float, str], None] | None, cancel: Any) -> Iterator[None]:
    """For remote models: report NDIF job status (queued, running, ...) to `progress`, honour `cancel`,
    and turn transport/server failures into a readable WorkbenchError without the API key."""
    if not model.remote:
        yield
        return
    _install_status_hook()
    previous = getattr(_local, "hooks", None)
    _local.hooks = (progress, cancel)
    try:
        yield
    except WorkbenchError:
        raise
    except Exception as exc:
        err = explain(exc)
        _scrub(exc)  # it stays reachable as the exception being handled: keep nothing of the key in it
        del exc
        raise err from None
    finally:
        _local.hooks = previous
