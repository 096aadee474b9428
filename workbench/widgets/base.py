"""Widget plumbing: binary packing, request ids, one worker per model, status/progress/cancel/error.

No science here: a widget turns a click into one `workbench.ops` call, runs it on the model's worker
thread (holding `model.lock`), and sends the result back as float32/int32 buffers.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

STATIC = Path(__file__).resolve().parent.parent / "static"
BUNDLE = STATIC / "widget.js"
HISTORY_MAX = 50
RUNNER_IDLE_EXIT = 2.0  # seconds a worker thread waits for work before it exits (a new job starts another)


def _errors():
    from .. import errors

    return errors


def _ops():
    from .. import ops

    return ops


# --------------------------------------------------------------------------- binary packing


def pack(array: Any) -> dict[str, Any]:
    """A numpy array as {shape, dtype, data}: float -> float32, integer -> int32, C order, raw bytes."""
    a = np.asarray(array)
    if a.dtype.kind in "iub":
        a = a.astype(np.int32, copy=False)
        dtype = "int32"
    elif a.dtype.kind == "f":
        a = a.astype(np.float32, copy=False)
        dtype = "float32"
    else:
        raise TypeError(f"cannot send an array of dtype {a.dtype} to the browser (float or int only)")
    a = np.ascontiguousarray(a)
    return {"shape": [int(s) for s in a.shape], "dtype": dtype, "data": a.tobytes()}


def unpack(packed: dict[str, Any]) -> np.ndarray:
    """Inverse of `pack` (accepts bytes, memoryview or bytearray data)."""
    dtype = {"float32": np.float32, "int32": np.int32}[packed["dtype"]]
    return np.frombuffer(bytes(packed["data"]), dtype=dtype).reshape(packed["shape"])


def finite(x: Any) -> float | None:
    """A float that JSON can carry (NaN/inf -> None)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def id_text(top_ids: np.ndarray, top_tokens: Any) -> dict[str, str]:
    """{token id: text} for the ids that occur in a top-k array (not the whole vocabulary)."""
    flat_ids = np.asarray(top_ids).ravel()
    if flat_ids.size == 0:
        return {}
    flat_tokens = list(_flatten(top_tokens))
    uniq, first = np.unique(flat_ids, return_index=True)
    return {str(int(i)): str(flat_tokens[j]) for i, j in zip(uniq, first, strict=True)}


def _flatten(x: Any):
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from _flatten(y)
    else:
        yield x


def pack_lens(
    lens: Any, pinned: list[str] | None = None, ids: list[int | str] | None = None
) -> dict[str, Any]:
    """A LensResult as the `data` trait of a lens: top-k only, never the full vocabulary."""
    out: dict[str, Any] = {
        "tokens": list(lens.tokens),
        "top_ids": pack(lens.top_ids),
        "top_probs": pack(lens.top_probs),
        "entropy": pack(lens.entropy),
        "kl": pack(lens.kl),
        "id_text": id_text(lens.top_ids, lens.top_tokens),
        "pinned": {},
    }
    for i, tok in enumerate(pinned or []):
        key = ids[i] if ids is not None else tok
        out["pinned"][tok] = {"prob": pack(lens.prob(key)), "rank": pack(lens.rank(key))}
    return out


# --------------------------------------------------------------------------- one worker per model


class Job:
    def __init__(
        self,
        owner: WorkbenchWidget,
        kind: str,
        request_id: str,
        fn: Callable,
        done: Callable,
        slot: str,
        failed: Callable[[BaseException], None] | None = None,
        quiet: bool = False,
    ):
        self.owner = owner
        self.kind = kind
        self.request_id = request_id
        self.fn = fn
        self.done = done
        self.slot = slot
        self.failed = failed  # called (before the error shows) when the job fails or is cancelled
        self.quiet = quiet  # a background job: leaves status/progress/error alone unless it fails
        self.cancel = threading.Event()


class Runner:
    """Runs one computation at a time for one model, on one daemon thread.

    A new job for the same (widget, slot) replaces a job of that slot that has not started yet (a second click
    while one runs is queued, and a third replaces the second); jobs are never interleaved.

    The runner never holds the model: the model holds its runner (`model._wb_runner`), the worker thread holds
    only a weak reference to the runner between jobs, and it exits after `RUNNER_IDLE_EXIT` seconds without
    work (the next job starts a new one). So `del model` frees the model once no view uses it.
    """

    def __init__(self, model: Any = None):  # `model` is accepted for old callers and not kept
        del model
        self._cv = threading.Condition()
        self._pending: list[Job] = []
        self.current: Job | None = None
        self._thread: threading.Thread | None = None

    def submit(self, job: Job) -> None:
        with self._cv:
            for old in [j for j in self._pending if j.owner is job.owner and j.slot == job.slot]:
                self._pending.remove(old)
                old.owner._superseded(old)
            self._pending.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=_runner_loop, args=(weakref.ref(self),), name="workbench-runner", daemon=True
                )
                self._thread.start()
            self._cv.notify_all()

    def cancel(self, owner: Any) -> tuple[list[Job], Job | None]:
        """Cancel the owner's running job and drop its pending ones: (dropped pending jobs, the running job)."""
        with self._cv:
            dropped = [j for j in self._pending if j.owner is owner]
            for j in dropped:
                self._pending.remove(j)
            running = self.current if self.current is not None and self.current.owner is owner else None
            if running is not None:
                running.cancel.set()
        return dropped, running

    def busy_for(self, owner: Any) -> bool:
        """Whether `owner` has a job running or queued."""
        with self._cv:
            return (self.current is not None and self.current.owner is owner) or any(
                j.owner is owner for j in self._pending
            )

    def pending_for(self, owner: Any) -> bool:
        """Whether `owner` has a job queued (not the running one): a newer request is on its way."""
        with self._cv:
            return any(j.owner is owner for j in self._pending)

    def idle(self) -> bool:
        with self._cv:
            return self.current is None and not self._pending

    def wait_idle(self, timeout: float = 60.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.idle():
                return True
            time.sleep(0.01)
        return self.idle()


def _runner_loop(ref: weakref.ref) -> None:
    """The worker thread: holds the runner only while it looks for or runs a job, never the model."""
    while True:
        runner = ref()
        if runner is None:
            return
        with runner._cv:
            if not runner._pending:
                runner._cv.wait(RUNNER_IDLE_EXIT)
            if not runner._pending:
                runner._thread = None  # under the lock: submit() starts a new thread after this one
                return
            job = runner._pending.pop(0)
            runner.current = job
        try:
            job.owner._execute(job)
        except BaseException:  # noqa: BLE001 - the loop must survive anything a job does
            traceback.print_exc()
        finally:
            with runner._cv:
                runner.current = None
            del job, runner  # nothing of the job (its closures hold the model) outlives it here


def runner_for(model: Any) -> Runner:
    r = getattr(model, "_wb_runner", None)
    if r is None:
        r = Runner()
        with contextlib.suppress(AttributeError):
            model._wb_runner = r
    return r


_ids = itertools.count(1)


def _no_progress(fraction: float, message: str = "") -> None:
    pass


def _request_id() -> str:
    return f"py{next(_ids)}"


def message_error(text: str) -> Exception:
    return _errors().MessageError(text)


def check_int(
    content: dict, name: str, lo: int, hi: int, *, optional: bool = False, what: str = ""
) -> int | None:
    """An integer field lo..hi of a request from the view, or a MessageError naming what was wrong."""
    v = content.get(name)
    label = what or name
    if v is None:
        if optional:
            return None
        raise message_error(f"The view's request has no {label}: it needs an integer {lo}..{hi}.")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise message_error(
            f"The view sent {label}={v!r} ({type(v).__name__}): it must be an integer {lo}..{hi}."
        )
    if isinstance(v, float):
        if not np.isfinite(v) or v != int(v):
            raise message_error(
                f"The view sent {label}={v!r}: it must be a whole number {lo}..{hi}, not a fraction."
            )
        v = int(v)
    if not lo <= v <= hi:
        raise message_error(f"The view sent {label}={v}, outside {lo}..{hi}.")
    return int(v)


def readable(exc: BaseException) -> str:
    """The message a person reads in the widget."""
    from ..errors import WorkbenchError

    if isinstance(exc, WorkbenchError):
        return f"{type(exc).__name__}: {exc}"
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


# --------------------------------------------------------------------------- the widget base


class WorkbenchWidget(anywidget.AnyWidget):
    """Shared traits and messaging of the Workbench views."""

    from .dock import dock_view as dock  # view.dock(): JupyterLab's right side panel (widgets/dock.py)

    # the bundle's text, not its Path: for a Path anywidget connects every instance to a file-watch signal with a
    # strong reference, so no view (and no model a view used) could ever be freed
    _esm = (
        BUNDLE.read_text(encoding="utf-8")
        if BUNDLE.exists()
        else "export default { render({ el }) { el.textContent = 'Workbench: the JS bundle is missing; run make install (npm run build in js/).'; } }"
    )
    _view_kind = traitlets.Unicode("").tag(sync=True)
    _standalone = traitlets.Bool(False).tag(sync=True)
    status = traitlets.Unicode("idle").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    progress = traitlets.Float(0.0).tag(sync=True)
    progress_text = traitlets.Unicode("").tag(sync=True)
    # not synced: every new run goes to the view as one "history_add" message (the list is never re-sent per click)
    history = traitlets.List()
    code = traitlets.Unicode("").tag(sync=True)
    selected = traitlets.List().tag(sync=True, echo_update=False)

    def __init__(self, model: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.model = model
        self.last_result: Any = None
        self.last_error: BaseException | None = None
        self.compute_ms = 0.0  # engine time of the last computation
        self._exports: dict[str, Path] = {}
        self._handlers: dict[str, Callable[[dict, list], None]] = {
            "cancel": lambda c, b: self.cancel(),
            "export_html": self._on_export_html,
            "export_result": self._on_export_result,
            "attached": self._on_attached,
            "detached": self._on_detached,
        }
        self._frontends = 0  # views of this widget drawn by a front end (they say so when they render)
        self.on_msg(self._on_msg)
        self.observe(self._status_error_invariant, names=["status", "error"])

    # ---- messaging
    def _status_error_invariant(self, change: Any) -> None:
        """status "error" always carries a message, and clearing the message clears the error status."""
        if change["name"] == "error" and not change["new"] and self.status == "error":
            self.status = "idle"
        elif change["name"] == "status" and change["new"] == "error" and not self.error:
            self.error = "The last action failed without a message (see the kernel log)."

    def _clear_error(self) -> None:
        """Drop a shown error (the status follows: see _status_error_invariant)."""
        self.error = ""

    def _set_error(self, message: str) -> None:
        self.error = message
        self.status = "error"

    def _on_msg(self, _widget: Any, content: Any, buffers: list) -> None:
        if not isinstance(content, dict):
            self._fail(
                message_error(f"The view sent a request that is not an object: {str(content)[:80]!r}.")
            )
            return
        kind = content.get("kind")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            known = ", ".join(
                sorted(k for k in self._handlers if k not in ("attached", "detached", "export_result"))
            )
            self._fail(message_error(f"Unknown request {str(kind)[:40]!r} from the view (known: {known})."))
            return
        try:
            handler(content, buffers or [])
        except Exception as exc:  # a bad request must show in the widget, not only in the log
            self._fail(exc)

    def request(self, kind: str, **payload: Any) -> None:
        """Act as if the view sent `{kind, id, **payload}` (what a click does); for tests and scripts."""
        self._on_msg(self, {"kind": kind, "id": _request_id(), **payload}, [])

    @property
    def runner(self) -> Runner:
        return runner_for(self.model)

    def submit(
        self,
        kind: str,
        request_id: str,
        fn: Callable,
        done: Callable,
        *,
        slot: str = "click",
        wait: bool = False,
        failed: Callable[[BaseException], None] | None = None,
        quiet: bool = False,
    ) -> None:
        """Run `fn(progress, cancel)` (one ops call) on the model's worker, then `done(result)`.

        `failed(exc)` runs if it raises or is cancelled (to undo what the request changed); a `quiet` job runs in
        the background without touching status/progress unless it fails.
        """
        job = Job(self, kind, request_id or _request_id(), fn, done, slot, failed=failed, quiet=quiet)
        if wait:
            with self.model.lock:
                self._execute(job)
        else:
            if not quiet:
                self.status = "running"
                self.progress = 0.0
                self.progress_text = "queued" if not self.runner.idle() else ""
            self.runner.submit(job)

    def _execute(self, job: Job) -> None:
        last = [0.0]

        def progress(fraction: float, message: str = "") -> None:
            now = time.monotonic()
            f = finite(fraction)
            f = 0.0 if f is None else min(1.0, max(0.0, f))  # NaN would break the JSON sync
            if now - last[0] >= 0.1 or f >= 1.0:
                last[0] = now
                self.progress = f
                self.progress_text = str(message)

        from ..errors import CancelledError

        if job.quiet:
            progress = _no_progress  # noqa: F811 - a background job does not drive the progress bar
        else:
            self.status = "running"
            self.error = ""
            self.progress = 0.0
            self.progress_text = job.kind
        try:
            with self.model.lock:
                t0 = time.perf_counter()
                result = job.fn(progress, job.cancel)
                if not job.quiet:
                    self.compute_ms = (time.perf_counter() - t0) * 1000.0
                job.done(result)
        except CancelledError as exc:
            note = self._undo(job, exc)
            if note:
                self._set_error(note)
            elif not job.quiet:
                self._cancelled(job)
            return
        except Exception as exc:
            note = self._undo(job, exc)
            if job.quiet and job.failed is not None:
                return  # a background job with its own failure display leaves the view's status alone
            self._fail(exc, note)
            return
        if job.quiet:
            return
        # an error shown since the job started (input checked while it ran) keeps its status
        self.status = "error" if self.error else "done"
        self.progress = 1.0
        self.progress_text = ""

    def _undo(self, job: Job, exc: BaseException) -> str:
        """Run the job's `failed` callback; what it returns is a note added to the error message."""
        if job.failed is not None:
            try:
                return str(job.failed(exc) or "")
            except Exception:  # noqa: BLE001 - the original error is the one to show
                traceback.print_exc()
        return ""

    def _cancelled(self, job: Job) -> None:
        self.status = "idle"
        self.progress = 0.0
        self.progress_text = "cancelled"

    def _fail(self, exc: BaseException, note: str = "") -> None:
        """Show `exc` (and `note`, what was undone) as the view's error."""
        self.last_error = exc
        self.error = (readable(exc) or f"{type(exc).__name__} (no message)") + (f"\n{note}" if note else "")
        self.status = "error"
        self.progress_text = ""

    def _superseded(self, job: Job) -> None:
        """A queued job was replaced by a newer one of its slot: nothing to undo or show (the status stays
        "running" for the newer job; state the view draws lives in traits, so no message is sent)."""

    def cancel(self) -> None:
        """Cancel this view's running computation and drop its queued ones (the status says "cancelled")."""
        from ..errors import CancelledError

        dropped, running = self.runner.cancel(self)
        notes = []
        for job in dropped:  # never started: undo what the request changed (the status below tells the view)
            notes.append(self._undo(job, CancelledError("cancelled before it started")))
        # nothing left that would end the "running" state (a background job never sets it)
        if (running is None or running.quiet) and self.status == "running":
            self.status = "idle"
            self.progress = 0.0
            self.progress_text = "cancelled"
        if any(notes):
            self.error = "Cancelled. " + " ".join(n for n in notes if n)

    def wait(self, timeout: float = 120.0) -> WorkbenchWidget:
        """Block until this model's worker is idle (for scripts and tests); returns the view.

        Raises `WaitTimeoutError` (a WorkbenchError and a TimeoutError) if work is still running or queued after
        `timeout` seconds; the work goes on (`view.cancel()` stops it).
        """
        if not self.runner.wait_idle(timeout):
            busy = self.runner.current
            what = f"{busy.kind!r}" if busy is not None else "queued work"
            raise _errors().WaitTimeoutError(
                f"{type(self).__name__}.wait({timeout:g}) timed out: {what} is still running on this model's "
                "worker. Wait longer, or call view.cancel() to stop it."
            )
        return self

    # ---- history and code
    def _record(self, label: str, result: Any, args: dict[str, Any] | None = None, **extra: Any) -> None:
        """Add a run to the history (code and all, in Python) and send the view its short entry only."""
        top = []
        toks = getattr(result, "top_tokens", None)
        probs = getattr(result, "top_probs", None)
        if toks is not None and probs is not None and np.ndim(probs) == 1:
            top = [[str(t), finite(p)] for t, p in zip(toks, np.asarray(probs).tolist(), strict=False)]
        code = ""
        with contextlib.suppress(Exception):
            code = result.to_code()
        entry = {
            "id": _request_id(),
            "label": label,
            "value": finite(result) if isinstance(result, float) else None,
            "clean": finite(getattr(result, "clean_mean", getattr(result, "clean", None))),
            "corrupt": finite(getattr(result, "corrupt_mean", getattr(result, "corrupt", None))),
            "top": top,
            "args": {str(k): _short_arg(v) for k, v in (args or {}).items()},
            "code": code,
            **extra,
        }
        self.history = ([*self.history, entry])[-HISTORY_MAX:]
        with contextlib.suppress(Exception):
            self.send({"kind": "history_add", "entry": _small_entry(entry), "max": HISTORY_MAX})
        if code:
            self.code = code

    def _history_state(self) -> list[dict[str, Any]]:
        return [_small_entry(e) for e in self.history]

    def _on_attached(self, content: dict, _buffers: list) -> None:
        """A front end drew this view: it can answer exports; send it the history so far (once)."""
        self._frontends += 1
        self.send({"kind": "history", "entries": self._history_state(), "max": HISTORY_MAX})

    def _on_detached(self, content: dict, _buffers: list) -> None:
        self._frontends = max(0, self._frontends - 1)

    def to_code(self) -> str:
        """Standalone nnsight code that reproduces the current intervention (or view)."""
        if self.last_result is not None and hasattr(self.last_result, "to_code"):
            return self.last_result.to_code()
        return self.code

    # ---- exports
    def to_html(self, title: str = "Workbench") -> str:
        """A standalone HTML page of the current view: opens in any browser, with no kernel."""
        return standalone_html(self, title)

    def save_html(self, path: str | Path, title: str = "Workbench") -> Path:
        p = Path(path)
        p.write_text(self.to_html(title), encoding="utf-8")
        return p

    def _request_export(self, fmt: str, path: str | Path) -> Path:
        if self._frontends <= 0:
            raise _errors().ExportError(
                f"save_{fmt} draws the view in the browser, and no front end shows this view: display it in a "
                f"notebook (JupyterLab, Notebook 7, VS Code) and call save_{fmt} in a later cell, or use "
                f"save_html(path), which writes a standalone page from Python. (From a script, save_html works; "
                f"save_{fmt} cannot.)"
            )
        rid = _request_id()
        self._exports[rid] = Path(path)
        self.send({"kind": "export", "format": fmt, "id": rid})
        return Path(path)

    def save_png(self, path: str | Path) -> Path:
        """Ask the front end that shows this view for a PNG, written to `path` when it answers.

        The kernel reads the answer once the running cell has finished, so the file appears after the cell. With no
        front end showing the view (a script, or a view not displayed yet) it raises ExportError: use save_html.
        """
        return self._request_export("png", path)

    def save_svg(self, path: str | Path) -> Path:
        """As save_png, for an SVG of the view: its heatmaps, charts, head view and result, as the PNG shows."""
        return self._request_export("svg", path)

    def _on_export_result(self, content: dict, buffers: list) -> None:
        path = self._exports.pop(str(content.get("id")), None)
        if path is not None and buffers:
            path.write_bytes(bytes(buffers[0]))

    def _on_export_html(self, content: dict, buffers: list) -> None:
        html = self.to_html().encode("utf-8")
        self.send({"kind": "html", "id": content.get("id")}, buffers=[html])


def _short_arg(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v if not isinstance(v, float) else finite(v)
    if isinstance(v, (list, tuple)):
        return [_short_arg(x) for x in list(v)[:20]]
    return str(v)[:200]


def _small_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A history entry as the view shows it: no code (that stays in Python; view.history has it)."""
    return {k: v for k, v in entry.items() if k != "code"}


def _jsonable(x: Any) -> Any:
    if isinstance(x, (bytes, bytearray, memoryview)):
        return {"__b64__": base64.b64encode(bytes(x)).decode("ascii")}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _script_json(x: Any) -> str:
    return json.dumps(x).replace("</", "<\\/").replace("<!--", "<\\u0021--")


_LOADER = """
const $ = (id) => JSON.parse(document.getElementById(id).textContent);
function revive(x) {
  if (x && typeof x === "object") {
    if (typeof x.__b64__ === "string") {
      const bin = atob(x.__b64__); const u = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
      return new DataView(u.buffer);
    }
    for (const k of Object.keys(x)) x[k] = revive(x[k]);
  }
  return x;
}
const state = revive($("wb-state"));
state._standalone = true;
const url = URL.createObjectURL(new Blob([$("wb-bundle")], { type: "text/javascript" }));
const mod = await import(url);
mod.default.render({ model: new mod.StaticModel(state), el: document.getElementById("wb-root") });
"""


def standalone_html(widget: WorkbenchWidget, title: str) -> str:
    state = {k: v for k, v in widget.get_state().items() if not k.startswith("_") or k == "_view_kind"}
    state["history"] = widget._history_state()
    return html_from_state(state, title)


def html_from_state(state: dict[str, Any], title: str = "Workbench") -> str:
    """A page that renders a view from its trait state with the bundled JS and no kernel."""
    bundle = BUNDLE.read_text(encoding="utf-8") if BUNDLE.exists() else ""
    from html import escape

    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f'<title>{escape(title)}</title></head>\n<body>\n<div id="wb-root"></div>\n'
        f'<script id="wb-state" type="application/json">{_script_json(_jsonable(state))}</script>\n'
        f'<script id="wb-bundle" type="application/json">{_script_json(bundle)}</script>\n'
        f'<script type="module">{_LOADER}</script>\n</body></html>\n'
    )
