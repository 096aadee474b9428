"""The logit lens: decode every layer's residual stream through the final norm and unembedding."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import codegen
from ..data.dataset import Dataset
from ..data.predict import batch_size_for
from ..engine import fast_lens, padded_lens
from ..engine.batching import Progress, check_cancel
from ..engine.edits import Edit, checked_edits
from ..engine.kernels import apply_edits, decode, edit_pattern, read, slot, translated
from ..engine.padding import left_pad, pad_id
from ..engine.traced import eager_function, plan
from ..errors import SiteError, TokenizationError, WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_int, as_list
from .dataset_results import DatasetLensResult
from .intervention import edit_source, edits_options
from .metrics import as_metric, prob
from .over_dataset import Runner
from .patching import check_cell, check_top_k, moved_source, pair_tokens
from .results import LensResult
from .tuned_lens import lens_translators


@dataclass(frozen=True)
class Intervention:
    """An edit applied during a `logit_lens` run: patch from `source` (the clean prompt), or ablate.

    `wb.logit_lens(model, corrupt, intervention=wb.Intervention("resid_pre", 10, position=3, source=clean))`
    is the lens of the corrupt run with the clean activation at resid_pre[10], position 3. kind="zero" /
    "mean" ablate (no source), kind="resample" copies from `source` (a reference prompt of the same length).
    This describes an edit; a result such as `wb.patch(...)`'s Value is not one.
    """

    site: str
    layer: int
    position: int | None = None
    head: int | None = None
    kind: str = "patch"  # patch | zero | mean | resample
    source: str | None = None  # the clean prompt (patch) or reference prompt (resample)
    source_layer: int | None = None  # patch from another layer / position of the source run (a drag)
    source_position: int | None = None


_KINDS = ("patch", "zero", "mean", "resample")


def _check_intervention(model: Model, iv: object) -> Intervention:
    """`iv` must be a wb.Intervention (a description of an edit), not a result such as wb.patch's Value."""
    if not isinstance(iv, Intervention):
        what = type(iv).__name__
        got = f"a {what} (the result of wb.patch / wb.ablate)" if what == "Value" else f"{what} {iv!r:.60}"
        raise WorkbenchError(
            f"intervention= takes a wb.Intervention, which describes the edit to make during the lens run; got "
            f"{got}. For the lens of the corrupt run patched from the clean one: wb.logit_lens(model, corrupt, "
            "intervention=wb.Intervention(site='resid_pre', layer=10, position=3, source=clean)); "
            "kind='zero' / 'mean' / 'resample' ablates instead."
        )
    if iv.kind not in _KINDS:
        raise WorkbenchError(f"Unknown intervention kind {iv.kind!r}: {', '.join(_KINDS)}.")
    if iv.source is not None and not isinstance(iv.source, str):
        raise WorkbenchError(
            f"Intervention source= must be a prompt (a string), got {type(iv.source).__name__}."
        )
    fields = {}
    if iv.source_layer is not None:
        fields["source_layer"] = model.check_layer(iv.source_layer, "source_layer")
    if iv.source_position is not None:  # its range is checked against the prompt later
        fields["source_position"] = as_int(iv.source_position, "source_position", error=SiteError)
    return dataclasses.replace(iv, **fields) if fields else iv


def _pinned(tokens: object) -> list[str | int]:
    """The tokens to follow: a list of texts/ids; a single text or id is one token (never its characters)."""
    if tokens is None or (isinstance(tokens, list | tuple) and not tokens):
        return []
    if isinstance(tokens, str):
        return [tokens]
    items = as_list(tokens, "tokens=", "tokens=[' Paris', ' London']")
    return [t if isinstance(t, str) else as_int(t, "A token id", error=TokenizationError) for t in items]


def _source_and_mode(model: Model, prompt: str, iv: Intervention) -> tuple[torch.Tensor, torch.Tensor, str]:
    if iv.kind in ("patch", "resample"):
        if iv.source is None:
            raise WorkbenchError(
                f"An intervention of kind {iv.kind!r} needs source= the prompt to copy from."
            )
        src, ids = pair_tokens(model, iv.source, prompt)
        return src, ids, "source"
    if iv.kind in ("zero", "mean"):
        ids = model.to_tokens(prompt)
        return ids, ids, iv.kind
    raise WorkbenchError(f"Unknown intervention kind {iv.kind!r}: patch, zero, mean or resample.")


def _lens_plan(model: Model, edits: list[Edit], row: int) -> tuple[list, list, dict[int, list], Any]:
    """What a lens trace body reads and edits, as plain values (the body travels to NDIF by value): the
    resid_post refs and envoys of every layer, per layer the (site ref, envoy, edits) there, and the eager
    attention function when a pattern is edited."""
    posts = [model.site_ref("resid_post", layer) for layer in range(model.n_layers)]
    post_envoys = [model.envoy(ref) for ref in posts]
    steps = plan([edits], first_row=row) if edits else {}
    by_layer: dict[int, list] = {}
    for key, group in steps.items():
        ref = model.site_ref(key[2], key[0])
        by_layer.setdefault(key[0], []).append((ref, model.envoy(ref), group))
    eager_fn = (
        eager_function(model) if any(r.pattern for refs in by_layer.values() for r, _, _ in refs) else None
    )
    return posts, post_envoys, by_layer, eager_fn


def _edited_resids(
    posts: list, post_envoys: list, by_layer: dict[int, list], eager_fn: Any, row: int
) -> list[torch.Tensor]:
    """Inside a trace: every layer's resid_post of batch row `row` [T, D], the edits applied on the way
    ("source" edits copy from batch row 0, "mean" edits take batch row 1's mean, as the local lens's hooks)."""
    resids = []
    for layer in range(len(posts)):
        live: dict[tuple[str, bool], torch.Tensor] = {}
        for ref, envoy, group in by_layer.get(layer, []):
            if ref.pattern:
                call = envoy.source.attention_interface_1
                inputs = call.inputs  # before the output: nnsight serves values in forward order
                edit_pattern(call.output[0], inputs, group, eager_fn, 0)
                continue
            where = (ref.path, ref.use_input)
            if where not in live:
                live[where] = read(envoy, ref.use_input)
            apply_edits(slot(live[where], ref.layout), group, 0, 1)
        out = live.get((posts[layer].path, False))
        if out is None:
            out = read(post_envoys[layer], False)
        resids.append(out[row].clone())
    return resids


def lens_stats(
    norm: Any,
    unembed: Any,
    divisor: float,
    softcap: float | None,
    resids: list[torch.Tensor],
    top_k: int,
    tid: torch.Tensor,
    chunk_layers: int,
) -> dict[str, torch.Tensor]:
    """The lens statistics of every layer's (read-out-ready) residual rows `resids[l]` [T, D]: top-k ids and
    probabilities [L, T, k], entropy and KL to the last layer [L, T], the followed tokens' log-probs and ranks
    [L, T, n]. Pure torch on the decoder modules, `chunk_layers` layers unembedded at a time: it runs inside
    a trace body or, on NDIF, in a session next to the weights."""
    n_layers = len(resids)
    final = torch.log_softmax(decode(norm, unembed, divisor, softcap, resids[-1]).float(), dim=-1)  # [T, V]
    ids_, probs_, ent_, kl_, tp_, rank_ = [], [], [], [], [], []
    for start in range(0, n_layers, chunk_layers):
        h = torch.stack(resids[start : start + chunk_layers])  # [l, T, d]
        logits = decode(norm, unembed, divisor, softcap, h).float()
        logp = torch.log_softmax(logits, dim=-1)
        top = logp.topk(top_k, dim=-1)
        ids_.append(top.indices)
        probs_.append(top.values.exp())
        ent_.append(-(logp.exp() * logp).sum(-1))
        kl_.append((final.exp() * (final - logp)).sum(-1))
        chosen = logits[..., tid]  # [l, T, n] (n may be 0)
        tp_.append(logp[..., tid])
        rank_.append((logits.unsqueeze(-2) > chosen.unsqueeze(-1)).sum(-1))
    return {
        "ids": torch.cat(ids_),
        "probs": torch.cat(probs_),
        "entropy": torch.cat(ent_),
        "kl": torch.cat(kl_),
        "tp": torch.cat(tp_),
        "rank": torch.cat(rank_),
    }


def _lens_trace(
    model: Model,
    batch: torch.Tensor,
    row: int,
    top_k: int,
    token_ids: list[int],
    edits: list[Edit],
    chunk_layers: int,
    translators: Any = None,
) -> dict[str, torch.Tensor]:
    """One forward pass; every statistic is computed inside the trace so only small arrays are saved.
    `translators`: a tuned lens's (weight, bias), applied in the body (local models; a remote model reads the
    tuned lens with `_tuned_remote`, whose translators never travel)."""
    posts, post_envoys, by_layer, eager_fn = _lens_plan(model, edits, row)
    norm, unembed, divisor, softcap = model.decoder()
    tid = torch.tensor(token_ids, dtype=torch.long)
    # Saved values must be bound to plain names in the body: that is what comes back (also from NDIF).
    with torch.no_grad(), model.nn.trace(batch, logits_to_keep=1, **model.trace_options()):
        resids = _edited_resids(posts, post_envoys, by_layer, eager_fn, row)
        resids = translated(resids, translators)  # a tuned lens: every layer but the last translated
        stats = lens_stats(norm, unembed, divisor, softcap, resids, top_k, tid, chunk_layers)
        top_ids = stats["ids"].save()
        top_probs = stats["probs"].save()
        entropy = stats["entropy"].save()
        kl = stats["kl"].save()
        token_logp = stats["tp"].save()
        token_rank = stats["rank"].save()
    return {
        "ids": top_ids,
        "probs": top_probs,
        "entropy": entropy,
        "kl": kl,
        "tp": token_logp,
        "rank": token_rank,
    }


def resid_states(model: Model, batch: torch.Tensor, row: int, edits: list[Edit]) -> torch.Tensor:
    """Every layer's resid_post of batch row `row`, edits applied: [L, T, D] (one trace; one NDIF request)."""
    posts, post_envoys, by_layer, eager_fn = _lens_plan(model, edits, row)
    with torch.no_grad(), model.nn.trace(batch, logits_to_keep=1, **model.trace_options()):
        states = torch.stack(_edited_resids(posts, post_envoys, by_layer, eager_fn, row)).save()
    return states.detach()


def decoded_stats(
    model: Model, resids: list[torch.Tensor], top_k: int, token_ids: list[int], chunk_layers: int
) -> dict[str, torch.Tensor]:
    """`lens_stats` of residual rows given here ([T, D] each), computed next to the model's read-out weights:
    for a remote model one NDIF session holding no trace (the final norm and unembedding called on the rows
    sent), so only the statistics come back."""
    norm, unembed, divisor, softcap = model.decoder()
    tid = torch.tensor(token_ids, dtype=torch.long)
    resids = [r.detach() for r in resids]  # plain tensors: they travel in the request
    with torch.no_grad(), model.nn.session(**model.trace_options()):
        stats = lens_stats(norm, unembed, divisor, softcap, resids, top_k, tid, chunk_layers)
        top_ids = stats["ids"].save()
        top_probs = stats["probs"].save()
        entropy = stats["entropy"].save()
        kl = stats["kl"].save()
        token_logp = stats["tp"].save()
        token_rank = stats["rank"].save()
    return {
        "ids": top_ids,
        "probs": top_probs,
        "entropy": entropy,
        "kl": kl,
        "tp": token_logp,
        "rank": token_rank,
    }


def logit_lens(
    model: Model,
    prompt: str | Dataset,
    *,
    top_k: int = 5,
    tokens: Sequence[str | int] | None = None,
    intervention: Intervention | None = None,
    edits: Sequence[Edit] | Edit | None = None,
    source: str | None = None,
    metric: Any = None,
    align: str = "exact",
    lens: Any = None,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> LensResult | DatasetLensResult:
    """Top-k, entropy and KL-to-final of every layer's resid_post decoded by the final norm + unembedding.

    Row l is resid_post[l]; the last row is the model's own output. `tokens` (a token, or a list of tokens
    as text or ids) are followed through the layers up front (`.prob(tok)`, `.rank(tok)`); other tokens are
    computed on first request. `intervention` (a `wb.Intervention`) edits the run that is decoded; or
    `edits=[wb.Edit(cell, value), ...]` (with `source=` the prompt "source" edits copy from) decodes the run
    `wb.intervene(model, prompt, edits=..., source=...)` makes: every edit applied jointly.

    Over a `wb.Dataset` (in place of the prompt): a DatasetLensResult, `.values` [L, C] the mean over
    examples of `metric` (default `wb.prob()`: each example's target probability; a metric takes the lens
    logits [B, V]) read through the lens at every layer and column of `align=` (a column of several positions
    averages them), with `.per_example`, `.sem` and `.lens(i)`. Many examples per forward (left-padded).

    `lens=` a `wb.TunedLens` (from `wb.tuned_lens(model, ...)` or `wb.TunedLens.load(path)`): every layer but
    the last is read through its affine translator (h + A_l h + b_l) before the final norm and unembedding
    (the tuned lens); the last row stays the model's own output. It must have been trained for this model.
    On a remote model (NDIF) the tuned lens takes TWO requests, for one prompt and for a whole Dataset alike:
    the resid_post states come back, the translators apply here, and the translated states go back for the
    read-out; the translators themselves (L-1 matrices of D x D) never travel. The logit lens is one request.
    """
    top_k = check_top_k(model, top_k, lo=1)
    translators, lens_options = lens_translators(model, lens)
    lens = lens if translators is not None else None  # lens='logit' is the logit lens
    if isinstance(prompt, Dataset):
        if intervention is not None or edits is not None or source is not None:
            raise WorkbenchError(
                "wb.logit_lens over a Dataset decodes each example's clean run as is: intervention= / edits= / "
                "source= apply to one prompt (wb.logit_lens(model, ds[i].clean, intervention=...))."
            )
        return _lens_dataset(
            model, prompt, metric, align, top_k, _pinned(tokens), progress, cancel, lens, translators
        )
    if metric is not None:
        raise WorkbenchError(
            "metric= applies to wb.logit_lens over a wb.Dataset; for one prompt, follow tokens with "
            "tokens=[' Paris'] and read result.prob(' Paris')."
        )
    check_cancel(cancel)
    joint, edits = edits, []
    checked: list[Edit] = []
    if joint is not None and intervention is not None:
        raise WorkbenchError(
            "logit_lens takes intervention= (one edit) or edits= (a list applied jointly), not both: put "
            "every edit in edits=[wb.Edit(cell, value), ...]."
        )
    if joint is None and source is not None:
        raise WorkbenchError(
            "source= is the prompt that 'source' edits copy from; it needs edits=[wb.Edit(cell, 'source'), "
            "...] (for one patched cell, intervention=wb.Intervention(..., source=clean) also works)."
        )
    if joint is not None:
        ids = model.to_tokens(prompt)
        checked = checked_edits(model, joint, ids.shape[1])
        src = edit_source(model, checked, source, ids)
        # row 0 the source run, row 1 the prompt as is (what "mean" edits average), row 2 edited and decoded
        batch, row, edits = torch.cat([src, ids, ids]), 2, checked
        ivs_options = None
    elif intervention is not None:
        intervention = _check_intervention(model, intervention)
        src, ids, kind = _source_and_mode(model, prompt, intervention)
        cell = check_cell(
            model,
            intervention.site,
            intervention.layer,
            intervention.position,
            intervention.head,
            ids.shape[1],
        )
        edit = Edit(cell, kind)
        if kind == "source":  # a drag: the source activation, read in its own (remote: redacted) request
            with model.lock, job_status(model, progress, cancel):
                value = moved_source(
                    model, src, cell, intervention.source_layer, intervention.source_position
                )
            if value is not None:
                edit = Edit(cell, value)
        batch, row, edits = torch.cat([src, ids]), 1, [edit]
        ivs_options = dict(vars(intervention), layer=cell.layer, position=cell.position, head=cell.head)
    else:
        ids = model.to_tokens(prompt)
        batch, row, ivs_options = ids, 0, None
    tokens = _pinned(tokens)
    options = dict(
        op="logit_lens",
        prompt=prompt,
        top_k=top_k,
        tokens=tokens,
        intervention=ivs_options,
        **({"edits": edits_options(checked), "source": source} if joint is not None else {}),
        **({"lens": lens_options} if lens_options is not None else {}),
    )
    return lens_result(
        model,
        ids,
        batch,
        row,
        edits,
        top_k=top_k,
        tokens=tokens,
        options=options,
        code=lambda: codegen.lens_code(model, options, checked, lens=lens),
        progress=progress,
        cancel=cancel,
        translators=translators,
    )


def _tuned_remote(
    model: Model,
    batch: torch.Tensor,
    row: int,
    edits: list[Edit],
    translators: Any,
    top_k: int,
    token_ids: list[int],
    chunk: int,
    states: list[torch.Tensor],
    progress: Progress,
) -> dict[str, torch.Tensor]:
    """The tuned lens of a remote model in TWO NDIF requests: the translators (L-1 matrices of D x D: 38 MB
    for SmolLM2-135M, GBs for an 8B model) never travel. Request 1 reads every layer's resid_post [L, T, D]
    (edits applied); the translators apply here; request 2 sends the translated states (L x T x D floats)
    and the server applies the final norm, unembedding and statistics (`decoded_stats`), returning only
    top-k, entropy, KL and the followed tokens' stats. One request cannot do it: the translation sits
    between the server's forward pass and its read-out, and needs either the translators there or the
    states here. `states` keeps the translated states (filled on the first call), so tokens followed later
    (`.prob(tok)` of a new token) cost request 2 only."""
    if not states:
        raw = resid_states(model, batch, row, edits)  # request 1
        states.extend(t.contiguous() for t in translated(list(raw), translators))
        if progress is not None:
            progress(0.5, "tuned lens: states read, decoding")
    return decoded_stats(model, states, top_k, token_ids, chunk)  # request 2


def lens_result(
    model: Model,
    ids: torch.Tensor,
    batch: torch.Tensor | None = None,
    row: int = 0,
    edits: list[Edit] | None = None,
    *,
    top_k: int,
    tokens: list[str | int],
    options: dict[str, Any],
    code: Any,
    progress: Progress = None,
    cancel: threading.Event | None = None,
    translators: Any = None,
) -> LensResult:
    """The LensResult of token ids `ids` [1, T] (an ids-level entry point: `wb.logit_lens` tokenizes its prompt
    and calls this; `wb.generation_lens` calls it on prompt + generated ids). `batch` / `row` / `edits`: the
    rows run and the one decoded (default: `ids` itself, unedited); `tokens` are followed up front;
    `translators` a tuned lens's (weight, bias) (`tuned_lens.lens_translators`), None for the logit lens."""
    edits = list(edits or [])
    if batch is None:
        batch, row = ids, 0
    token_ids = [model.token_id(t) for t in tokens]
    chunk = max(1, min(model.n_layers, int(2e8 // max(1, ids.shape[1] * model.vocab_size * 4))))

    tuned_states: list[torch.Tensor] = []  # a remote tuned lens: the translated states, read once

    def compute(tids: list[int]) -> dict[str, torch.Tensor]:
        with model.lock, job_status(model, progress, cancel):
            if model.remote and translators is not None:
                return _tuned_remote(model, batch, row, edits, translators, top_k, tids, chunk, tuned_states,
                                     progress)  # fmt: skip
            if fast_lens.enabled(model, edits):
                return fast_lens.lens(model, batch, row, top_k, tids, edits, translators)
            return _lens_trace(model, batch, row, top_k, tids, edits, chunk, translators)

    saved = compute(token_ids)
    if progress is not None:
        progress(1.0, "lens done")

    def token_stats(
        res: dict[str, torch.Tensor], tids: list[int]
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return {
            t: (res["tp"][..., i].exp().float().numpy(), res["rank"][..., i].to(torch.int32).numpy())
            for i, t in enumerate(tids)
        }

    def more(tids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return token_stats(compute(tids), tids)

    top_ids = saved["ids"].to(torch.int32).numpy()
    vocab = model.str_tokens(np.unique(top_ids).tolist())
    lookup = dict(zip(np.unique(top_ids).tolist(), vocab, strict=True))
    return LensResult(
        tokens=model.str_tokens(ids),
        top_ids=top_ids,
        top_probs=saved["probs"].float().numpy(),
        top_tokens=[[[lookup[i] for i in cell] for cell in layer] for layer in top_ids.tolist()],
        entropy=saved["entropy"].float().numpy(),
        kl=saved["kl"].float().numpy(),
        options=options,
        _token_stats=token_stats(saved, token_ids) if token_ids else {},
        _more=more,
        _token_id=model.token_id,
        _names={t: i for t, i in zip(tokens, token_ids, strict=True) if isinstance(t, str)},
        _code=code,
    )


def _lens_dataset(
    model: Model,
    ds: Dataset,
    metric: Any,
    align: str,
    top_k: int,
    tokens: list[str | int],
    progress: Progress,
    cancel: threading.Event | None,
    lens: Any = None,
    translators: Any = None,
) -> DatasetLensResult:
    """The metric through the lens at every layer and column of every example, in left-padded batches."""
    if metric is None:
        if ds[0].target is None:
            raise WorkbenchError(
                "wb.logit_lens over a Dataset reads each example's target probability by default "
                "(metric=wb.prob()), but this dataset has no targets: give the Dataset target=[...] (or "
                "target='{A}' in Dataset.from_template), or pass metric=wb.prob(' Paris') or any "
                "callable(logits [B, V]) -> [B]."
            )
        m = prob()
    else:
        m = as_metric(metric)
    runner = Runner(model, ds, m, align, corrupt=False, progress=progress, cancel=cancel)
    al = runner.al
    n = len(ds)
    # each example's positions read: the union of its columns' positions
    picks = [sorted({p for col in al.positions[i] for p in col}) for i in range(n)]
    per_row = [bool(getattr(x, "needs_clean", False)) for x in runner.metrics]
    width = max(ids.shape[1] for ids in al.clean_ids)
    fast = fast_lens.enabled(model)
    size = n if model.remote else batch_size_for(model, width)
    per_example: list[np.ndarray] = []
    check_cancel(cancel)
    with model.lock, job_status(model, progress, cancel):
        for start in range(0, n, size):
            check_cancel(cancel)
            part = list(range(start, min(n, start + size)))
            batch = left_pad([al.clean_ids[i] for i in part], pad_id(model.tokenizer))
            rows, cols, segments, at = [], [], [], 0
            for b, i in enumerate(part):
                rows += [b] * len(picks[i])
                cols += [batch.pad[b] + p for p in picks[i]]
                segments.append((at, at + len(picks[i])))
                at += len(picks[i])
            args = (
                batch,
                torch.tensor(rows, dtype=torch.long),
                torch.tensor(cols, dtype=torch.long),
                segments,
                [runner.bound[i] for i in part],
                [per_row[i] for i in part],
            )
            values = (padded_lens.local if fast else padded_lens.traced)(
                model, *args, translators=translators
            ).float()  # [L, R]
            for (a, _), i in zip(segments, part, strict=True):
                where = {p: a + j for j, p in enumerate(picks[i])}
                per_example.append(
                    torch.stack(
                        [values[:, [where[p] for p in col]].mean(1) for col in al.positions[i]], dim=1
                    ).numpy()
                )
            if progress is not None:
                progress(len(per_example) / n, f"{len(per_example)}/{n} examples")
    per = np.stack(per_example).astype(np.float32)  # [N, L, C]
    options = dict(op="logit_lens", dataset=n, metric=m.name, align=al.align, top_k=top_k, n_examples=n)
    if tokens:
        options["tokens"] = tokens
    if lens is not None:
        options["lens"] = lens_translators(model, lens)[1]

    def one(i: int) -> LensResult:
        follow = list(tokens)
        target = ds[i].target
        if target is not None and target not in follow:
            follow.append(target)
        return logit_lens(model, ds[i].clean, top_k=top_k, tokens=follow, lens=lens)

    return DatasetLensResult(
        values=per.mean(0).astype(np.float32),
        per_example=per,
        examples=al.tokens,
        columns=list(al.columns),
        options=options,
        dataset=ds,
        _code=lambda: codegen.dataset_lens_code(model, m, options, ds, al, lens=lens),
        _lens=one,
    )
