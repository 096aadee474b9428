"""Direct logit attribution: how much each attention head, each MLP and the embeddings write the metric
directly, through the final norm (its scale frozen at the run's value) and the unembedding.

At the last position the stream entering the final norm is a sum of parts: resid_pre[0] (token and
position embeddings: `.embed`), every head's output through its slice of the output projection (`.heads`),
the output projection's bias of each layer, and every MLP's output (`.mlps`), each times the block's
residual multiplier (Granite). With the norm's scale s (RMS, or the standard deviation for LayerNorm) frozen,
norm(x) = g * P(x) / s + b is linear in x (P centres for LayerNorm, the identity for RMSNorm), so each part
c reaches the logits as unembed(g * P(c) / s) and the logits are the parts' sum plus the bias terms.

A part's attribution is d metric / d logits . (its logits): for a metric linear in the logits (a logit
difference) that is the part's exact share, and `.heads.sum() + .mlps.sum() + .embed + .rest == .metric`
to float precision. `.rest` holds what no head, MLP or embedding writes: the output projections' biases
(GPT-2, GPT-NeoX, Phi), the final norm's bias and the unembedding's bias (`.rest_parts` splits it); it is 0
for Llama-family models. For a metric that is not linear in the logits (a probability, a log-probability)
the attributions are first-order (the gradient at the run's logits times each part's logits): `.exact` is
False and `.metric - .total` is what the linearisation misses.

Families whose attention output passes a norm before the stream (Gemma-2, Gemma-3) have no per-head
decomposition and get an error. Over a wb.Dataset every example has its own metric; `.per_example` holds each
example's attributions and `.sem` their standard errors. A remote model gets one request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.dataset import Dataset
from ..engine.batching import Progress, check_cancel
from ..engine.kernels import finish_logits, read, slot
from ..engine.padding import left_pad, pad_id
from ..errors import WorkbenchError
from ..model import Model
from ..remote import job_status
from ..validate import as_int
from .dataset_results import sem
from .metrics import LogitDiff, Metric, as_metric
from .over_dataset import is_dataset
from .results import Coded, Figured, _num, _short

LOCAL_CHUNK = 16  # prompts per local forward (remote: every prompt in one request)
PARTS = ("heads", "mlps", "embed", "rest", "metric")


# ------------------------------------------------------------------ pure torch helpers (shipped by value)
def head_outputs(o_proj: Any, z: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's output in the residual space and the projection's bias, from the heads' outputs z [B, H, d]:
    (o_proj(z_h in head h's slot) - o_proj(0) [B, H, D], o_proj(0) [D]), through the module itself."""
    B, H, d = z.shape
    blocks = torch.zeros(B, H + 1, H, d, dtype=z.dtype)
    ar = torch.arange(H)
    blocks[:, ar, ar] = z
    y = o_proj(blocks.reshape(B * (H + 1), H * d).to(dtype)).float().reshape(B, H + 1, -1)
    return y[:, :H] - y[:, H:], y[0, H]


def norm_scale(v: torch.Tensor, centred: bool, eps: float) -> torch.Tensor:
    """The final norm's scale of vectors v [..., D]: sqrt(mean(P(v)^2) + eps), P centring for LayerNorm."""
    v = v.float()
    if centred:
        v = v - v.mean(-1, keepdim=True)
    return torch.sqrt((v * v).mean(-1, keepdim=True) + eps)


def frozen_norm(norm: Any, parts: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, centred: bool,
                eps: float, dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """g * P(c) / s for every part c [B, n, D] (s [B, 1, 1] the run's frozen scale), from the norm module
    itself: norm(c) = g * P(c) / s(c) + b, so g * P(c) / s = (norm(c) - b) * s(c) / s. `bias` = norm(0) = b."""
    out = norm(parts.to(dtype)).float() - bias
    return out * (norm_scale(parts, centred, eps) / scale)


# ------------------------------------------------------------------ the trace
def dla_trace(model: Model, rows: list[torch.Tensor], metrics: list[Any]) -> dict[str, torch.Tensor]:
    """One forward of the prompts `rows` (left-padded, so the last column is every row's last position):
    every part's attribution and the checks, float32 CPU tensors (see `logit_attribution`)."""
    L, H = model.n_layers, model.n_heads
    centred, eps = model.final_norm_form()
    head_refs = [model.site_ref("head", layer) for layer in range(L)]
    head_envoys = [model.envoy(ref) for ref in head_refs]
    layouts = [ref.layout for ref in head_refs]
    mlp_envoys = [model.envoy(model.site_ref("mlp_out", layer)) for layer in range(L)]
    first = model.envoy(model.site_ref("resid_pre", 0))
    scales = [model.residual_scale(layer) for layer in range(L)]
    norm, unembed, divisor, softcap = model.decoder()
    batch = left_pad(rows, pad_id(model.tokenizer))
    B = len(rows)
    nn = model.nn
    with (
        torch.no_grad(),
        nn.trace(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            logits_to_keep=1,
            **model.trace_options(),
        ),
    ):
        embed = read(first, True)[:, -1].float()  # [B, D]: resid_pre[0]
        dtype = embed.dtype
        zs, mlps = [], []
        for layer in range(L):
            x = slot(read(head_envoys[layer], True), layouts[layer])  # [B, T, H, d]
            dtype = x.dtype
            zs.append(x[:, -1].clone())
            mlps.append(read(mlp_envoys[layer], False)[:, -1].float() * scales[layer])
        resid = norm.input[:, -1].float()  # [B, D]: what the final norm reads
        normed = norm.output[:, -1]
        logits_run = nn.output.logits[:, -1].float()
        heads, biases = [], []
        for layer in range(L):
            h_out, b_out = head_outputs(head_envoys[layer], zs[layer], dtype)
            heads.append(h_out * scales[layer])
            biases.append(b_out * scales[layer])
        heads_t = torch.stack(heads, dim=1)  # [B, L, H, D]
        biases_t = torch.stack(biases)  # [L, D]
        mlps_t = torch.stack(mlps, dim=1)  # [B, L, D]
        D = resid.shape[-1]
        parts = torch.cat(
            [embed[:, None], heads_t.reshape(B, L * H, D), mlps_t, biases_t[None].expand(B, L, D)], dim=1
        )  # [B, 1 + L*H + L + L, D]
        decomposition = (parts.sum(1) - resid).abs().max() / resid.abs().max()
        scale = norm_scale(resid, centred, eps)[:, None]  # [B, 1, 1]
        zero = torch.zeros(1, 1, D)
        bias = norm(zero.to(dtype)).float()[0]  # [1, D]: the norm's bias (0 for RMSNorm)
        frozen = frozen_norm(norm, parts, scale, bias, centred, eps, dtype)  # [B, n, D]
        norm_check = (frozen.sum(1) + bias - normed.float()).abs().max() / normed.float().abs().max()
        with torch.enable_grad():
            leaf = normed.detach().float().requires_grad_(True)
            logits = finish_logits(unembed(leaf.to(dtype)).float(), divisor, softcap)
            values = torch.cat(
                [
                    metrics[b](logits[b : b + 1].clone(), logits[b].clone()).float().reshape(-1)
                    for b in range(B)
                ]
            )
            grad_n, grad_logits = torch.autograd.grad(values.sum(), [leaf, logits])
        contrib = (frozen * grad_n[:, None]).sum(-1)  # [B, n]
        unembed_bias = finish_logits(unembed(zero[0].to(dtype)).float(), divisor, softcap)  # [1, V]
        rest_norm = (bias * grad_n).sum(-1)  # [B]
        rest_unembed = (unembed_bias * grad_logits).sum(-1)  # [B]
        logit_gap = (logits - logits_run).abs().max()
        out_contrib = contrib.save()
        out_rest = torch.stack([rest_norm, rest_unembed]).save()
        out_metric = values.detach().save()
        out_checks = torch.stack([decomposition, norm_check, logit_gap]).save()
    return {
        "contrib": out_contrib.detach().cpu().float(),
        "rest": out_rest.detach().cpu().float(),
        "metric": out_metric.detach().cpu().float(),
        "checks": out_checks.detach().cpu().float(),
    }


# ------------------------------------------------------------------ the result
@dataclass(repr=False)
class LogitAttribution(Coded, Figured):
    """Direct logit attribution (`wb.logit_attribution`): each part's direct effect on the metric at the last
    position, the final norm's scale frozen (see the module doc).

    `.heads` [L, H], `.mlps` [L], `.embed` (float), `.rest` (float: the biases, `.rest_parts`), `.metric` the
    metric itself, `.total` the sum of all of them (== `.metric` when `.exact`); over a Dataset these are means
    over the examples, `.per_example[name]` ([N, ...] for "heads", "mlps", "embed", "rest", "metric"), `.sem`
    (the same keys), `.example(i)`; `.top(k)` the k parts of largest |attribution|."""

    _figure_name = "logit_attribution"

    heads: np.ndarray
    mlps: np.ndarray
    embed: float
    rest: float
    metric: float
    per_example: dict[str, np.ndarray]
    rest_parts: dict[str, Any]
    exact: bool
    options: dict[str, Any]
    prompts: list[str] = field(default_factory=list)
    checks: dict[str, float] = field(default_factory=dict)
    _code: Callable[[], str] | str = field(default="", repr=False)

    @property
    def n_examples(self) -> int:
        return int(self.per_example["metric"].shape[0])

    @property
    def total(self) -> float:
        """Every part's attribution summed: the metric exactly for a metric linear in the logits."""
        return float(
            self.heads.astype(np.float64).sum() + self.mlps.astype(np.float64).sum() + self.embed + self.rest
        )

    @property
    def sem(self) -> dict[str, Any]:
        """Standard error of each mean over the examples (NaN for one example)."""
        out = {}
        for k, v in self.per_example.items():
            e = sem(np.asarray(v, np.float32).reshape(v.shape[0], -1)).reshape(v.shape[1:])
            out[k] = float(e) if e.ndim == 0 else e
        return out

    def example(self, i: int) -> LogitAttribution:
        """Example i's own attribution."""
        i = as_int(i, "example", lo=-self.n_examples, hi=self.n_examples - 1) % self.n_examples
        per = {k: v[i : i + 1] for k, v in self.per_example.items()}
        return LogitAttribution(
            heads=per["heads"][0],
            mlps=per["mlps"][0],
            embed=float(per["embed"][0]),
            rest=float(per["rest"][0]),
            metric=float(per["metric"][0]),
            per_example=per,
            rest_parts={
                k: (v[i] if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == self.n_examples else v)
                for k, v in self.rest_parts.get("per_example", {}).items()
            },  # fmt: skip
            exact=self.exact,
            options={**self.options, "example": i},
            prompts=self.prompts[i : i + 1],
            checks=self.checks,
            _code=self._code,
        )

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The k parts (heads 'L9H3', MLPs 'MLP 12', 'embed') of largest |attribution|, as (label, value)."""
        labels, values = self._parts()
        k = as_int(k, "k", lo=0, hi=len(values))
        order = np.argsort(-np.abs(values), kind="stable")[:k]
        return [(labels[i], float(values[i])) for i in order]

    def _parts(self) -> tuple[list[str], np.ndarray]:
        L, H = self.heads.shape
        labels = [f"L{layer}H{h}" for layer in range(L) for h in range(H)]
        labels += [f"MLP {layer}" for layer in range(L)] + ["embed"]
        values = np.concatenate([self.heads.reshape(-1), self.mlps.reshape(-1), [self.embed]]).astype(
            np.float64
        )
        return labels, values

    def __repr__(self) -> str:
        o = self.options
        L, H = self.heads.shape
        over = (
            f"over {self.n_examples} examples"
            if o.get("dataset")
            else f"prompt {_short(self.prompts[0] if self.prompts else '')}"
        )
        how = "exact (linear metric)" if self.exact else f"first-order (sum {_num(self.total)})"
        lines = [
            f"LogitAttribution [{L} layers x {H} heads + {L} MLPs + embed], metric {o.get('metric', '?')}, {over}",
            f"  metric {_num(self.metric)} = heads {_num(self.heads.sum())} + MLPs {_num(self.mlps.sum())} + embed "
            f"{_num(self.embed)} + rest {_num(self.rest)}: {how}",
            "  largest: " + ", ".join(f"{label} {v:+.3g}" for label, v in self.top(4)),
        ]
        return "\n".join(lines)


# ------------------------------------------------------------------ the op
def _check_family(model: Model) -> None:
    arch = model.arch
    if arch.attn_out != arch.attn:
        raise WorkbenchError(
            f"Direct logit attribution per head needs the attention output to reach the stream as the output "
            f"projection returns it; {model.config.model_type!r} passes it through a norm first "
            f"({arch.attn_out}), so heads have no linear share. Use wb.attribution_patch(site='head') instead."
        )


CHECK_TOL = 1e-4  # relative: the parts must rebuild the final norm's input and output


def logit_attribution(
    model: Model,
    prompt_or_ds: str | Dataset,
    *,
    metric: Metric | Callable[[torch.Tensor], Any] | None = None,
    progress: Progress = None,
    cancel: threading.Event | None = None,
) -> LogitAttribution:
    """Direct logit attribution of every head, MLP and the embeddings to `metric` at the last position, the final
    norm's scale frozen at the run's value (see the module doc): `.heads` [L, H], `.mlps` [L], `.embed`, `.rest`.

    A logit difference decomposes exactly (`.total == .metric`); other metrics get the first-order share
    (gradient at the run's logits times each part's logits; `.exact` False). A wb.Dataset gives the mean over its
    clean prompts (each with its own target/foil), `.per_example` and `.sem`. Locally the prompts run in chunks of
    16; a remote model gets them all in one request."""
    if metric is None:
        raise WorkbenchError(
            "wb.logit_attribution needs metric=: e.g. metric=wb.logit_diff(' Paris', ' Rome') (exact), or "
            "wb.prob(' Paris') (first-order)."
        )
    m = as_metric(metric)
    if m.needs_clean:
        raise WorkbenchError(
            f"metric={m.name} compares with a clean run, which direct logit attribution (one run) does not have: use "
            "wb.logit_diff(target, foil), wb.prob(token) or wb.logprob(token)."
        )
    _check_family(model)
    if is_dataset(prompt_or_ds):
        ds = prompt_or_ds
        prompts = list(ds.clean)
        metrics = [m.for_example(i, ex) for i, ex in enumerate(ds)]
    elif isinstance(prompt_or_ds, str):
        ds = None
        prompts = [prompt_or_ds]
        metrics = [m]
    else:
        raise WorkbenchError(
            f"wb.logit_attribution takes a prompt (a string) or a wb.Dataset, got {type(prompt_or_ds).__name__}."
        )
    bound = []
    for i, mi in enumerate(metrics):
        try:
            bound.append(mi.bind(model))
        except WorkbenchError as exc:
            if ds is None:
                raise
            raise type(exc)(f"Example {i} ({prompts[i]!r:.60}): {exc}") from None
    rows = [
        model.to_tokens(p, what="prompt" if ds is None else f"prompt {i}")[0] for i, p in enumerate(prompts)
    ]
    L, H = model.n_layers, model.n_heads
    chunk = len(rows) if model.remote else LOCAL_CHUNK
    outs = []
    check_cancel(cancel)
    with model.lock, job_status(model, progress, cancel):
        for start in range(0, len(rows), chunk):
            check_cancel(cancel)
            outs.append(dla_trace(model, rows[start : start + chunk], bound[start : start + chunk]))
            if progress is not None:
                done = min(len(rows), start + chunk)
                progress(done / len(rows), f"{done}/{len(rows)} prompts")
    contrib = torch.cat([o["contrib"] for o in outs]).double().numpy()  # [N, 1 + L*H + 2L]
    rest2 = torch.cat([o["rest"] for o in outs], dim=1).double().numpy()  # [2, N]
    values = torch.cat([o["metric"] for o in outs]).double().numpy()
    checks = torch.stack([o["checks"] for o in outs]).max(0).values.numpy()
    if checks[0] > CHECK_TOL or checks[1] > CHECK_TOL:
        raise WorkbenchError(
            f"Direct logit attribution of this {model.config.model_type!r} model does not add up: the parts rebuild "
            f"the final norm's input to {checks[0]:.2g} and its output to {checks[1]:.2g} (relative). Its blocks add "
            "something to the stream that is not a head, an MLP or the embeddings, or its final norm is neither a "
            "LayerNorm nor an RMSNorm; this family is not supported."
        )
    N = len(rows)
    embed = contrib[:, 0]
    heads = contrib[:, 1 : 1 + L * H].reshape(N, L, H)
    mlps = contrib[:, 1 + L * H : 1 + L * H + L]
    attn_bias = contrib[:, 1 + L * H + L :]
    rest = attn_bias.sum(1) + rest2[0] + rest2[1]
    per = {
        "heads": heads.astype(np.float32),
        "mlps": mlps.astype(np.float32),
        "embed": embed.astype(np.float32),
        "rest": rest.astype(np.float32),
        "metric": values.astype(np.float32),
    }
    exact = isinstance(m, LogitDiff) and not model.logit_softcap
    options = dict(
        op="logit_attribution", metric=m.name, dataset=ds is not None, n_examples=N, position="last"
    )
    from ..codegen_detectors import logit_attribution_code

    ids_list = [r.tolist() for r in rows]
    return LogitAttribution(
        heads=heads.mean(0).astype(np.float32),
        mlps=mlps.mean(0).astype(np.float32),
        embed=float(embed.mean()),
        rest=float(rest.mean()),
        metric=float(values.mean()),
        per_example=per,
        rest_parts={
            "attn_bias": attn_bias.mean(0).astype(np.float32),
            "norm_bias": float(rest2[0].mean()),
            "unembed_bias": float(rest2[1].mean()),
            "per_example": {
                "attn_bias": attn_bias.astype(np.float32),
                "norm_bias": rest2[0].astype(np.float32),
                "unembed_bias": rest2[1].astype(np.float32),
            },  # fmt: skip
        },
        exact=exact,
        options=options,
        prompts=prompts,
        checks={"decomposition": float(checks[0]), "norm": float(checks[1]), "logits": float(checks[2])},
        _code=lambda: logit_attribution_code(model, m, metrics, options, ids_list),
    )
