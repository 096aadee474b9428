"""Head detectors: how much each attention head attends where a previous-token, duplicate-token or induction
head would, [L, H] scores in [0, 1].

A detector names, for every query position, its target keys; a head's score is its attention mass on those
keys, averaged over the queries where the detector is defined (pooled over the prompts):

- previous_token: key t - 1, for every query t >= 1.
- duplicate_token: the earlier occurrences of the query's own token (keys s < t with tok[s] == tok[t]), for
  queries whose token occurred before.
- induction: the token after each earlier occurrence (keys s + 1 with s < t and tok[s] == tok[t]), for the
  same queries: the head that attends there can copy what followed last time (Olsson et al. 2022).

With `prompts=None` the prompts are repeated random tokens: the BOS token (when the tokenizer has one), then
`seq_len` distinct random ordinary tokens, then the same tokens again, `n_seqs` sequences from `seed`. In the
second half of such a sequence (offset n = seq_len) the duplicate of query t is key t - n and its induction
target t - n + 1, and nothing in the first half repeats. Prompts of your own give what is defined on them: a
prompt that repeats no token adds nothing to duplicate_token and induction (`.excluded` lists it), and a
detector that no prompt defines is left out of the result (asking for it names the fix).

The probabilities are the eager attention weights (recomputed from the attention function's inputs, as
`wb.attention`; grouped-query heads expanded to the query heads); only the [L, H] sums leave the trace, so a
remote model answers in one request.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.dataset import Dataset
from ..engine.batching import Progress, check_cancel
from ..engine.kernels import eager_pattern
from ..engine.padding import left_pad, pad_id
from ..errors import WorkbenchError
from ..model import Model, require_local
from ..remote import job_status
from ..validate import as_int
from .results import Coded, Figured

DETECTORS = ("previous_token", "duplicate_token", "induction")
LOCAL_CHUNK = 16  # prompts per local forward (a remote model gets every prompt in one request)


def detector_name(name: Any) -> str:
    """A detector's canonical name ('previous-token' and 'previous_token' are the same), or an error naming them."""
    if isinstance(name, str):
        key = name.strip().lower().replace("-", "_").replace(" ", "_")
        if key in DETECTORS:
            return key
    raise WorkbenchError(
        f"Unknown head detector {name!r:.60}: the detectors are {', '.join(repr(d) for d in DETECTORS)}."
    )


# ------------------------------------------------------------------ prompts and target masks
def repeated_random_tokens(model: Model, seq_len: int = 25, n_seqs: int = 8, seed: int = 0) -> torch.Tensor:
    """[n_seqs, bos + 2 * seq_len] ids: BOS (if the tokenizer has one), `seq_len` distinct random ordinary
    tokens (no special tokens), the same again; reproducible from `seed`."""
    special = {int(i) for i in getattr(model.tokenizer, "all_special_ids", []) or []}
    n_vocab = min(model.vocab_size, len(model.tokenizer))
    pool = np.array([i for i in range(n_vocab) if i not in special], dtype=np.int64)
    if len(pool) < seq_len:
        raise WorkbenchError(
            f"seq_len={seq_len} is more than the {len(pool)} ordinary tokens of this vocabulary: use a shorter seq_len."
        )
    rng = np.random.default_rng(seed)
    bos = getattr(model.tokenizer, "bos_token_id", None)
    rows = []
    for _ in range(n_seqs):
        seq = rng.choice(pool, size=seq_len, replace=False)
        rows.append(([int(bos)] if isinstance(bos, int) else []) + seq.tolist() * 2)
    ids = torch.tensor(rows, dtype=torch.long)
    if ids.shape[1] > model.n_ctx:
        raise WorkbenchError(
            f"Repeated random tokens of seq_len={seq_len} are {ids.shape[1]} tokens, more than this model's context "
            f"of {model.n_ctx}: use a shorter seq_len."
        )
    return ids


def target_masks(ids: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each detector's (target keys [T, T] float 0/1, defined queries [T] bool) for one prompt's ids [T]."""
    ids = ids.reshape(-1)
    T = ids.shape[0]
    same = ids[:, None] == ids[None, :]  # [query, key]
    earlier = torch.ones(T, T, dtype=torch.bool).tril(-1)  # key < query
    dup = same & earlier
    prev = torch.zeros(T, T, dtype=torch.bool)
    if T > 1:
        prev[torch.arange(1, T), torch.arange(T - 1)] = True
    ind = torch.zeros(T, T, dtype=torch.bool)
    ind[:, 1:] = dup[:, :-1]  # key s + 1 for every earlier occurrence s of the query's token (s + 1 <= t)
    return {
        "previous_token": (prev.float(), prev.any(-1)),
        "duplicate_token": (dup.float(), dup.any(-1)),
        "induction": (ind.float(), dup.any(-1)),
    }


# ------------------------------------------------------------------ the trace
def detector_sums(
    model: Model, rows: Sequence[torch.Tensor], names: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of the prompts `rows` (left-padded): (sums [D, N, L, H] of each head's attention on each
    detector's targets over that prompt's defined queries, counts [D, N] of those queries)."""
    batch = left_pad(list(rows), pad_id(model.tokenizer))
    B, W = batch.input_ids.shape
    masks = torch.zeros(len(names), B, W, W)
    queries = torch.zeros(len(names), B, W)
    for b, r in enumerate(rows):
        pad = batch.pad[b]
        got = target_masks(r)
        for d, name in enumerate(names):
            mask, defined = got[name]
            masks[d, b, pad:, pad:] = mask
            queries[d, b, pad:] = defined.float()
    counts = queries.sum(-1)  # [D, B]
    weighted = masks * queries[..., None]  # only defined queries count
    L = model.n_layers
    envoys = [model.attn_envoy(layer) for layer in range(L)]
    eager_fn = getattr(sys.modules[type(envoys[0]._module).__module__], "eager_attention_forward", None)
    kwargs = dict(attention_mask=batch.attention_mask, position_ids=batch.position_ids, logits_to_keep=1)
    if eager_fn is not None:
        with torch.no_grad(), model.nn.trace(batch.input_ids, **kwargs, **model.trace_options()):
            per_layer = []
            for envoy in envoys:
                probs = eager_pattern(envoy.source.attention_interface_1.inputs, eager_fn).float()
                probs = torch.nan_to_num(probs)  # [B, H, T, T]; a padded query row may be all masked
                per_layer.append(torch.einsum("bhqk,dbqk->dbh", probs, weighted))
            sums = torch.stack(per_layer, dim=2).save()  # [D, B, L, H]
    else:
        require_local(model, f"Head detectors of model_type {model.config.model_type!r}")
        with model.eager_attention(), torch.no_grad(), model.nn.trace(batch.input_ids, **kwargs):
            per_layer = []
            for envoy in envoys:
                probs = torch.nan_to_num(envoy.output[1].float())
                per_layer.append(torch.einsum("bhqk,dbqk->dbh", probs, weighted))
            sums = torch.stack(per_layer, dim=2).save()
    return sums.detach().cpu().float(), counts


# ------------------------------------------------------------------ the result
@dataclass(repr=False)
class HeadDetectorScores(Coded, Figured):
    """Head detector scores (`wb.head_detectors`): a mapping detector name -> [L, H] float32 in [0, 1].

    `scores["induction"]` (also `scores["previous-token"]`), `.names` the detectors computed, `.top(name, k)`
    the k highest heads as ((layer, head), score), `.per_prompt[name]` [N, L, H] each prompt's own mean (NaN
    where the detector is not defined on the prompt: those prompts are `.excluded[name]` and do not count in
    the score), `.counts[name]` how many queries the score averages, `.prompts` the prompts' token strings.
    """

    _figure_name = "head_detectors"

    scores: dict[str, np.ndarray]
    per_prompt: dict[str, np.ndarray]
    counts: dict[str, int]
    excluded: dict[str, list[int]]
    prompts: list[list[str]]
    options: dict[str, Any]
    undefined: list[str] = field(default_factory=list)  # detectors asked for that no prompt defines
    _code: Callable[[], str] | str = field(default="", repr=False)

    @property
    def names(self) -> list[str]:
        return list(self.scores)

    @property
    def n_layers(self) -> int:
        return int(next(iter(self.scores.values())).shape[0]) if self.scores else 0

    @property
    def n_heads(self) -> int:
        return int(next(iter(self.scores.values())).shape[1]) if self.scores else 0

    def __getitem__(self, name: str) -> np.ndarray:
        key = detector_name(name)
        if key not in self.scores:
            if key in self.undefined:
                raise WorkbenchError(
                    f"The {key} detector is not defined on these prompts: none of them repeats a token. Use "
                    "prompts=None (repeated random tokens) or prompts that repeat tokens."
                )
            raise WorkbenchError(
                f"The {key} detector was not computed: call wb.head_detectors(model, detectors=[{key!r}])."
            )
        return self.scores[key]

    def __contains__(self, name: object) -> bool:
        try:
            return detector_name(name) in self.scores
        except WorkbenchError:
            return False

    def __iter__(self) -> Any:
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)

    def keys(self) -> Any:
        return self.scores.keys()

    def values(self) -> Any:
        return self.scores.values()

    def items(self) -> Any:
        return self.scores.items()

    def top(self, name: str, k: int = 10) -> list[tuple[tuple[int, int], float]]:
        """The k heads of highest `name` score, as ((layer, head), score), ties in (layer, head) order."""
        s = self[name]
        k = as_int(k, "k", lo=0, hi=s.size)
        flat = np.asarray(s, np.float64).reshape(-1)
        order = np.argsort(-flat, kind="stable")[:k]
        h = s.shape[1]
        return [((int(i // h), int(i % h)), float(flat[i])) for i in order]

    def __repr__(self) -> str:
        o = self.options
        where = (
            f"repeated random tokens ({o.get('n_seqs')} x 2 x {o.get('seq_len')} tokens, seed {o.get('seed')})"
            if o.get("random")
            else f"{len(self.prompts)} prompts"
        )
        lines = [f"HeadDetectorScores [{self.n_layers} layers x {self.n_heads} heads] on {where}"]
        for name in self.scores:
            tops = ", ".join(f"L{layer}H{head} {v:.2f}" for (layer, head), v in self.top(name, 3))
            extra = (
                f" ({len(self.excluded[name])} prompts without repeats left out)"
                if self.excluded[name]
                else ""
            )
            lines.append(f"  {name}: top {tops}{extra}")
        for name in self.undefined:
            lines.append(f"  {name}: not defined (no prompt repeats a token)")
        return "\n".join(lines)


def _prompt_rows(model: Model, prompts: Any) -> list[torch.Tensor]:
    if isinstance(prompts, Dataset):
        prompts = list(prompts.clean)
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, torch.Tensor):
        ids = prompts if prompts.dim() == 2 else prompts[None]
        return [row for row in ids.long()]
    if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
        raise WorkbenchError(
            f"prompts= takes a list of prompts (strings), a wb.Dataset or None (repeated random tokens), got "
            f"{type(prompts).__name__}."
        )
    if len(prompts) == 0:
        raise WorkbenchError(
            "prompts= is empty: give at least one prompt, or prompts=None for repeated random tokens."
        )
    return [model.to_tokens(p, what=f"prompt {i}")[0] for i, p in enumerate(prompts)]


def head_detectors(
    model: Model,
    prompts: Sequence[str] | Dataset | None = None,
    *,
    detectors: Sequence[str] | None = None,
    seq_len: int = 25,
    n_seqs: int = 8,
    seed: int = 0,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> HeadDetectorScores:
    """Previous-token, duplicate-token and induction scores of every head, [L, H] each in [0, 1] (see the
    module doc): the mean attention on the detector's target keys over the queries where it is defined.

    `prompts=None`: `n_seqs` sequences of BOS + `seq_len` random tokens repeated twice (from `seed`); or a list
    of prompts / a wb.Dataset (its clean prompts). `detectors=` a subset of the names. Locally the prompts run in
    chunks of 16; a remote model gets them all in one request."""
    names = list(DETECTORS) if detectors is None else [detector_name(d) for d in detectors]
    if not names:
        raise WorkbenchError(f"detectors= is empty: name at least one of {', '.join(DETECTORS)}.")
    names = list(dict.fromkeys(names))
    random = prompts is None
    if random:
        seq_len = as_int(seq_len, "seq_len", lo=1)
        n_seqs = as_int(n_seqs, "n_seqs", lo=1)
        seed = as_int(seed, "seed")
        rows = list(repeated_random_tokens(model, seq_len, n_seqs, seed))
    else:
        rows = _prompt_rows(model, prompts)
    check_cancel(cancel)
    chunk = len(rows) if model.remote else LOCAL_CHUNK
    sums_parts, count_parts = [], []
    with model.lock, job_status(model, progress, cancel):
        for start in range(0, len(rows), chunk):
            check_cancel(cancel)
            s, c = detector_sums(model, rows[start : start + chunk], names)
            sums_parts.append(s)
            count_parts.append(c)
            if progress is not None:
                progress(
                    min(len(rows), start + chunk) / len(rows),
                    f"{min(len(rows), start + chunk)}/{len(rows)} prompts",
                )
    sums = torch.cat(sums_parts, dim=1).double().numpy()  # [D, N, L, H]
    counts = torch.cat(count_parts, dim=1).double().numpy()  # [D, N]
    scores, per_prompt, totals, excluded, undefined = {}, {}, {}, {}, []
    for d, name in enumerate(names):
        total = float(counts[d].sum())
        excluded[name] = [int(i) for i in np.nonzero(counts[d] == 0)[0]]
        with np.errstate(divide="ignore", invalid="ignore"):
            per = sums[d] / counts[d][:, None, None]
        per[counts[d] == 0] = np.nan
        if total == 0:
            undefined.append(name)
            continue
        scores[name] = np.clip(sums[d].sum(0) / total, 0.0, 1.0).astype(np.float32)
        per_prompt[name] = per.astype(np.float32)
        totals[name] = int(total)
    options = dict(op="head_detectors", detectors=names, random=random, seq_len=seq_len if random else None,
                   n_seqs=n_seqs if random else None, seed=seed if random else None, n_prompts=len(rows))  # fmt: skip
    ids_list = [r.tolist() for r in rows]
    from ..codegen_detectors import head_detectors_code

    return HeadDetectorScores(
        scores=scores,
        per_prompt=per_prompt,
        counts=totals,
        excluded={k: v for k, v in excluded.items() if k in scores},
        prompts=[model.str_tokens(r) for r in ids_list],
        options=options,
        undefined=undefined,
        _code=lambda: head_detectors_code(model, options, ids_list),
    )
