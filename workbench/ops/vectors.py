"""Function vectors (Todd et al. 2024, "Function Vectors in Large Language Models"): the attention heads that
carry an in-context task, the vector they write, and what it does added to a zero-shot prompt.

- `head_effects(model, task)`: each head's causal indirect effect. Over `n_prompts` n-shot prompts, take every
  head's mean output at the last position (its slice of the attention output projection's input, the `head`
  site); patch it into the same prompt with the demonstrations' labels shuffled, at the last position, one head
  at a time; the effect is the rise of p(answer) over the shuffled prompt's own (the paper's
  `compute_indirect_effect`, with `last_token_only=True`).
- `function_vector(model, task, heads=10)`: the sum of the top heads' (or the given heads') mean outputs, each
  projected through its slice of the output projection (the paper's `compute_function_vector`). The output
  projection's bias, if any, is not part of any head and is not added (the paper's code adds it once per head
  for GPT-2-style projections). For families that scale or normalise the attention output before it reaches
  the stream (Granite's residual multiplier, Gemma-2's post-attention norm) the vector is still the
  projection's output, as the paper defines it.
- `evaluate_vector(model, task, fv)`: zero-shot accuracy with the vector added to the hidden state after block
  l (resid_post[l], the paper's `add_function_vector` on the layer output) at the last position, for every
  layer (or one), and without it.

Local models: the patched runs go through the replay engine (each starts at its head's layer, at the last
position, from the cached shuffled run); remote models (NDIF): each op is one traced request
(`engine.vectors`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.task import Task
from ..engine.batching import Progress, check_cancel, rows_per_chunk
from ..engine.edits import Add, Cell, Edit
from ..engine.traced import run_stacked
from ..engine.vectors import add_trace, fv_trace, rank_heads
from ..errors import TokenizationError, WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_int, as_number
from .metrics import prob
from .vector_results import FunctionVector, HeadEffects, VectorEvaluation

HEAD_TOP_K = 10  # tokens kept per head's decoded mean output
VECTOR_TOP_K = 100  # tokens kept of a function vector's decoding


def as_task(task: Any) -> Task:
    """A Task, or the name of a shipped one (`wb.datasets.task(name)`)."""
    if isinstance(task, Task):
        return task
    if isinstance(task, str):
        from ..datasets import task as shipped

        return shipped(task)
    raise WorkbenchError(
        f"task= takes a wb.Task (or a shipped task's name, e.g. 'antonyms'), got {type(task).__name__}: build one "
        "with wb.Task(pairs=[('hot', 'cold'), ...]) or wb.datasets.task('antonyms')."
    )


def _report(progress: Progress, fraction: float, message: str) -> None:
    if progress is not None:
        progress(min(1.0, max(0.0, fraction)), message)


def _share(progress: Progress, lo: float, hi: float) -> Progress:
    """A part lo..hi of an op's progress."""
    if progress is None:
        return None
    return lambda f, msg: progress(lo + (hi - lo) * min(max(f, 0.0), 1.0), msg)


def _prepared(model: Model, task: Task, n_shots: Any, n_prompts: Any, seed: Any):
    """The task's n-shot dataset and its token ids: (dataset, clean ids, corrupt ids, answer ids)."""
    n_shots = task.check_shots(n_shots)
    n_prompts = as_int(n_prompts, "n_prompts", lo=1)
    task.answer_ids(model)  # every answer one token, in context: else an error naming the pairs
    ds = task.dataset(n_shots, n_prompts, seed=seed)
    clean = [model.to_tokens(p, what=f"n-shot prompt {i}") for i, p in enumerate(ds.clean)]
    corrupt = [model.to_tokens(p, what=f"shuffled-label prompt {i}") for i, p in enumerate(ds.corrupt or [])]
    for i, (c, k) in enumerate(zip(clean, corrupt, strict=True)):
        if c.shape != k.shape:
            raise TokenizationError(
                f"Prompt {i}: the shuffled-label prompt has {k.shape[1]} tokens and the n-shot prompt {c.shape[1]}: "
                "an answer tokenizes differently where it moved. Use single-token answers that do not merge with "
                "the template's text (task.answer_ids(model) checks them)."
            )
    targets = [model.token_id(t) for t in ds.target or []]
    return n_shots, ds, clean, corrupt, targets


def _mean_heads(model: Model, clean: list[torch.Tensor], progress: Progress, cancel: Any) -> dict[str, Any]:
    """Every head's mean output at the last position over the clean prompts (z [L, H, d]), each projected
    and decoded: one traced forward when the prompts fit in memory, else chunks and a projection pass."""
    width = max(t.shape[1] for t in clean)
    size = len(clean) if model.remote else max(1, rows_per_chunk(model, width))
    if size >= len(clean):
        out = fv_trace(model, clean, head_k=HEAD_TOP_K)
        out["z_mean"] = out["z_sum"] / len(clean)
        return out
    total = None
    for start in range(0, len(clean), size):
        check_cancel(cancel)
        part = fv_trace(model, clean[start : start + size], project=False)["z_sum"]
        total = part if total is None else total + part
        _report(
            progress,
            (start + size) / len(clean),
            f"mean head outputs: {min(start + size, len(clean))}/{len(clean)} prompts",
        )
    z_mean = total / len(clean)
    out = fv_trace(model, None, means=z_mean, head_k=HEAD_TOP_K)
    out["z_mean"] = z_mean
    return out


def _head_rows(model: Model, n_tokens: int, z_mean: torch.Tensor) -> list[list[Edit]]:
    """One run per (layer, head): that head's output at the last position set to its clean mean."""
    last = n_tokens - 1
    return [
        [Edit(Cell("head", layer, last, head).checked(model, n_tokens), z_mean[layer, head])]
        for layer in range(model.n_layers)
        for head in range(model.n_heads)
    ]


def _effects_result(
    model: Model,
    task: Task,
    ds: Any,
    clean_p: np.ndarray,
    corrupt_p: np.ndarray,
    patched: np.ndarray,
    stats: dict[str, Any],
    options: dict[str, Any],
) -> HeadEffects:
    from ..codegen_vectors import head_effects_code

    per = (patched - corrupt_p[:, None, None]).astype(np.float32)
    ids = stats["head_ids"].to(torch.int32).numpy()
    tokens = [
        [model.str_tokens(ids[layer, head].tolist()) for head in range(ids.shape[1])]
        for layer in range(ids.shape[0])
    ]
    return HeadEffects(
        values=per.mean(0).astype(np.float32),
        clean=clean_p.astype(np.float32),  # type: ignore[arg-type]
        corrupt=corrupt_p.astype(np.float32),  # type: ignore[arg-type]
        axes=("layer", "head"),
        tokens=[],
        options={**options, "n_examples": len(ds)},
        _code=lambda: head_effects_code(model, options, ds),
        per_example=per,
        examples=[model.to_str_tokens(p) for p in ds.clean],
        columns=[],
        dataset=ds,
        head_means=stats["z_mean"].float().numpy().astype(np.float32),
        head_top_ids=ids,
        head_top_probs=stats["head_probs"].float().numpy().astype(np.float32),
        head_top_tokens=tokens,
        task=task,
    )


def _effects(
    model: Model,
    task: Task,
    n_shots: Any,
    n_prompts: Any,
    seed: Any,
    progress: Progress,
    cancel: threading.Event | None,
    select: int | None = None,
) -> tuple[HeadEffects, dict[str, Any] | None]:
    """head_effects (holding the lock); remote with `select`: the top heads' vector in the same request."""
    n_shots, ds, clean, corrupt, targets = _prepared(model, task, n_shots, n_prompts, seed)
    options = dict(op="head_effects", task=task.name, n_shots=n_shots, n_prompts=len(ds), seed=seed,
                   metric="prob(answer)", site="head", position="last")  # fmt: skip
    check_cancel(cancel)
    if model.remote:  # ONE request: means, every patched run, projections, decoding (and the vector)
        _report(progress, 0.0, f"{len(ds)} prompts x {model.n_layers * model.n_heads} heads in one request")
        out = fv_trace(model, clean, corrupt=corrupt, targets=targets, head_k=HEAD_TOP_K, select=select,
                       vector_k=VECTOR_TOP_K)  # fmt: skip
        out["z_mean"] = out["z_sum"] / len(clean)
        clean_p, corrupt_p, patched = out["clean_p"].numpy(), out["corrupt_p"].numpy(), out["patched"].numpy()
        _report(progress, 1.0, "done")
        return _effects_result(model, task, ds, clean_p, corrupt_p, patched, out, options), out
    _report(progress, 0.0, f"mean head outputs over {len(ds)} prompts")
    stats = _mean_heads(model, clean, _share(progress, 0.0, 0.1), cancel)
    check_cancel(cancel)
    z = stats["z_mean"]
    by_length: dict[int, list[list[Edit]]] = {}
    for k in corrupt:
        if k.shape[1] not in by_length:
            by_length[k.shape[1]] = _head_rows(model, k.shape[1], z)
    rows = [by_length[k.shape[1]] for k in corrupt]
    metrics = [prob(t).bind(model) for t in ds.target or []]
    outs = run_stacked(model, list(zip(clean, corrupt, strict=True)), rows, metrics,
                       progress=_share(progress, 0.1, 1.0), cancel=cancel)  # fmt: skip
    L, H = model.n_layers, model.n_heads
    clean_p = np.array([o.source for o in outs], np.float32)
    corrupt_p = np.array([o.base for o in outs], np.float32)
    patched = np.stack([o.values.float().numpy().reshape(L, H) for o in outs]).astype(np.float32)
    return _effects_result(model, task, ds, clean_p, corrupt_p, patched, stats, options), None


def head_effects(
    model: Model,
    task: Task | str,
    *,
    n_shots: int = 10,
    n_prompts: int = 25,
    seed: int = 0,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> HeadEffects:
    """The causal indirect effect of every attention head on `task` (Todd et al. 2024), [L, H].

    `n_prompts` n-shot prompts (`n_shots` demonstrations and a query, drawn from `seed`; `task.dataset`);
    every head's output at the last position is averaged over them, then patched, one head at a time, into the
    same prompts with the demonstrations' labels shuffled; a head's effect is how much that raises p(answer)
    over the shuffled prompt's own p(answer). The paper averages the head outputs over 100 prompts and the
    effects over 25; here both use the same `n_prompts` prompts (the mean from their clean versions).

    A HeadEffects: `.values` [L, H] mean effect, `.per_example` [N, L, H], `.sem`, `.clean` / `.corrupt` [N]
    p(answer) on the clean and shuffled prompts, `.top_heads(n)`, `.head_means`, each head's mean output
    decoded (`.decode_head(layer, head)`). Locally the runs go through the replay engine; remotely it is one
    request (its batch holds n_prompts x (L x H + 2) rows: lower n_prompts for a large model)."""
    task = as_task(task)
    seed = as_int(seed, "seed")
    with model.lock, job_status(model, progress, cancel):
        return _effects(model, task, n_shots, n_prompts, seed, progress, cancel)[0]


def _check_heads(model: Model, heads: Any) -> list[tuple[int, int]] | int:
    """heads= as a count 1..L*H or a list of distinct (layer, head) pairs (or wb.Cell('head', l, head=h))."""
    if isinstance(heads, int | np.integer) and not isinstance(heads, bool):
        return as_int(heads, "heads", lo=1, hi=model.n_layers * model.n_heads,
                      hint=" Give a number of top heads, or a list of (layer, head) pairs.")  # fmt: skip
    if isinstance(heads, str | bytes) or not hasattr(heads, "__iter__"):
        raise WorkbenchError(
            f"heads= takes a number of top heads (e.g. 10) or a list of (layer, head) pairs, e.g. [(9, 3), (12, 0)]; "
            f"got {heads!r:.60}."
        )
    out: list[tuple[int, int]] = []
    for item in heads:
        if isinstance(item, Cell):
            if item.site != "head" or item.head is None or item.position is not None:
                raise WorkbenchError(f"heads= takes heads: wb.Cell('head', layer, head=h), got {item!r}.")
            item = (item.layer, item.head)
        if isinstance(item, str | bytes) or not hasattr(item, "__len__") or len(item) != 2:
            raise WorkbenchError(
                f"heads= takes (layer, head) pairs, e.g. [(9, 3), (12, 0)]; got {item!r:.40}."
            )
        layer = model.check_layer(item[0])
        head = model.check_head(item[1])
        if (layer, head) in out:
            raise WorkbenchError(
                f"heads= names head (layer {layer}, head {head}) twice: list each head once."
            )
        out.append((layer, head))
    if not out:
        raise WorkbenchError("heads= is empty: give a number of top heads (e.g. 10) or (layer, head) pairs.")
    return out


def function_vector(
    model: Model,
    task: Task | str | HeadEffects,
    heads: int | Sequence[tuple[int, int]] = 10,
    *,
    n_shots: int = 10,
    n_prompts: int = 25,
    seed: int = 0,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> FunctionVector:
    """The function vector of `task`: the sum of the chosen heads' mean outputs at the last position (each
    head's mean over the n-shot prompts projected through its slice of the output projection), [d_model].

    `heads=10` takes the 10 heads of largest mean indirect effect (`head_effects` with the same n_shots,
    n_prompts and seed; pass a HeadEffects in place of the task to reuse one: `wb.function_vector(model, cie,
    heads=10)`); `heads=[(layer, head), ...]` takes those heads (their means over the n-shot prompts, no
    effects computed). `.decode(top_k)` reads the vector through the final norm and unembedding. Locally the
    effects go through the replay engine; remotely the whole op is one request."""
    heads = _check_heads(model, heads)
    effects = task if isinstance(task, HeadEffects) else None
    if effects is not None:
        if (
            effects.values.shape != (model.n_layers, model.n_heads)
            or effects.head_means.shape[-1] != model.d_head
        ):
            raise WorkbenchError(
                f"These head effects are [{effects.n_layers} layers x {effects.n_heads} heads] of d_head "
                f"{effects.head_means.shape[-1]}, but this model has {model.n_layers} x {model.n_heads} of d_head "
                f"{model.d_head}: compute them with wb.head_effects(model, task) on this model."
            )
        if effects.task is None:
            raise WorkbenchError(
                "These head effects carry no task: compute them with wb.head_effects(model, task)."
            )
        task = effects.task
        o = effects.options
        n_shots, n_prompts, seed = o.get("n_shots"), o.get("n_prompts"), o.get("seed")
    task = as_task(task)
    seed = as_int(seed, "seed")
    select = heads if isinstance(heads, int) else None
    with model.lock, job_status(model, progress, cancel):
        fused = None
        if effects is None and select is not None:
            effects, fused = _effects(model, task, n_shots, n_prompts, seed, _share(progress, 0.0, 0.95), cancel,
                                      select=select)  # fmt: skip
        if select is not None:
            assert effects is not None
            chosen = rank_heads(torch.from_numpy(np.asarray(effects.values, np.float32)), select)
            if fused is not None and fused.get("chosen") is not None:
                chosen = fused["chosen"]  # remote: ranked in the request, on the same numbers
            head_list = [(int(i) // model.n_heads, int(i) % model.n_heads) for i in chosen.tolist()]
        else:
            head_list = list(heads)  # type: ignore[arg-type]
        if fused is not None and fused.get("vector") is not None:
            out = fused
        elif effects is not None:
            out = fv_trace(model, None, means=torch.from_numpy(effects.head_means), project=False,
                           heads=head_list, vector_k=VECTOR_TOP_K)  # fmt: skip
        else:  # heads given and no effects: the means over the n-shot prompts (remote: one request)
            n_shots, ds, clean, _, _ = _prepared(model, task, n_shots, n_prompts, seed)
            if model.remote or len(clean) <= rows_per_chunk(model, max(t.shape[1] for t in clean)):
                out = fv_trace(model, clean, project=False, heads=head_list, vector_k=VECTOR_TOP_K)
            else:
                z = _mean_heads(model, clean, _share(progress, 0.0, 0.9), cancel)["z_mean"]
                out = fv_trace(model, None, means=z, project=False, heads=head_list, vector_k=VECTOR_TOP_K)
            n_prompts = len(ds)
    _report(progress, 1.0, "done")
    return _vector_result(model, task, head_list, out, effects, dict(n_shots=n_shots, n_prompts=n_prompts, seed=seed),
                          selected=select is not None)  # fmt: skip


def _vector_result(
    model: Model,
    task: Task,
    heads: list[tuple[int, int]],
    out: dict[str, Any],
    effects: HeadEffects | None,
    how: dict[str, Any],
    *,
    selected: bool,
) -> FunctionVector:
    from ..codegen_vectors import function_vector_code

    scores = np.array(
        [effects.values[layer, head] if effects is not None else np.nan for layer, head in heads], np.float32
    )
    ids = out["vector_ids"].to(torch.int32).numpy()
    options = dict(
        op="function_vector", task=task.name, heads=[list(h) for h in heads], selected=selected, **how
    )
    vector = out["vector"].float().numpy().astype(np.float32)
    return FunctionVector(
        vector=vector,
        heads=list(heads),
        head_outputs=out["chosen_out"].float().numpy().astype(np.float32),
        scores=scores,
        top_ids=ids,
        top_probs=out["vector_probs"].float().numpy().astype(np.float32),
        top_tokens=model.str_tokens(ids.tolist()),
        options=options,
        effects=effects,
        _code=lambda: function_vector_code(model, options, task),
    )


def as_vector(model: Model, fv: Any) -> torch.Tensor:
    """A function vector (or anything with a `.vector`, or a [d_model] tensor/array) as float32 [d_model]."""
    value = getattr(fv, "vector", fv)
    if isinstance(value, torch.Tensor):
        if value.is_meta or value.is_complex() or value.dtype == torch.bool:
            raise WorkbenchError(
                f"The vector must be real numbers on a real device, got dtype {value.dtype}."
            )
        vec = value.detach().to("cpu", torch.float32).clone()
    else:
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError):
            arr = np.asarray(None)
        if arr.dtype.kind not in "iuf":
            raise WorkbenchError(
                f"evaluate_vector takes a wb.FunctionVector (wb.function_vector(model, task)), or a [d_model] "
                f"tensor or array, got {type(fv).__name__}."
            )
        vec = torch.tensor(arr, dtype=torch.float32)
    if vec.dim() > 1 and vec.numel() == model.d_model:
        vec = vec.flatten()
    if vec.shape != (model.d_model,):
        raise WorkbenchError(
            f"The vector has shape {tuple(vec.shape)}, but this model's residual stream is {model.d_model} wide: "
            f"give a [{model.d_model}] vector (a function vector of this model: wb.function_vector(model, task))."
        )
    if not torch.isfinite(vec).all():
        raise WorkbenchError(
            "The vector has NaN or inf entries: adding it would break every later activation."
        )
    return vec


def evaluate_vector(
    model: Model,
    task: Task | str,
    fv: FunctionVector | Any,
    layer: int | None = None,
    *,
    scale: float = 1.0,
    n_prompts: int | None = None,
    seed: int = 0,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> VectorEvaluation:
    """Zero-shot accuracy on `task` with `scale * fv` added to the hidden state after block `layer`
    (resid_post, the paper's layer output) at the last position, and without it.

    `layer=None` evaluates every layer (`.accuracy` [L], `.best_layer`); the prompts are the task's zero-shot
    queries (`task.zero_shot(n_prompts, seed=seed)`: every pair by default). Use a held-out split
    (`train, test = task.split()`) to evaluate on queries the vector was not extracted from. resid_post[l] is
    resid_pre[l + 1]: `wb.steer(model, prompt, vector=fv, layer=l + 1)` adds at the same place (at every
    position, during generation). Locally every (prompt, layer) run goes through the replay engine; remotely it
    is one request."""
    task = as_task(task)
    vec = as_vector(model, fv) * as_number(scale, "scale")
    if not torch.isfinite(vec).all():
        raise WorkbenchError(f"scale={scale!r} times the vector overflows float32: use a smaller scale.")
    layers = list(range(model.n_layers)) if layer is None else [model.check_layer(layer)]
    answer_ids = task.answer_ids(model)  # every answer one token, in context
    ds = task.zero_shot(n_prompts, seed=seed)
    ids = [model.to_tokens(p, what=f"zero-shot prompt {i}") for i, p in enumerate(ds.clean)]
    targets = [model.token_id(t) for t in ds.target or []]
    assert all(t in answer_ids for t in targets)
    k = len(layers)
    with model.lock, job_status(model, progress, cancel):
        check_cancel(cancel)
        if model.remote:
            _report(progress, 0.0, f"{len(ids)} prompts x {k + 1} runs in one request")
            p, top1 = add_trace(model, ids, targets, layers, vec)
            probs, tops = p[1:].T.numpy(), top1[1:].T.numpy()
            base_p, base_top = p[0].numpy(), top1[0].numpy()
        else:
            by_length: dict[int, list[list[Edit]]] = {}
            zero = torch.zeros(model.d_model)

            def rows(
                n: int,
            ) -> list[list[Edit]]:  # every layer, then a zero add after the last block: the base run
                last = n - 1
                out = [[Edit(Cell("resid_post", lyr, last).checked(model, n), Add(vec))] for lyr in layers]
                return out + [
                    [Edit(Cell("resid_post", model.n_layers - 1, last).checked(model, n), Add(zero))]
                ]

            for t in ids:
                if t.shape[1] not in by_length:
                    by_length[t.shape[1]] = rows(t.shape[1])
            all_rows = [by_length[t.shape[1]] for t in ids]
            metrics = [prob(t).bind(model) for t in targets]
            outs = run_stacked(model, [(t, t) for t in ids], all_rows, metrics, top_k=1, progress=progress,
                               cancel=cancel)  # fmt: skip
            vals = np.stack([o.values.float().numpy() for o in outs])  # [N, k + 1]
            top = np.stack([o.top_ids[:, 0].numpy() for o in outs])
            probs, tops, base_p, base_top = vals[:, :k], top[:, :k], vals[:, k], top[:, k]
    _report(progress, 1.0, "done")
    t = np.array(targets)
    tops = tops.astype(np.int32)
    base_top = base_top.astype(np.int32)
    options = dict(op="evaluate_vector", task=task.name, layer=layer, layers=layers, scale=float(scale),
                   n_prompts=len(ids), seed=seed, site="resid_post", position="last")  # fmt: skip
    from ..codegen_vectors import evaluate_vector_code

    return VectorEvaluation(
        layers=layers,
        accuracy=(tops == t[:, None]).mean(0).astype(np.float32),
        probs=probs.astype(np.float32),
        correct=(tops == t[:, None]).astype(np.float32),
        top_ids=tops,
        top_tokens=[model.str_tokens(row.tolist()) for row in tops],
        baseline_probs=base_p.astype(np.float32),
        baseline_correct=(base_top == t).astype(np.float32),
        baseline_top_ids=base_top,
        baseline_top_tokens=model.str_tokens(base_top.tolist()),
        prompts=list(ds.clean),
        answers=list(ds.target or []),
        options=options,
        _code=lambda: evaluate_vector_code(model, options, ds, vec),
    )
