"""CausalTraceView: ROME's three-panel causal-tracing figure (hidden state, MLP, attention), live.

Each panel is `wb.causal_trace(model, prompt, subject=..., kind=...)` drawn as tokens x layers, colour =
p(target) between the noised (low) and clean (high) runs; a click restores that one state alone
(`workbench.ops.tracing_restore.restore_state`) and shows the restored run's prediction and logit lens.
Over a `wb.Dataset` of facts the panels are the [L, 6] means of ROME's position groups, and an example can
be opened as its own grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import traitlets

from .base import WorkbenchWidget, _errors, _ops, check_int, finite, message_error, pack
from .dataset import answer_text, is_dataset

KINDS = ("resid", "mlp", "attn")
KIND_NAMES = {"resid": "hidden", "mlp": "MLP", "attn": "attn"}
SEVERS = ("", "mlp", "attn")
TOP_K = 5


def _restore_op():
    from ..ops.tracing_restore import restore_state

    return restore_state


def _trace_entry(kind: str, tr: Any, settings: dict[str, Any], *, mean: bool = False) -> dict[str, Any]:
    """A CausalTrace (or a DatasetCausalTrace's group means) as a panel: binary grid, labels and baselines."""
    entry: dict[str, Any] = {
        "kind": kind,
        "values": pack(np.asarray(tr.values, np.float32)),
        "high": finite(tr.high),
        "low": finite(tr.low),
        "labels": [str(x) for x in tr.labels],
        "settings": settings,
        "grouped": mean,
    }
    if mean:
        entry["sem"] = pack(np.asarray(tr.sem, np.float32))
        entry["counts"] = [int(c) for c in np.asarray(tr.counts).tolist()]
        entry["n"] = len(tr.per_example)
        entry["target"] = "each fact's answer"
        entry["subject"] = None
    else:
        entry["tokens"] = [str(t) for t in tr.tokens]
        entry["subject"] = [int(tr.subject[0]), int(tr.subject[1])]
        entry["target"] = str(tr.target)
    return entry


class CausalTraceView(WorkbenchWidget):
    """`CausalTraceView(model, prompt, subject="Eiffel Tower", target=None, noise=3.0, samples=10, window=10,
    sever=None)`: ROME's figure, three causal traces side by side (hidden state, MLP, attention), tokens down
    (subject tokens marked *), layers across, colour = p(target) from the noised run (low) to the clean (high).

    The three kinds run one after another (progress "hidden 1/3", ...); Cancel stops the rest and keeps the
    panels that finished. Hover a cell for p(target) and the effect (value - low); click it to restore that
    state alone: the restored run's top-5 (mean over the noised samples) and its logit lens at the last
    position. `sever` ("mlp"/"attn") applies to the hidden-state panel. Changing the noise, samples, window,
    sever, subject or prompt recomputes the panels that depend on it (earlier ones are kept in a cache).

    `CausalTraceView(model, ds)` with a `wb.Dataset` of facts (a `subject` span each, e.g.
    `wb.datasets.facts()`): the panels are the [L, 6] means in ROME's position groups; `open_example(i)`
    shows fact i's own grids (from the same run) and clicks restore there; `open_example(-1)` goes back.
    """

    _view_kind = traitlets.Unicode("tracing").tag(sync=True)
    prompt = traitlets.Unicode("").tag(sync=True)
    subject = traitlets.Unicode("").tag(sync=True)
    target = traitlets.Unicode("").tag(sync=True)
    noise = traitlets.Float(3.0).tag(sync=True)
    samples = traitlets.Int(10).tag(sync=True)
    window = traitlets.Int(10).tag(sync=True)
    sever = traitlets.Unicode("").tag(sync=True)
    seed = traitlets.Int(0).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    # the panels shown, by kind ("resid", "mlp", "attn"): {"values": float32 [L, C], "high", "low", "labels",
    # "tokens", "subject", "target", "settings", "grouped", ("sem", "counts", "n" over a dataset)}
    traces = traitlets.Dict().tag(sync=True)
    # the kinds whose panel was computed with other settings than the current ones (a cancelled or failed run)
    stale = traitlets.List(traitlets.Unicode()).tag(sync=True)
    # the last clicked cell restored alone: {"kind", "layer", "position", "value", "high", "low", "target",
    # "top_tokens", "top_probs" float32 [k], "lens_tokens" [L], "lens_probs" float32 [L], "lens_target", "layers"}
    restored = traitlets.Dict().tag(sync=True)
    # over a dataset ({} for one prompt): {"n", "name", "examples": [{"clean", "target", "subject"}]}
    dataset = traitlets.Dict().tag(sync=True)
    # the example whose grids are shown, or -1: the dataset's group means
    example = traitlets.Int(-1).tag(sync=True)

    def __init__(
        self,
        model: Any,
        prompt: Any,
        subject: str | None = None,
        target: str | None = None,
        *,
        noise: float = 3.0,
        samples: int = 10,
        window: int = 10,
        sever: str | None = None,
        seed: int = 0,
        wait: bool = True,
        **kwargs: Any,
    ):
        ds = prompt if is_dataset(prompt) else None
        errors = _errors()
        if ds is not None:
            if subject is not None or target is not None:
                raise errors.WorkbenchError(
                    "CausalTraceView over a Dataset reads each fact's subject span and target from the Dataset: "
                    "drop subject= and target=."
                )
            kwargs["dataset"] = {"n": len(ds), "name": ds.name, "examples": self._examples(model, ds)}
            prompt, subject = "", ""
        else:
            if not isinstance(prompt, str) or not prompt:
                raise errors.WorkbenchError(
                    f"CausalTraceView(model, prompt, subject=...) takes a prompt text or a wb.Dataset, got "
                    f"{type(prompt).__name__}."
                )
            if not subject or not isinstance(subject, str):
                raise errors.WorkbenchError(
                    "CausalTraceView needs subject=: the words of the prompt whose embeddings are noised, e.g. "
                    "subject='Eiffel Tower'."
                )
        if sever not in (None, "", "mlp", "attn"):
            raise errors.WorkbenchError(f"sever= is None, 'mlp' or 'attn', got {sever!r}.")
        self._ds = ds
        self._cache: dict[tuple, Any] = {}  # settings key -> CausalTrace / DatasetCausalTrace
        self._made: dict[tuple, dict[str, Any]] = {}  # settings key -> the view's settings that made it
        self._shown: dict[str, tuple[tuple, Any]] = {}  # kind -> (key, result) of each panel shown
        self._quiet = False
        super().__init__(
            model,
            prompt=prompt,
            subject=subject or "",
            target=answer_text(model, target) if target is not None else "",
            noise=float(noise),
            samples=int(samples),
            window=int(window),
            sever=sever or "",
            seed=int(seed),
            n_layers=int(model.n_layers),
            **kwargs,
        )
        self._handlers.update(restore=self._on_restore)
        self.observe(
            self._settings_changed,
            names=["prompt", "subject", "target", "noise", "samples", "window", "sever", "seed"],
        )
        self.observe(self._open_example, names=["example"])
        self.recompute(wait=wait)

    @staticmethod
    def _examples(model: Any, ds: Any) -> list[dict[str, Any]]:
        rows = []
        for e in ds:
            a, b = (e.spans or {}).get("subject", (0, 0))
            try:
                toks = model.to_str_tokens(e.clean)
                subj = "".join(toks[a:b])
            except Exception:  # noqa: BLE001 - only a label
                subj = ""
            rows.append({"clean": e.clean, "target": answer_text(model, e.target), "subject": subj})
        return rows

    # ---- settings
    def _settings(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "subject": self.subject,
            "target": self.target,
            "noise": float(self.noise),
            "samples": int(self.samples),
            "window": int(self.window),
            "sever": self.sever,
            "seed": int(self.seed),
        }

    def _key(self, kind: str, s: dict[str, Any]) -> tuple:
        """What a panel of `kind` depends on: the window only for MLP/attn, sever only for the hidden state."""
        return (
            kind,
            "" if self._ds is not None else s["prompt"],
            "" if self._ds is not None else s["subject"],
            s["target"],
            s["noise"],
            s["samples"],
            s["seed"],
            s["window"] if kind != "resid" else 0,
            s["sever"] if kind == "resid" else "",
        )

    def _settings_changed(self, change: Any) -> None:
        if self._quiet:
            return
        self.recompute()

    def _set_quietly(self, **traits: Any) -> None:
        self._quiet = True
        try:
            with self.hold_trait_notifications():
                for k, v in traits.items():
                    setattr(self, k, v)
        finally:
            self._quiet = False

    # ---- computing the panels
    def recompute(self, wait: bool = False) -> None:
        """Trace the kinds whose panel is not in the cache for the current settings (one after another)."""
        s = self._settings()
        todo = []
        for kind in KINDS:
            key = self._key(kind, s)
            if key in self._cache:
                self._show(kind, key, self._cache[key], s)
            else:
                todo.append((kind, key))
        self._update_stale()
        if not todo:
            self._after_run(s)
            if not self.runner.busy_for(self):
                self._clear_error()
            return
        ds = self._ds

        def run(progress, cancel):
            got = []
            for i, (kind, key) in enumerate(todo):
                label = f"{KIND_NAMES[kind]} {i + 1}/{len(todo)}"

                def part(fraction: float, message: str = "", i: int = i, label: str = label) -> None:
                    progress(
                        (i + min(max(float(fraction), 0.0), 1.0)) / len(todo), f"{label} {message}".strip()
                    )

                part(0.0)
                self.progress_text = label  # the start of each kind shows even within the progress throttle
                r = _ops().causal_trace(
                    self.model,
                    ds if ds is not None else s["prompt"],
                    subject=None if ds is not None else s["subject"],
                    target=s["target"] or None,
                    kind=kind,
                    window=s["window"],
                    noise=s["noise"],
                    samples=s["samples"],
                    seed=s["seed"],
                    sever=(s["sever"] or None) if kind == "resid" else None,
                    progress=part,
                    cancel=cancel,
                )
                self._cache[key] = r
                if self._settings() == s:  # still what the user asked for: show it now (a cancel keeps it)
                    self._show(kind, key, r, s)
                    self._update_stale()
                got.append((kind, r))
            return got

        def done(got):
            for kind, r in got:
                what = f"over {len(ds)} facts" if ds is not None else repr(s["prompt"][:40])
                self._record(
                    f"{KIND_NAMES[kind]} trace {what}",
                    r,
                    args={k: v for k, v in s.items() if k not in ("prompt",) or ds is None},
                    kind=kind,
                )
            self._after_run(s)

        def failed(exc):
            self._update_stale()
            if isinstance(exc, _errors().CancelledError):
                return ""
            # the controls go back to the settings of the panels shown, so they never describe other data
            shown = self._shown_settings()
            if shown is None or shown == self._settings():
                return "" if self._shown else "Nothing to show yet: fix the input and it runs again."
            changed = [k for k in shown if shown[k] != self._settings()[k]]
            self._set_quietly(**{k: shown[k] for k in changed})
            self._update_stale()
            return f"The controls are back to the settings shown ({', '.join(changed)})."

        self.submit("causal trace", "", run, done, slot="trace", wait=wait, failed=failed)

    def _shown_settings(self) -> dict[str, Any] | None:
        """The settings of the newest panels shown (the hidden-state panel's first)."""
        for kind in KINDS:
            if kind in self._shown:
                key, _ = self._shown[kind]
                return dict(self._made.get(key, {})) or None
        return None

    def _show(self, kind: str, key: tuple, r: Any, s: dict[str, Any]) -> None:
        self._made.setdefault(key, dict(s))
        self._shown[kind] = (key, r)
        self.traces = {**self.traces, kind: self._entry(kind)}

    def _entry(self, kind: str) -> dict[str, Any]:
        key, r = self._shown[kind]
        settings = dict(self._made.get(key, {}))
        if self._ds is not None:
            if self.example >= 0:
                return _trace_entry(kind, r.per_example[self.example], settings)
            return _trace_entry(kind, r, settings, mean=True)
        return _trace_entry(kind, r, settings)

    def _update_stale(self) -> None:
        s = self._settings()
        self.stale = [k for k in KINDS if k in self._shown and self._shown[k][0] != self._key(k, s)]

    def _after_run(self, s: dict[str, Any]) -> None:
        shown = [self._shown_result(k) for k in KINDS if k in self._shown]
        self.last_result = shown[0] if shown else None
        self.code = self.to_code()

    def _shown_result(self, kind: str) -> Any:
        """The CausalTrace drawn in a panel (a fact's own when an example is open)."""
        if kind not in self._shown:
            return None
        r = self._shown[kind][1]
        if self._ds is not None and self.example >= 0:
            return r.per_example[self.example]
        return r

    # ---- over a dataset
    def _example_problem(self, i: int) -> str:
        if self._ds is None:
            return "" if i == -1 else "open_example applies to a CausalTraceView over a wb.Dataset."
        if not -1 <= i < len(self._ds):
            return (
                f"Example {i} does not exist: the dataset has {len(self._ds)} facts (0..{len(self._ds) - 1}), "
                "and -1 is the group means."
            )
        return ""

    def _open_example(self, change: Any) -> None:
        if self._quiet:
            return
        i = int(change["new"])
        problem = self._example_problem(i)
        if problem:  # from the view (a trait change) or open_example: shown in the view, the picker goes back
            self._set_quietly(example=int(change["old"]))
            self._fail(_errors().WorkbenchError(problem))
            return
        if self._ds is None:
            return
        self.restored = {}
        self.traces = {kind: self._entry(kind) for kind in self._shown}
        self._after_run(self._settings())
        if self.status == "error" and not self.runner.busy_for(self):
            self._clear_error()

    def open_example(self, i: int) -> CausalTraceView:
        """Show fact i's own grids (from the dataset run); -1 goes back to the group means."""
        problem = self._example_problem(int(i))
        if problem:
            self._fail(_errors().WorkbenchError(problem))
            raise _errors().WorkbenchError(problem)
        self.example = int(i)
        return self

    # ---- a click: restore one state
    def _on_restore(self, content: dict, _buffers: list) -> None:
        kind = content.get("panel")
        if kind not in KINDS:
            raise message_error(
                f"The view asked to restore in panel {str(kind)[:20]!r}: one of {', '.join(KINDS)}."
            )
        tr = self._shown_result(kind)
        if tr is None:
            raise message_error(
                f"The {KIND_NAMES[kind]} panel has no trace yet: wait for it (or run it again)."
            )
        if not isinstance(tr, _ops().CausalTrace):
            raise _errors().WorkbenchError(
                "Restoring a state needs one fact: the panels show group means over the dataset. Open an example "
                "(the picker) and click its grid."
            )
        n_layers, n_tokens = tr.values.shape
        layer = check_int(content, "layer", 0, n_layers - 1)
        position = check_int(content, "position", 0, n_tokens - 1)
        self.restore(kind, layer, position, request_id=str(content.get("id") or ""))

    def restore(
        self, kind: str, layer: int, position: int, *, request_id: str = "", wait: bool = False
    ) -> None:
        """Restore the state of panel `kind` at (layer, position) alone; the result goes to `restored`."""
        tr = self._shown_result(kind)
        if tr is None:
            raise _errors().WorkbenchError(f"The {KIND_NAMES.get(kind, kind)} panel has no trace yet.")

        def run(progress, cancel):
            progress(0.0, f"restoring {KIND_NAMES[kind]} L{layer} pos {position}")
            return _restore_op()(self.model, tr, layer, position, top_k=TOP_K)

        def done(r):
            self.restored = {
                "kind": kind,
                "layer": int(r.layer),
                "position": int(r.position),
                "token": str(tr.labels[r.position]),
                "value": finite(r.value),
                "high": finite(r.high),
                "low": finite(r.low),
                "target": str(r.target),
                "top_tokens": [str(t) for t in r.top_tokens],
                "top_probs": pack(r.top_probs),
                "lens_tokens": [str(t) for t in r.lens_tokens],
                "lens_probs": pack(r.lens_probs),
                "lens_target": pack(r.lens_target),
                "layers": [int(j) for j in r.layers],
                "sever": str(r.options.get("sever") or ""),
            }
            self.selected = [int(r.layer), int(r.position)]
            self._record(
                f"restore {KIND_NAMES[kind]} L{r.layer} {tr.labels[r.position]!r}",
                float(r.value),
                args={"kind": kind, "layer": r.layer, "position": r.position},
                top=[[str(t), finite(p)] for t, p in zip(r.top_tokens, r.top_probs.tolist(), strict=False)],
            )

        self.submit("restore", request_id, run, done, slot="restore", wait=wait)

    # ---- code
    def to_code(self) -> str:
        """The nnsight code of the traces shown, one section per panel."""
        parts = []
        for kind in KINDS:
            r = self._shown_result(kind)
            if r is None:
                continue
            try:
                code = r.to_code()
            except Exception as exc:  # noqa: BLE001 - one panel's code failing must not hide the others
                code = f"# (no code: {exc})\n"
            title = {
                "resid": "hidden state (kind='resid')",
                "mlp": "MLP (kind='mlp')",
                "attn": "attention (kind='attn')",
            }
            parts.append(f"# ---- {title[kind]} ----\n{code}")
        return "\n\n".join(parts)
