"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"; ROME's
`trace_with_patch`): corrupt the subject's token embeddings with Gaussian noise, restore one state at a time
from the clean run, and read how much of p(answer) comes back, averaged over the noised samples.

`kind="resid"` restores the block output (resid_post) at one (layer, position); `"mlp"`/`"attn"` restore that
sub-block's output at the position over a window of layers centred on the layer (ROME's convention);
`sever="mlp"`/`"attn"` freezes that sub-block's output at the restored position, in every layer, at its
noised value (ROME's severed paths, Fig. 2; the frozen values come from the very noise sample of the run,
where ROME's trace_with_repatch draws fresh noise for its first pass). Over a Dataset of facts with a
`subject` span each, the grids are averaged in ROME's six position groups (pooling a group's tokens as
ROME's averages do; `.sem` is the pooled std with ddof=1 over the square root of the pooled count).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import codegen
from ..data.dataset import Dataset
from ..engine import noised
from ..engine.batching import Progress
from ..engine.edits import Cell, Edit
from ..errors import TokenizationError, WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_int, as_number
from .over_dataset import is_dataset
from .results import Coded, Figured, _num, _short

# kind= -> the site a trace restores; sever= -> the site it freezes
KIND_SITES = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
SEVER_SITES = {"mlp": "mlp_out", "attn": "attn_out"}
# ROME's position groups of a fact (their averaged figure), in order
GROUPS = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)


# ------------------------------------------------------------------------------------------- results
class _Restorations(Coded, Figured):
    """What a single-prompt and a dataset trace share: the effect of each restore, and the kind restored."""

    values: np.ndarray
    low: float
    options: dict[str, Any]

    @property
    def effect(self) -> np.ndarray:
        """The indirect effect of each state: values - low."""
        return (self.values - np.float32(self.low)).astype(np.float32)

    @property
    def kind(self) -> str:
        return str(self.options.get("kind", "resid"))


@dataclass
class CausalTrace(_Restorations):
    """p(target) with one state restored at each (layer, position) of a noised prompt, float32 [L, T]."""

    _figure_name = "causal_trace"

    values: np.ndarray  # float32 [L, T]: p(target) restored there, mean over the noised samples
    high: float  # p(target) on the clean prompt
    low: float  # p(target) with the subject noised, nothing restored
    noise: torch.Tensor  # [samples, n_subject_tokens, d_model]: what was added to the embeddings
    subject: tuple[int, int]  # the subject's token positions, end exclusive
    tokens: list[str]
    target: str  # the answer token read
    target_id: int
    noise_std: float  # the embedding std the noise was scaled by (nan when noise= was a tensor)
    options: dict[str, Any]
    _code: Callable[[], str] = field(repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def labels(self) -> list[str]:
        """Token labels with the subject's tokens marked by * (as in ROME's figures)."""
        a, b = self.subject
        return [f"{t}*" if a <= i < b else t for i, t in enumerate(self.tokens)]

    def __repr__(self) -> str:
        o = self.options
        n_layers, n_tokens = self.values.shape
        a, b = self.subject
        what = {"resid": "hidden state", "mlp": "MLP output", "attn": "attention output"}[self.kind]
        extra = f", window {o.get('window')}" if self.kind != "resid" else ""
        if o.get("sever"):
            extra += f", {o['sever']} severed"
        lines = [
            f"CausalTrace {what} [{n_layers} layers x {n_tokens} tokens]{extra}, target {self.target!r}, "
            f"{o.get('samples')} samples, noise {_num(o.get('noise')) if not o.get('noise_given') else 'given'}",
            f"  subject tokens {a}..{b - 1} {''.join(self.tokens[a:b])!r}; p(target): clean (.high) "
            f"{_num(self.high)}, noised (.low) {_num(self.low)}",
        ]
        if self.values.size:
            j = int(np.nanargmax(self.values))
            layer, pos = divmod(j, n_tokens)
            lines.append(
                f"  strongest restore: L{layer} pos {pos} {self.tokens[pos]!r}: {self.values[layer, pos]:.4g} "
                f"(effect {self.effect[layer, pos]:+.4g})"
            )
        return "\n".join(lines)


@dataclass
class DatasetCausalTrace(_Restorations):
    """A causal trace averaged over facts in ROME's six position groups: float32 [L, 6]."""

    _figure_name = "dataset_causal_trace"

    values: np.ndarray  # float32 [L, 6]: mean p(target) restored in each group (ROME pools a group's tokens)
    sem: np.ndarray  # float32 [L, 6]: standard error of those means
    counts: np.ndarray  # int32 [6]: how many (fact, token) values each group pools
    per_example: list[CausalTrace]  # each fact's own grid
    groups: tuple[str, ...]
    noise_std: float  # the one embedding std of all the facts' subject tokens (ROME's rule)
    options: dict[str, Any]
    _code: Callable[[], str] = field(repr=False)

    @property
    def high(self) -> float:
        """Mean p(target) over the clean facts."""
        return float(np.mean([t.high for t in self.per_example]))

    @property
    def low(self) -> float:
        return float(np.mean([t.low for t in self.per_example]))

    @property
    def highs(self) -> np.ndarray:
        return np.array([t.high for t in self.per_example], dtype=np.float32)

    @property
    def lows(self) -> np.ndarray:
        return np.array([t.low for t in self.per_example], dtype=np.float32)

    @property
    def tokens(self) -> list[str]:
        return list(self.groups)

    @property
    def labels(self) -> list[str]:
        return list(self.groups)

    def example(self, i: int) -> CausalTrace:
        return self.per_example[as_int(i, "example", lo=0, hi=len(self.per_example) - 1)]

    def __repr__(self) -> str:
        o = self.options
        lines = [
            f"DatasetCausalTrace {self.kind} [{self.values.shape[0]} layers x 6 position groups] over "
            f"{len(self.per_example)} facts, {o.get('samples')} samples, noise {_num(o.get('noise'))} x std "
            f"{_num(self.noise_std)}; p(target) clean {_num(self.high)}, noised {_num(self.low)}"
        ]
        subjects = ["".join(t.tokens[t.subject[0] : t.subject[1]]).strip() for t in self.per_example[:3]]
        more = ", ..." if len(self.per_example) > 3 else ""
        lines.append("  subjects (noised): " + ", ".join(map(repr, subjects)) + more)
        if self.values.size and np.isfinite(self.values).any():
            peaks = []
            for k, name in enumerate(self.groups):
                col = self.values[:, k]
                if np.isfinite(col).any():
                    layer = int(np.nanargmax(col))
                    peaks.append(f"{name} L{layer} {col[layer]:.3g}")
            lines.append("  peak per group: " + "; ".join(peaks))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------- inputs
def window_layers(layer: int, window: int, n_layers: int) -> range:
    """The layers a windowed restore at `layer` covers (ROME: max(0, l - w//2) .. min(L, l - (-w//2)) - 1)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def subject_span(model: Model, prompt: str, ids: torch.Tensor, subject: Any) -> tuple[int, int]:
    """The token positions (start, end exclusive) of `subject` in the prompt: a (start, end) pair as given,
    or the tokens that overlap the subject text's first occurrence."""
    n = ids.shape[1]
    if isinstance(subject, tuple | list) and len(subject) == 2 and not isinstance(subject, str):
        a = as_int(subject[0], "subject start", lo=0, hi=n - 1)
        b = as_int(subject[1], "subject end", lo=a + 1, hi=n)
        return a, b
    if subject is None:
        raise WorkbenchError(
            "causal_trace needs subject=: the words whose embeddings are noised, e.g. subject='Eiffel Tower' "
            "(or a token span, subject=(1, 4))."
        )
    if not isinstance(subject, str):
        raise WorkbenchError(
            f"subject= is text in the prompt or a (start, end) token span, got {type(subject).__name__}."
        )
    if not subject.strip():
        raise WorkbenchError("subject= is empty: give the words to corrupt, e.g. subject='Eiffel Tower'.")
    where = prompt.find(subject)
    if where < 0:
        raise TokenizationError(
            f"The subject {subject!r} is not in the prompt {_short(prompt)}: give words that appear in it "
            "exactly (case and spacing included), or a token span subject=(start, end)."
        )
    end = where + len(subject)
    spans = _char_spans(model, prompt, ids)
    hit = [i for i, (s, e) in enumerate(spans) if e > s and s < end and e > where]
    if not hit:
        raise TokenizationError(f"No token of the prompt covers the subject {subject!r}.")
    return hit[0], hit[-1] + 1


def _char_spans(model: Model, prompt: str, ids: torch.Tensor) -> list[tuple[int, int]]:
    """Each token's character span in the prompt (offsets when the tokenizer gives them, else the decoded
    tokens' lengths laid end to end, as ROME's find_token_range does)."""
    try:
        enc = model.tokenizer(prompt, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        if len(offsets) == ids.shape[1]:
            return offsets  # type: ignore[return-value]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        pass
    spans, at = [], 0
    for tok in model.str_tokens(ids):
        spans.append((at, at + len(tok)))
        at += len(tok)
    return spans


def _target_id(model: Model, target: Any) -> int | None:
    if target is None:
        return None
    if isinstance(target, str):
        ids = model.tokenizer(target, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise TokenizationError(
                f"target={target!r} is {len(ids)} tokens {model.str_tokens(ids)}; causal tracing reads the "
                "probability of one next token: give its first token (e.g. ' Paris'), or target=None for the "
                "clean prediction."
            )
    return model.token_id(target)


def _checked(
    model: Model, kind: Any, window: Any, samples: Any, sever: Any
) -> tuple[str, int, int, str | None]:
    if kind not in KIND_SITES:
        raise WorkbenchError(f"kind= is 'resid', 'mlp' or 'attn' (the state restored), got {kind!r}.")
    window = as_int(window, "window", lo=1)
    samples = as_int(samples, "samples", lo=1)
    if sever is not None and sever not in SEVER_SITES:
        raise WorkbenchError(f"sever= is None, 'mlp' or 'attn' (the sub-block frozen), got {sever!r}.")
    if sever is not None and sever == kind:
        raise WorkbenchError(
            f"sever={sever!r} freezes the very outputs kind={kind!r} restores: sever a different sub-block, "
            "e.g. kind='resid', sever='mlp' (ROME's Fig. 2)."
        )
    return kind, window, samples, sever


def _noise(model: Model, noise: Any, samples: int, n_subject: int, seed: Any) -> noised.Noise | None:
    """The unit noise and the scale of `noise=` a float (None: the tensor is checked by the caller)."""
    if isinstance(noise, torch.Tensor | np.ndarray):
        t = torch.as_tensor(noise).detach().float().cpu()
        want = (samples, n_subject, model.d_model)
        if tuple(t.shape) != want:
            raise WorkbenchError(
                f"noise= as a tensor must have shape [samples, n_subject_tokens, d_model] = {list(want)}, got "
                f"{list(t.shape)}: pass a tensor of that shape (e.g. an earlier trace's .noise), or a float "
                "(a multiple of the subject embeddings' standard deviation)."
            )
        if not torch.isfinite(t).all():
            raise WorkbenchError("noise= has NaN or inf entries.")
        return None
    level = as_number(noise, "noise")
    if level < 0:
        raise WorkbenchError(
            f"noise= is a non-negative multiple of the embedding std (ROME: 3.0), got {level}."
        )
    return noised.Noise(_unit_noise(seed, samples, n_subject, model.d_model), (0, 0), level)


def _unit_noise(seed: Any, samples: int, n_subject: int, d_model: int) -> torch.Tensor:
    """Standard normal noise [samples, n, D] from torch.Generator().manual_seed(seed) (what to_code prints)."""
    gen = torch.Generator().manual_seed(as_int(seed, "seed", lo=0))
    return torch.randn(samples, n_subject, d_model, generator=gen)


def trace_rows(kind: str, window: int, n_layers: int, n_tokens: int) -> list[list[Edit]]:
    """The runs of a trace in row-major [layer, position] order, each its restoring edits (from the clean run)."""
    site = KIND_SITES[kind]
    rows = []
    for layer in range(n_layers):
        layers = [layer] if kind == "resid" else list(window_layers(layer, window, n_layers))
        for pos in range(n_tokens):
            rows.append([Edit(Cell(site, j, pos)) for j in layers])
    return rows


# ------------------------------------------------------------------------------------------- the op
def causal_trace(
    model: Model,
    prompt: str | Dataset,
    subject: Any = None,
    target: Any = None,
    *,
    kind: str = "resid",
    window: int = 10,
    noise: Any = 3.0,
    samples: int | None = None,
    seed: int = 0,
    sever: str | None = None,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> CausalTrace | DatasetCausalTrace:
    """ROME's causal trace of `prompt`: p(target) (default: the clean top-1) with the subject's embeddings
    noised and one state restored from the clean run, at every (layer, position): `.values` [L, T], `.high`,
    `.low`, `.effect`, `.noise`, `.subject`.

    `noise=` a float is a multiple of the std of the subject tokens' embeddings (ROME's "s3" is 3.0), drawn
    reproducibly from `seed`; a tensor [samples, n_subject_tokens, d_model] is added as given (`samples`
    defaults to 10, or to the tensor's first dimension). `kind` is the
    state restored ("resid" block outputs; "mlp"/"attn" sub-block outputs over `window` layers); `sever`
    freezes MLP or attention outputs at the restored position at their noised values.

    Over a `wb.Dataset` of facts with a `subject` span each (e.g. `wb.datasets.facts()`): the noise scale is
    the std over all the facts' subject tokens, each fact's target is its own (else its clean top-1), and the
    grids are averaged in ROME's six position groups: a DatasetCausalTrace (`.values` [L, 6], `.sem`,
    `.per_example`)."""
    if samples is None:  # 10, or as many as a given noise tensor has
        given = isinstance(noise, torch.Tensor | np.ndarray) and np.ndim(noise) == 3
        samples = int(np.shape(noise)[0]) if given else 10
    kind, window, samples, sever = _checked(model, kind, window, samples, sever)
    if is_dataset(prompt):
        if subject is not None:
            raise WorkbenchError(
                "causal_trace over a Dataset reads each fact's subject from its spans ({'subject': (start, end)}):"
                " drop subject=."
            )
        return _trace_dataset(
            model, prompt, target, kind, window, noise, samples, seed, sever, progress, cancel
        )
    ids = model.to_tokens(prompt)
    span = subject_span(model, prompt, ids, subject)
    tgt = _target_id(model, target)
    spec = _noise(model, noise, samples, span[1] - span[0], seed)
    if spec is None:
        spec = noised.Noise(torch.as_tensor(noise).detach().float().cpu(), span, None)
    else:
        spec = noised.Noise(spec.noise, span, spec.scale)
    options = dict(
        op="causal_trace",
        prompt=prompt,
        subject=list(span),
        subject_text=subject if isinstance(subject, str) else None,
        target=target if isinstance(target, str | type(None)) else int(target),
        kind=kind,
        window=window,
        noise=None if spec.scale is None else spec.scale,
        noise_given=spec.scale is None,
        samples=samples,
        seed=seed,
        sever=sever,
    )
    with model.lock, job_status(model, progress, cancel):
        return _trace_one(model, ids, spec, tgt, kind, window, sever, options, progress, cancel)


def _trace_one(
    model: Model,
    ids: torch.Tensor,
    spec: noised.Noise,
    target: int | None,
    kind: str,
    window: int,
    sever: str | None,
    options: dict[str, Any],
    progress: Progress,
    cancel: threading.Event | None,
) -> CausalTrace:
    rows = trace_rows(kind, window, model.n_layers, ids.shape[1])
    out = noised.run(model, ids, spec, rows, target=target, freeze=SEVER_SITES.get(sever or ""),
                     progress=progress, cancel=cancel)  # fmt: skip
    return _result(model, ids, spec.span, out, options)


def _result(
    model: Model, ids: torch.Tensor, span: tuple[int, int], out: noised.Traced, options: dict[str, Any]
) -> CausalTrace:
    """A CausalTrace from the engine's output (values in row-major [layer, position] order)."""
    n_layers, n_tokens = model.n_layers, ids.shape[1]
    values = out.values.numpy().reshape(n_layers, n_tokens).astype(np.float32)
    options = dict(options, target_id=out.target)
    result = CausalTrace(
        values=values,
        high=out.high,
        low=out.low,
        noise=out.noise,
        subject=span,
        tokens=model.str_tokens(ids),
        target=model.str_tokens([out.target])[0],
        target_id=out.target,
        noise_std=out.std,
        options=options,
        _code=lambda: "",
    )
    result._code = lambda: codegen.causal_trace_code(model, options, result.noise)
    return result


# ------------------------------------------------------------------------------------------- over facts
def _trace_dataset(
    model: Model,
    ds: Dataset,
    target: Any,
    kind: str,
    window: int,
    noise: Any,
    samples: int,
    seed: int,
    sever: str | None,
    progress: Progress,
    cancel: threading.Event | None,
) -> DatasetCausalTrace:
    if target is not None:
        raise WorkbenchError(
            "causal_trace over a Dataset reads each fact's own target (or its clean top-1 when the Dataset has "
            "none): drop target=, or give the Dataset target=[...]."
        )
    if isinstance(noise, torch.Tensor | np.ndarray):
        raise WorkbenchError(
            "noise= over a Dataset is a float (a multiple of the subject embeddings' std): facts differ in "
            "subject length, so one tensor cannot fit them all. Replay one fact exactly with "
            "wb.causal_trace(model, prompt, subject=..., noise=result.per_example[i].noise)."
        )
    level = as_number(noise, "noise")
    if level < 0:
        raise WorkbenchError(
            f"noise= is a non-negative multiple of the embedding std (ROME: 3.0), got {level}."
        )
    as_int(seed, "seed", lo=0)
    facts = []
    for i in range(len(ds)):
        ex = ds[i]
        if not ex.spans or "subject" not in ex.spans:
            raise WorkbenchError(
                f"Example {i} has no 'subject' span: causal tracing over a Dataset noises each fact's subject, "
                "so give the Dataset spans=[{'subject': (start, end)}, ...] (token positions, end exclusive), "
                "as wb.datasets.facts() does."
            )
        ids = model.to_tokens(ex.clean)
        a, b = ex.spans["subject"]
        if not 0 <= a < b <= ids.shape[1]:
            raise WorkbenchError(
                f"Example {i}'s subject span ({a}, {b}) is outside its {ids.shape[1]} tokens: fix the span."
            )
        tgt = _target_id(model, ex.target) if ex.target is not None else None
        facts.append((ex.clean, ids, (int(a), int(b)), tgt))
    gen = torch.Generator().manual_seed(int(seed))
    units = [torch.randn(samples, b - a, model.d_model, generator=gen) for _, _, (a, b), _ in facts]
    freeze = SEVER_SITES.get(sever or "")
    with model.lock, job_status(model, progress, cancel):  # remote: the std, then every fact in one request
        std = noised.subject_std(model, [(ids, span) for _, ids, span, _ in facts])
        specs = [
            noised.Fact(
                ids,
                noised.Noise(unit * (level * std), span, None),
                trace_rows(kind, window, model.n_layers, ids.shape[1]),
                tgt,
            )
            for unit, (_, ids, span, tgt) in zip(units, facts, strict=True)
        ]
        outs = noised.run_many(model, specs, freeze=freeze, progress=progress, cancel=cancel)
    per = []
    for (text, ids, span, tgt), out in zip(facts, outs, strict=True):
        options = dict(
            op="causal_trace", prompt=text, subject=list(span), subject_text=None,
            target=None if tgt is None else int(tgt), kind=kind, window=window, noise=None,
            noise_given=True, samples=samples, seed=seed, sever=sever,
        )  # fmt: skip
        per.append(_result(model, ids, span, out, options))
        per[-1].noise_std = std  # the pooled std the given noise was scaled by
    if progress is not None:
        progress(1.0, f"{len(facts)}/{len(facts)} facts")
    values, sem, counts = grouped(per)
    options = dict(op="causal_trace", dataset=len(ds), kind=kind, window=window, noise=level,
                   samples=samples, seed=seed, sever=sever)  # fmt: skip
    result = DatasetCausalTrace(values, sem, counts, per, GROUPS, std, options, _code=lambda: "")
    result._code = lambda: codegen.dataset_causal_trace_code(model, options, [f[0] for f in facts],
                                                             [f[2] for f in facts], [f[3] for f in facts])  # fmt: skip
    return result


def group_columns(span: tuple[int, int], n_tokens: int) -> list[list[int]]:
    """The token positions of each of ROME's six groups in one fact (a group may be empty; a one-token
    subject is both its first and last token, as in ROME's averages)."""
    a, b = span
    last = n_tokens - 1
    return [
        [a],
        list(range(a + 1, b - 1)),
        [b - 1],
        [b] if b <= last else [],
        list(range(b + 1, last)),
        [last],
    ]


def grouped(per: Sequence[CausalTrace]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means [L, 6], standard errors [L, 6] and counts [6] of the facts' grids in ROME's groups, each group
    pooling its (fact, token) values as ROME's averages do."""
    n_layers = per[0].values.shape[0]
    pools: list[list[np.ndarray]] = [[] for _ in GROUPS]
    for tr in per:
        for k, cols in enumerate(group_columns(tr.subject, tr.values.shape[1])):
            pools[k] += [tr.values[:, c] for c in cols]
    values = np.full((n_layers, len(GROUPS)), np.nan, dtype=np.float32)
    sem = np.full_like(values, np.nan)
    counts = np.array([len(p) for p in pools], dtype=np.int32)
    for k, pool in enumerate(pools):
        if pool:
            stack = np.stack(pool).astype(np.float64)  # [n, L]
            values[:, k] = stack.mean(0)
            if len(pool) > 1:
                sem[:, k] = stack.std(0, ddof=1) / np.sqrt(len(pool))
    return values, sem, counts


__all__ = [
    "GROUPS",
    "CausalTrace",
    "DatasetCausalTrace",
    "causal_trace",
    "group_columns",
    "grouped",
    "subject_span",
    "trace_rows",
    "window_layers",
]
