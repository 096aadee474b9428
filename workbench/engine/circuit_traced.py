"""The circuit engine as nnsight traces: edge attribution and edge-level interventions in ONE traced forward
(one NDIF request for a remote model, whose weights exist only on the server).

The same graph and conventions as the hook engine (`engine/circuit.py`, which it must equal): senders are the
embeddings (block 0's residual input), each head's output in the stream and each MLP's output; receivers each
head's q/k/v input, each MLP's input and the logits (the final norm's input).

- `attribute`: rows per example [clean, corrupt, (EAP-IG) corrupt + k/steps (clean - corrupt) embeddings for
  k = 1..steps-1]; one backward of the metric summed over the gradient rows (EAP: the corrupt rows; EAP-IG:
  the interpolated rows and the clean row, which is step k = steps) gives the gradient at every q/k/v
  projection output, MLP input (its own copy) and the final norm's input. Inside the body: each receiver's
  gradient in the stream (a head's columns of the projection gradient times its rows of the projection's
  affine map, taken back through the block's norm by autograd at the row's own norm input), averaged over an
  example's gradient rows, dotted with the senders' clean - corrupt outputs; only the [S, R, C] score sum,
  the metrics and the additivity check come back.
- `mixed`: rows per example [clean, corrupt, one mixed row per circuit]; a mixed row runs its base input with
  every receiver's input rebuilt as its reference row's stream plus the kept edges' (sender's current -
  reference output), q/k/v recomputed through the norm module and the projection's affine map. Circuits
  travel as edge index lists; the keep masks are built inside the body.

Trace bodies use envoys, tensors, plain data and the pure functions below (shipped by value to NDIF with the
rest of workbench); they never see the workbench Model. Affine maps are read inside the body by calling the
module on the identity (the weights are there, not here: a remote model is on the meta device locally).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..model import Model, SiteRef
from .circuit import Layout
from .kernels import read, slot
from .padding import Padded


# --------------------------------------------------------------------------------------------- facts
@dataclass
class Facts:
    """What the bodies need of one model, as envoys and plain values (computed outside any trace)."""

    attn_norm: list[Any]
    mlp_norm: list[Any]  # None where the MLP shares the attention's norm (Phi): its input is x_attn
    proj: list[list[Any]]  # per layer: the q/k/v projection envoys (one when fused)
    cols: list[list[tuple[int, torch.Tensor]]]  # per layer, per kind q, k, v: (projection index, [n, d_head])
    widths: list[list[int]]  # per layer, per projection: its output width
    o_proj: list[Any]
    rows: torch.Tensor  # [H, d_head]: each head's rows of the output projection's input
    attn_out: list[Any]
    mlp: list[Any]
    final: Any
    embed: Any
    scale: list[float]
    d_model: int


def _width(layout: tuple | None, d: int) -> int:
    """The output width a projection needs for a layout (the index tensors only address it)."""
    assert layout is not None
    kind, at, n, dh = layout
    return n * 3 * dh if kind == "interleaved" else at + n * dh


def _columns(layout: tuple, width: int) -> torch.Tensor:
    index = torch.arange(width, dtype=torch.float64).view(1, 1, width)
    return slot(index, layout)[0, 0].round().long()


def facts(model: Model) -> Facts:
    """The envoys and index tensors of `model`'s graph (module paths from model.site_ref / the arch table)."""
    arch = model.arch
    attn_norm, mlp_norm, proj, cols, widths, o_proj, attn_out, mlp = [], [], [], [], [], [], [], []
    for layer in range(model.n_layers):
        block = f"{arch.layers}[{layer}]"
        refs = {s: model.site_ref(s, layer) for s in "qkv"}
        paths = list(dict.fromkeys(ref.path for ref in refs.values()))
        width = {p: max(_width(r.layout, model.d_head) for r in refs.values() if r.path == p) for p in paths}
        proj.append([model.envoy(_ref(layer, p)) for p in paths])
        widths.append([width[p] for p in paths])
        cols.append(
            [(paths.index(refs[s].path), _columns(refs[s].layout, width[refs[s].path])) for s in "qkv"]
        )
        attn_norm.append(model.envoy(_ref(layer, f"{block}.{arch.attn_norm}")))
        shared = arch.attn_norm == arch.mlp_norm
        mlp_norm.append(None if shared else model.envoy(_ref(layer, f"{block}.{arch.mlp_norm}")))
        o_proj.append(model.envoy(model.site_ref("head", layer)))
        attn_out.append(model.envoy(model.site_ref("attn_out", layer)))
        mlp.append(model.envoy(model.site_ref("mlp_out", layer)))
    head_ref = model.site_ref("head", 0)
    return Facts(
        attn_norm=attn_norm,
        mlp_norm=mlp_norm,
        proj=proj,
        cols=cols,
        widths=widths,
        o_proj=o_proj,
        rows=_columns(head_ref.layout, model.n_heads * model.d_head),
        attn_out=attn_out,
        mlp=mlp,
        final=model.final_norm(),
        embed=model.embed(),
        scale=[model.residual_scale(layer) for layer in range(model.n_layers)],
        d_model=model.d_model,
    )


def _ref(layer: int, path: str) -> SiteRef:
    """A module's place (model.envoy takes a SiteRef; these modules are no user-facing site)."""
    return SiteRef("module", layer, path, False, None)


# ------------------------------------------------------------------ pure functions for the trace bodies
def affine(envoy: Any, d_in: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [d_in, D_out], b [D_out]) of an affine module called ad hoc: its output on the identity minus its
    output on 0 (the module's own layout, Linear or Conv1D, and its own weights, wherever they live)."""
    with torch.no_grad():
        eye = torch.eye(d_in, dtype=like.dtype, device=like.device).unsqueeze(0)
        zero = torch.zeros(1, 1, d_in, dtype=like.dtype, device=like.device)
        b = envoy(zero)[0, 0]
        w = envoy(eye)[0] - b
    return w, b


def norm_vjp(norm: Any, x: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """[R, G, T, d]: each of R gradients at the norm's output taken back to its input at the point x [G, T, d]
    (autograd through the module itself, whatever the family's norm computes)."""
    with torch.enable_grad():
        xr = x.detach().unsqueeze(0).expand(grads.shape[0], *x.shape).clone().requires_grad_(True)
        y = norm(xr)
        (g,) = torch.autograd.grad(y, xr, grads.to(y.dtype))
    return g


def head_outputs(z: torch.Tensor, w_o: torch.Tensor, n_heads: int, scale: float) -> torch.Tensor:
    """[B, H, T, d]: each head's output in the stream from the output projection's input z [B, T, H * d_head]
    and each head's rows w_o [H, d_head, d]."""
    zh = z.view(z.shape[0], z.shape[1], n_heads, -1)
    return torch.einsum("bthk,hkd->bhtd", zh, w_o.to(z.dtype)) * scale


def interpolate(e: torch.Tensor, src_clean: torch.Tensor, src_corrupt: torch.Tensor, alpha: torch.Tensor,
                is_step: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The token embeddings with each EAP-IG step row replaced by corrupt + alpha (clean - corrupt) of its
    example's rows (other rows as they are)."""
    dev = e.device
    a = alpha.to(dev, e.dtype)[:, None, None]
    ec, ek = e[src_clean.to(dev)], e[src_corrupt.to(dev)]
    return torch.where(is_step.to(dev)[:, None, None], ek + a * (ec - ek), e)


def example_metrics(logits: torch.Tensor, metrics: list[Any], per: int) -> torch.Tensor:
    """[B]: each example's metric on its `per` consecutive rows, against its first (clean) row's logits."""
    parts = []
    for j, metric in enumerate(metrics):
        own = logits[j * per : (j + 1) * per]
        parts.append(metric(own.clone(), own[0].detach().clone()).float().reshape(-1))
    return torch.cat(parts)


def keep_tensor(
    edges: torch.Tensor, packed: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor
) -> torch.Tensor:
    """The circuits' edges as a 0/1 tensor `shape` [C, S, R, 1 + n_cols] from an index list [E, 4] or, when that
    is empty and `packed` is not, from a bitmask packed like numpy's packbits (most significant bit first)."""
    if packed.numel() > 0:
        shifts = torch.arange(7, -1, -1, device=like.device, dtype=torch.int32)
        bits = (packed.to(like.device, torch.int32).unsqueeze(1) >> shifts) & 1
        n = shape[0] * shape[1] * shape[2] * shape[3]
        return bits.reshape(-1)[:n].reshape(shape).to(like.dtype)
    out = torch.zeros(shape, dtype=like.dtype, device=like.device)
    idx = edges.to(like.device, torch.long)
    out[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]] = 1.0
    return out


def keep_rows(K: torch.Tensor, circ: torch.Tensor, P: torch.Tensor, ex: torch.Tensor, invert: bool,
              s_hi: int, r_lo: int, r_hi: int) -> torch.Tensor:  # fmt: skip
    """[M, s_hi, n, T] 0/1: which edges sender s -> receiver r_lo + i each mixed row keeps at each position.
    K [C, S, R, 1 + n_cols]: a circuit's edges at every real position (column 0) or at a column's positions;
    P [N, 1 + n_cols, T]: each example's real positions and its columns' positions in the padded batch.
    invert: keep every edge but the circuit's (exact edge patching)."""
    k = K[:, :s_hi, r_lo:r_hi][circ]  # [M, s_hi, n, k]
    mark = torch.einsum("msnk,mkt->msnt", k, P[ex]).clamp(max=1.0)
    return 1.0 - mark if invert else mark


def rebuilt(keep: torch.Tensor, blocks: list[tuple[int, torch.Tensor]], base: torch.Tensor,
            s_hi: int) -> torch.Tensor:  # fmt: skip
    """[M, n, T, d]: the reference stream `base` [M, T, d] plus the kept (current - reference) sender outputs
    of the sender blocks (start index, [M, k, T, d]) below s_hi."""
    out = base.unsqueeze(1).expand(base.shape[0], keep.shape[2], *base.shape[1:]).clone()
    for start, d in blocks:
        if start >= s_hi:
            break
        out = out + torch.einsum("msnt,mstd->mntd", keep[:, start : start + d.shape[1]].to(d.dtype), d)
    return out


def layer_grads(x: torch.Tensor, xm: torch.Tensor, proj_grads: list, mlp_grad: Any, gr: torch.Tensor,
                weights: list, cols: list, attn_norm: Any, mlp_norm: Any) -> torch.Tensor:  # fmt: skip
    """[R_l, G, T, d]: one layer's receivers' gradients in the stream at the gradient rows `gr` (q heads, k and
    v heads, the MLP): each head's columns of its projection's gradient times its rows of the projection's
    affine map, then back through the norm at the row's own input x (xm for the MLP)."""
    parts = []
    for i, c in cols:
        g = proj_grads[i]
        c = c.to(x.device)
        if g is None:
            parts.append(torch.zeros(c.shape[0], *x.shape, dtype=x.dtype, device=x.device))
            continue
        w = weights[i][0]
        parts.append(torch.einsum("gtnk,dnk->ngtd", g.detach()[gr][..., c], w[:, c]))
    g_attn = norm_vjp(attn_norm, x, torch.cat(parts))
    if mlp_grad is None:
        g_mlp = torch.zeros(1, *xm.shape, dtype=xm.dtype, device=xm.device)
    else:
        g_mlp = norm_vjp(mlp_norm, xm, mlp_grad.detach()[gr].unsqueeze(0))
    return torch.cat([g_attn, g_mlp.to(g_attn.dtype)])


def senders_before(r: int, n_layers: int, n_heads: int, n_kv: int, parallel: bool) -> int:
    """`Layout.senders_before` as a pure function (the bodies take no workbench objects)."""
    per_r, per_s = n_heads + 2 * n_kv + 1, n_heads + 1
    if r == n_layers * per_r:
        return 1 + n_layers * per_s
    layer, k = divmod(r, per_r)
    if k == n_heads + 2 * n_kv and not parallel:
        return 1 + layer * per_s + n_heads
    return 1 + layer * per_s


# --------------------------------------------------------------------------------------- attribution
SCORE_BYTES = 1 << 30  # the server memory the score computation of a chunk of examples may take


@dataclass
class AttributionPlan:
    """The rows of one attribution request and how they map to examples."""

    batch: Padded
    per: int  # rows per example: clean, corrupt, steps - 1 interpolated
    grad_rows: torch.Tensor  # [G]
    grad_weights: torch.Tensor  # [N, G]: 1 / (gradient rows of the example) where the row is the example's
    src_clean: torch.Tensor  # [B]
    src_corrupt: torch.Tensor  # [B]
    alpha: torch.Tensor  # [B]
    is_step: torch.Tensor  # [B] bool
    columns: torch.Tensor  # [N, T, C]: how much each padded position counts in each result column
    steps: int
    chunks: list[
        tuple[int, int, int, int]
    ]  # examples lo..hi and their gradient rows g_lo..g_hi, scored together


def attribution_plan(pairs: list[tuple[torch.Tensor, torch.Tensor]], pid: int, steps: int,
                     positions: list[list[list[int]]] | None, lay: Layout, d_model: int,
                     budget: float | None = None) -> AttributionPlan:  # fmt: skip
    """Rows [clean, corrupt, step 1..steps-1] per example (left-padded together); `positions` the result
    columns' token positions per example (None: one column, every position). The scores are computed for as
    many examples at a time as keep their senders' and receivers' [*, T, d] tensors within `budget` bytes."""
    from .padding import left_pad

    per = 2 + max(steps - 1, 0)
    ids: list[torch.Tensor] = []
    src_c, src_k, alpha, is_step, grad_rows, owner = [], [], [], [], [], []
    for e, (c, k) in enumerate(pairs):
        start = len(ids)
        ids += [c, k] + [k] * max(steps - 1, 0)
        for j in range(per):
            src_c.append(start)
            src_k.append(start + 1)
            alpha.append((j - 1) / steps if j >= 2 else 0.0)
            is_step.append(j >= 2)
        rows = [start + 1] if steps == 0 else [start + j for j in range(2, per)] + [start]
        grad_rows += rows
        owner += [e] * len(rows)
    batch = left_pad(ids, pid)
    n = len(pairs)
    weights = torch.zeros(n, len(grad_rows))
    for g, e in enumerate(owner):
        weights[e, g] = 1.0
    weights = weights / weights.sum(1, keepdim=True)
    width = batch.input_ids.shape[1]
    n_cols = 1 if positions is None else len(positions[0])
    cols = torch.zeros(n, width, n_cols)
    for e in range(n):
        pad = batch.pad[e * per]
        if positions is None:
            cols[e, pad:, 0] = 1.0
        else:
            for ci, ps in enumerate(positions[e]):
                for p in ps:
                    cols[e, pad + p, ci] += 1.0
    at_once = max(
        1, int((budget or SCORE_BYTES) // ((lay.n_senders + lay.n_receivers) * width * d_model * 4))
    )
    n_grad = len(grad_rows) // n
    chunks = [
        (lo, min(n, lo + at_once), lo * n_grad, min(n, lo + at_once) * n_grad) for lo in range(0, n, at_once)
    ]
    return AttributionPlan(
        batch, per, torch.tensor(grad_rows), weights, torch.tensor(src_c), torch.tensor(src_k),
        torch.tensor(alpha, dtype=torch.float32), torch.tensor(is_step), cols, steps, chunks,
    )  # fmt: skip


def attribute(
    model: Model, lay: Layout, plan: AttributionPlan, metrics: list[Any]
) -> dict[str, torch.Tensor]:
    """One traced forward and backward over `plan`'s rows: `scores` [S, R, C] summed over the examples, each
    example's `clean` and `corrupt` metric, and `additive` [L + 1, 2] (max |heads + bias - attention output|,
    max |attention output| per layer; max |stream - final norm input|, max |final norm input|)."""
    f = facts(model)
    nn = model.nn
    n_layers, n_heads, n_kv, parallel = lay.n_layers, lay.n_heads, lay.n_kv, lay.parallel
    n_senders, n_receivers = lay.n_senders, lay.n_receivers
    attn_norm, mlp_norm, proj, cols, o_proj, rows = f.attn_norm, f.mlp_norm, f.proj, f.cols, f.o_proj, f.rows
    attn_out, mlp, final, embed, scale, d_model = f.attn_out, f.mlp, f.final, f.embed, f.scale, f.d_model
    per, steps = plan.per, plan.steps
    grad_rows, grad_weights, columns, chunks = plan.grad_rows, plan.grad_weights, plan.columns, plan.chunks
    src_clean, src_corrupt, alpha, is_step = plan.src_clean, plan.src_corrupt, plan.alpha, plan.is_step
    n_ex = len(metrics)
    clean_rows = torch.arange(n_ex) * per
    corrupt_rows = clean_rows + 1
    batch = plan.batch
    real_mask = batch.attention_mask[clean_rows].bool()
    # Saved values are bound to plain names in the body: that is what comes back (also from NDIF).
    with (
        torch.enable_grad(),
        nn.trace(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            logits_to_keep=1,
            **model.trace_options(),
        ),
    ):
        e = embed.output
        if not e.requires_grad:  # NDIF's weights may not require grad: the backward needs a graph
            e.requires_grad_(True)
        if steps > 0:
            embed.output = interpolate(e, src_clean, src_corrupt, alpha, is_step)
        xs_attn, xs_mlp, zs, attn_outs, mlp_outs, weights = [], [], [], [], [], []
        targets = []
        for layer in range(n_layers):
            x = attn_norm[layer].input
            xs_attn.append(x)
            maps = []
            for p in proj[layer]:
                o = p.output
                p.output = o.clone()  # the model may change it in place (OLMo): the gradient is the output's
                targets.append(o)
                maps.append(affine(p, d_model, o))
            weights.append(maps)
            zs.append(o_proj[layer].input)
            attn_outs.append(read(attn_out[layer], False))
            xs_mlp.append(x if mlp_norm[layer] is None else mlp_norm[layer].input)
            own = mlp[layer].input.clone()  # the MLP's own copy (its gradient is its own)
            mlp[layer].input = own
            targets.append(own)
            mlp_outs.append(read(mlp[layer], False))
        x_final = final.input
        targets.append(x_final)
        logits = nn.output.logits[:, -1].float()
        values = example_metrics(logits, metrics, per)
        grads = [None] * len(targets)
        with values[grad_rows.to(values.device)].sum().backward():
            for i in reversed(range(len(targets))):
                grads[i] = targets[i].grad
        dev = x_final.device
        w_cols = columns.to(dev, torch.float32)
        real = real_mask.to(dev)  # [N, T]: the examples' real positions
        w_os, b_os = [], []
        for layer in range(n_layers):
            w_o, b_o = affine(o_proj[layer], zs[layer].shape[-1], zs[layer])
            w_os.append(w_o[rows.to(dev)])  # [H, d_head, d]
            b_os.append(b_o)
        checks = torch.zeros(n_layers + 1, 2, device=dev)
        score_sum = torch.zeros(n_senders, n_receivers, w_cols.shape[-1], dtype=torch.float32, device=dev)
        # a few examples at a time: their senders' clean - corrupt outputs [S, n, T, d] and receivers' gradients
        for lo, hi, g_lo, g_hi in chunks:
            cr, kr = clean_rows[lo:hi].to(dev), corrupt_rows[lo:hi].to(dev)
            gr = grad_rows[g_lo:g_hi].to(dev)
            gw = grad_weights[lo:hi, g_lo:g_hi].to(
                dev, x_final.dtype
            )  # averages each example's gradient rows
            diffs = [(xs_attn[0][cr] - xs_attn[0][kr]).detach().unsqueeze(0)]
            total = xs_attn[0][cr].detach()
            receiver_grads = []
            at = 0
            for layer in range(n_layers):
                z = zs[layer].detach()
                heads_c = head_outputs(z[cr], w_os[layer], n_heads, 1.0)  # [n, H, T, d]
                heads_k = head_outputs(z[kr], w_os[layer], n_heads, 1.0)
                a = attn_outs[layer].detach()[cr]
                mo = mlp_outs[layer].detach()
                err = (heads_c.sum(1) + b_os[layer] - a).abs().max()
                checks[layer] = torch.maximum(checks[layer], torch.stack([err, a.abs().max()]).float())
                sc = scale[layer]
                total = total + sc * (a + mo[cr])
                diffs.append((heads_c * sc - heads_k * sc).transpose(0, 1))
                diffs.append((mo[cr] * sc - mo[kr] * sc).unsqueeze(0))
                n_proj = len(proj[layer])
                m_norm = attn_norm[layer] if mlp_norm[layer] is None else mlp_norm[layer]
                per_row = layer_grads(
                    xs_attn[layer].detach()[gr], xs_mlp[layer].detach()[gr], grads[at : at + n_proj],
                    grads[at + n_proj], gr, weights[layer], cols[layer], attn_norm[layer], m_norm,
                )  # fmt: skip
                at += n_proj + 1
                receiver_grads.append(torch.einsum("rgtd,ng->rntd", per_row, gw.to(per_row.dtype)))
            xf = x_final.detach()[cr]
            checks[n_layers] = torch.maximum(
                checks[n_layers], torch.stack([(total - xf).abs().max(), xf.abs().max()]).float()
            )
            gf = grads[at]
            gf = torch.zeros_like(x_final[gr]) if gf is None else gf.detach()[gr]
            receiver_grads.append(torch.einsum("gtd,ng->ntd", gf, gw.to(gf.dtype)).unsqueeze(0))
            d_all = torch.where(real[lo:hi][None, :, :, None], torch.cat(diffs), 0.0)
            del diffs
            w_c = w_cols[lo:hi]
            r0 = 0
            for g in receiver_grads:
                r_lo = r0
                while r_lo < r0 + g.shape[0]:
                    s_hi = senders_before(r_lo, n_layers, n_heads, n_kv, parallel)
                    r_hi = r_lo + 1
                    while (
                        r_hi < r0 + g.shape[0]
                        and senders_before(r_hi, n_layers, n_heads, n_kv, parallel) == s_hi
                    ):
                        r_hi += 1
                    prod = torch.einsum(
                        "sntd,rntd->srnt", d_all[:s_hi], g[r_lo - r0 : r_hi - r0].to(d_all.dtype)
                    )
                    score_sum[:s_hi, r_lo:r_hi] += torch.einsum("srnt,ntc->src", prod.float(), w_c)
                    r_lo = r_hi
                r0 += g.shape[0]
        scores = score_sum.save()
        metric_values = values.detach().save()
        additive = checks.save()
    vals = metric_values.detach().cpu()
    return {
        "scores": scores.detach().cpu(),
        "clean": vals[clean_rows],
        "corrupt": vals[corrupt_rows],
        "additive": additive.detach().cpu(),
    }


# ---------------------------------------------------------------------------------------- mixed runs
@dataclass
class MixedPlan:
    """The rows of one request of mixed runs: per example [clean, corrupt, one per circuit]."""

    batch: Padded
    per: int
    mixed_rows: torch.Tensor  # [M]
    ref_rows: torch.Tensor  # [M]
    circ: torch.Tensor  # [M]: which circuit
    ex: torch.Tensor  # [M]: which example
    edges: (
        torch.Tensor
    )  # [E, 4] int32: (circuit, sender, receiver, 0 = every position | 1 + column), or [0, 4]
    packed: (
        torch.Tensor
    )  # the same as a bitmask of [C, S, R, 1 + n_cols] (numpy packbits), when that is smaller
    places: torch.Tensor  # [N, 1 + n_cols, T]
    n_circuits: int
    invert: bool


def mixed_plan(pairs: list[tuple[torch.Tensor, torch.Tensor]], pid: int, circuits: list[list[tuple[int, int, int]]],
               positions: list[list[list[int]]], base: str, invert: bool, lay: Layout) -> MixedPlan:  # fmt: skip
    """Rows [clean, corrupt, mixed x C] per example; a mixed row runs the `base` ("clean" | "corrupt") input
    against the other row as reference; circuits as (sender, receiver, 0 | 1 + column) lists, sent as an
    index list or a bitmask, whichever is smaller (a request body stays small for any circuit size)."""
    from .padding import left_pad

    n_c = len(circuits)
    per = 2 + n_c
    ids: list[torch.Tensor] = []
    mixed, ref, circ, ex = [], [], [], []
    for e, (c, k) in enumerate(pairs):
        start = len(ids)
        ids += [c, k] + [c if base == "clean" else k] * n_c
        for j in range(n_c):
            mixed.append(start + 2 + j)
            ref.append(start + 1 if base == "clean" else start)
            circ.append(j)
            ex.append(e)
    batch = left_pad(ids, pid)
    width = batch.input_ids.shape[1]
    n_cols = len(positions[0]) if positions else 0
    places = torch.zeros(len(pairs), 1 + n_cols, width)
    for e in range(len(pairs)):
        pad = batch.pad[e * per]
        places[e, 0, pad:] = 1.0
        for ci, ps in enumerate(positions[e]):
            for p in ps:
                places[e, 1 + ci, pad + p] = 1.0
    edges = torch.tensor([(j, s, r, k) for j, cs in enumerate(circuits) for s, r, k in cs], dtype=torch.int32)
    edges = edges.reshape(-1, 4)
    shape = (n_c, lay.n_senders, lay.n_receivers, 1 + n_cols)
    packed = torch.zeros(0, dtype=torch.uint8)
    if edges.numel() * 4 > int(np.prod(shape)) // 8 + 1:
        dense = np.zeros(shape, bool)
        dense[tuple(edges.long().T.numpy())] = True
        packed = torch.from_numpy(np.packbits(dense.reshape(-1)))
        edges = edges[:0]
    return MixedPlan(
        batch, per, torch.tensor(mixed, dtype=torch.long), torch.tensor(ref, dtype=torch.long),
        torch.tensor(circ, dtype=torch.long), torch.tensor(ex, dtype=torch.long), edges, packed, places, n_c,
        invert,
    )  # fmt: skip


def mixed(model: Model, lay: Layout, plan: MixedPlan, metrics: list[Any]) -> dict[str, torch.Tensor]:
    """One traced forward over `plan`'s rows: `raw` [C, N] (each circuit's mixed run per example), `clean` and
    `corrupt` [N] (the metrics of the unmixed rows, against the clean row's logits)."""
    f = facts(model)
    nn = model.nn
    n_layers, n_heads, n_kv, parallel = lay.n_layers, lay.n_heads, lay.n_kv, lay.parallel
    n_senders, n_receivers = lay.n_senders, lay.n_receivers
    per_r, per_s = lay.per_layer_receivers, lay.per_layer_senders
    attn_norm, mlp_norm, proj, cols, o_proj, rows = f.attn_norm, f.mlp_norm, f.proj, f.cols, f.o_proj, f.rows
    mlp, final, scale, d_model = f.mlp, f.final, f.scale, f.d_model
    per, invert, n_circ = plan.per, plan.invert, plan.n_circuits
    mixed_rows, ref_rows, circ, ex, edges, packed, places = (
        plan.mixed_rows, plan.ref_rows, plan.circ, plan.ex, plan.edges, plan.packed, plan.places,
    )  # fmt: skip
    batch = plan.batch
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
        x = attn_norm[0].input
        dev = x.device
        mr, rr, ci, ei = mixed_rows.to(dev), ref_rows.to(dev), circ.to(dev), ex.to(dev)
        P = places.to(dev, x.dtype)
        K = keep_tensor(edges, packed, (n_circ, n_senders, n_receivers, P.shape[1]), x)
        blocks = [(0, (x[mr] - x[rr]).unsqueeze(1))]  # (first sender index, [M, k, T, d]) in sender order
        for layer in range(n_layers):
            if layer > 0:
                x = attn_norm[layer].input
            xa = x
            for i, p in enumerate(proj[layer]):
                out = p.output
                new = None
                w_b = None
                for s in range(3):
                    j, c = cols[layer][s]
                    if j != i:
                        continue
                    c = c.to(dev)
                    r_lo = layer * per_r + (0, n_heads, n_heads + n_kv)[s]
                    r_hi = r_lo + c.shape[0]
                    s_hi = senders_before(r_lo, n_layers, n_heads, n_kv, parallel)
                    keep = keep_rows(K, ci, P, ei, invert, s_hi, r_lo, r_hi)
                    full = keep.amin(dim=1) > 0.5  # [M, n, T]: every edge into the receiver kept there
                    if bool(full.all()):
                        continue
                    built = rebuilt(keep, blocks, xa[rr], s_hi)
                    built = torch.where(full.unsqueeze(-1), xa[mr].unsqueeze(1), built)
                    u = attn_norm[layer](built)  # [M, n, T, d]
                    if w_b is None:
                        w_b = affine(p, d_model, out)
                    w, b = w_b
                    heads = torch.einsum("mntd,dnk->mtnk", u.to(w.dtype), w[:, c]) + b[c]
                    if new is None:
                        new = out.clone()
                    sub = new[mr]
                    sub[..., c.reshape(-1)] = heads.reshape(*heads.shape[:2], -1).to(sub.dtype)
                    new[mr] = sub
                if new is not None:
                    p.output = new
            z = o_proj[layer].input
            w_o, _ = affine(o_proj[layer], z.shape[-1], z)
            heads_all = head_outputs(z, w_o[rows.to(dev)], n_heads, scale[layer])
            blocks.append((1 + layer * per_s, heads_all[mr] - heads_all[rr]))
            xm = xa if mlp_norm[layer] is None else mlp_norm[layer].input
            m_norm = attn_norm[layer] if mlp_norm[layer] is None else mlp_norm[layer]
            r = layer * per_r + n_heads + 2 * n_kv
            s_hi = senders_before(r, n_layers, n_heads, n_kv, parallel)
            keep = keep_rows(K, ci, P, ei, invert, s_hi, r, r + 1)
            full = keep.amin(dim=1) > 0.5
            if not bool(full.all()):
                inp = mlp[layer].input
                built = rebuilt(keep, blocks, xm[rr], s_hi)
                built = torch.where(full.unsqueeze(-1), xm[mr].unsqueeze(1), built)[:, 0]
                new_in = inp.clone()
                new_in[mr] = m_norm(built).to(inp.dtype)
                mlp[layer].input = new_in
            mo = read(mlp[layer], False)
            blocks.append(
                (1 + layer * per_s + n_heads, (mo[mr] * scale[layer] - mo[rr] * scale[layer]).unsqueeze(1))
            )
        r = n_layers * per_r
        keep = keep_rows(K, ci, P, ei, invert, n_senders, r, r + 1)
        full = keep.amin(dim=1) > 0.5
        if not bool(full.all()):
            xf = final.input
            built = rebuilt(keep, blocks, xf[rr], n_senders)
            built = torch.where(full.unsqueeze(-1), xf[mr].unsqueeze(1), built)[:, 0]
            new_f = xf.clone()
            new_f[mr] = built.to(xf.dtype)
            final.input = new_f
        logits = nn.output.logits[:, -1].float()
        metric_values = example_metrics(logits, metrics, per).save()
    vals = metric_values.detach().cpu().view(len(metrics), per)
    return {"raw": vals[:, 2:].T.contiguous(), "clean": vals[:, 0], "corrupt": vals[:, 1]}
