"""`to_code()` of the head detectors and of direct logit attribution: standalone nnsight code (one forward per
prompt, plain loops) that reproduces `wb.head_detectors` and `wb.logit_attribution`. Each snippet binds `result`."""

from __future__ import annotations

from typing import Any

from .codegen import _decode_lines, _helpers, _load, _remote, lit, site_code
from .codegen_vectors import _dtype
from .model import Model

_TARGETS = '''

def targets(ids):
    """Each detector's target keys [T, T] (query x key, 0/1) and the queries [T] where it is defined."""
    ids = torch.tensor(ids)
    T = len(ids)
    dup = (ids[:, None] == ids[None, :]) & torch.ones(T, T, dtype=torch.bool).tril(-1)  # earlier, same token
    prev = torch.zeros(T, T, dtype=torch.bool)
    prev[torch.arange(1, T), torch.arange(T - 1)] = True  # key t - 1
    ind = torch.zeros(T, T, dtype=torch.bool)
    ind[:, 1:] = dup[:, :-1]  # the token after each earlier occurrence
    return {
        "previous_token": (prev.float(), prev.any(-1)),
        "duplicate_token": (dup.float(), dup.any(-1)),
        "induction": (ind.float(), dup.any(-1)),
    }
'''


def head_detectors_code(model: Model, o: dict[str, Any], rows: list[list[int]]) -> str:
    """Every prompt's attention probabilities, each detector's attention on its targets summed over the queries
    where it is defined, divided by how many there are (pooled over the prompts)."""
    call = site_code(model, "pattern", "l").read
    where = (
        f"# BOS + {o['seq_len']} random tokens repeated twice, {o['n_seqs']} sequences (seed {o['seed']})\n"
        if o.get("random")
        else "# the prompts' token ids\n"
    )
    return _remote(
        model,
        _load(model)
        + _helpers(model, ["pattern"], edits=False)
        + _TARGETS
        + "\n"
        + where
        + f"rows = {lit(rows)}\n"
        + f"detectors = {lit(list(o['detectors']))}\n"
        + f"L, H = {model.n_layers}, {model.n_heads}\n"
        "sums = {d: torch.zeros(L, H) for d in detectors}\n"
        "counts = {d: 0 for d in detectors}\n"
        "for ids in rows:\n"
        "    with torch.no_grad(), model.trace(torch.tensor([ids])):\n"
        "        patterns = []\n"
        "        for l in range(L):\n"
        f"            args, kwargs = {call}.inputs\n"
        "            patterns.append(probabilities(args, kwargs)[0].float())\n"
        "        patterns = torch.stack(patterns).save()  # [L, H, query, key]\n"
        "    got = targets(ids)\n"
        "    for d in detectors:\n"
        "        mask, queries = got[d]\n"
        "        sums[d] += (patterns * mask).sum(-1)[:, :, queries].sum(-1)  # attention on the targets\n"
        "        counts[d] += int(queries.sum())\n"
        "result = {d: (sums[d] / counts[d]).numpy() for d in detectors if counts[d]}  # [L, H] each\n",
    )


def logit_attribution_code(
    model: Model, metric: Any, metrics: list[Any], o: dict[str, Any], rows: list[list[int]]
) -> str:
    """Every part's output at the last position, the final norm applied with its scale frozen, dotted with the
    metric's gradient at the normed stream; one forward per prompt, the mean over the prompts."""
    centred, eps = model.final_norm_form()
    L, H, d = model.n_layers, model.n_heads, model.d_head
    head = site_code(model, "head", "l")
    mlp = site_code(model, "mlp_out", "l")
    first = site_code(model, "resid_pre", 0)
    norm, unembed = "model." + model.arch.final_norm, "model." + model.arch.unembed
    scales = [model.residual_scale(layer) for layer in range(L)]
    examples = []
    for ids, mi in zip(rows, metrics, strict=True):
        ex: dict[str, Any] = {"ids": ids}
        if metric.per_example:
            if hasattr(mi, "foil"):
                ex.update(target=model.token_id(mi.target), foil=model.token_id(mi.foil))
            else:
                ex.update(target=model.token_id(mi.token))
        examples.append(ex)
    dtype = _dtype(model)
    centre = "    v = v - v.mean(-1, keepdim=True)  # LayerNorm centres\n" if centred else ""
    return _remote(
        model,
        _load(model)
        + metric.code(model)
        + f"examples = {lit(examples)}\n"
        + f"L, H, d = {L}, {H}, {d}  # layers, heads, head width\n"
        + f"scales = {lit(scales)}  # what each block multiplies its attention and MLP outputs by\n"
        + "\n\ndef norm_scale(v):\n"
        '    """The final norm\'s scale of vectors v [..., D] (RMS, or the standard deviation for LayerNorm)."""\n'
        "    v = v.float()\n" + centre + f"    return torch.sqrt((v * v).mean(-1, keepdim=True) + {eps!r})\n"
        "\n\ndef run(ex):\n"
        '    """[embed, L*H heads, L MLPs, L attention biases, norm bias, unembedding bias] attributions, and the metric."""\n'
        "    if 'target' in ex:\n"
        "        global target, foil\n"
        "        target, foil = ex.get('target'), ex.get('foil')\n"
        "    with torch.no_grad(), model.trace(torch.tensor([ex['ids']])):\n"
        f"        embed = {first.read}[0, -1].float()  # resid_pre[0]: the embeddings\n"
        "        zs, mlps = [], []\n"
        "        for l in range(L):\n"
        f"            x = {head.read}\n"
        f"            zs.append({head.view('x')}[0, -1].clone())  # [H, d]: each head's output\n"
        f"            mlps.append({mlp.read}[0, -1].float() * scales[l])\n"
        f"        resid = {norm}.input[0, -1].float()  # the stream the final norm reads\n"
        f"        normed = {norm}.output[0, -1]\n"
        "        parts, biases = [embed], []\n"
        "        for l in range(L):\n"
        f"            x = torch.zeros(H + 1, H * d, dtype={dtype})  # row h: head h in its slot; row H: zeros\n"
        "            for h in range(H):\n"
        "                x[h, h * d : (h + 1) * d] = zs[l][h]\n"
        f"            y = {head.module}(x).float()\n"
        "            parts += list((y[:H] - y[H]) * scales[l])  # each head's output in the stream\n"
        "            biases.append(y[H] * scales[l])  # the output projection's bias\n"
        "        parts = torch.stack(parts + mlps + biases)  # [n, D]: they sum to resid\n"
        f"        bias = {norm}(torch.zeros(1, resid.shape[-1], dtype={dtype})).float()[0]  # the norm's bias\n"
        "        # the norm with the run's scale frozen: g * P(c) / s = (norm(c) - bias) * s(c) / s\n"
        f"        frozen = ({norm}(parts.to({dtype})).float() - bias) * norm_scale(parts) / norm_scale(resid)\n"
        "        with torch.enable_grad():\n"
        "            leaf = normed.detach().float()[None].requires_grad_(True)\n"
        f"            logits = {unembed}(leaf.to({dtype})).float()\n"
        + _decode_lines(model, "            ")
        + "            value = metric(logits, logits[0])\n"
        "            grad_n, grad_logits = torch.autograd.grad(value.sum(), [leaf, logits])\n"
        f"        logits0 = {unembed}(torch.zeros(1, resid.shape[-1], dtype={dtype})).float()\n"
        + _decode_lines(model, "        ").replace("logits", "logits0")
        + "        out = torch.cat([frozen @ grad_n[0], (bias * grad_n[0]).sum()[None],\n"
        "                         (logits0 * grad_logits).sum()[None], value.detach().float()]).save()\n"
        "    return out\n"
        "\n\nper_example = torch.stack([run(ex) for ex in examples])\n"
        "embed = per_example[:, 0]\n"
        "heads = per_example[:, 1 : 1 + L * H].reshape(-1, L, H)\n"
        "mlps = per_example[:, 1 + L * H : 1 + L * H + L]\n"
        "rest = per_example[:, 1 + L * H + L : -1].sum(1)  # biases: attention outputs, the norm, the unembedding\n"
        "metric_value = per_example[:, -1]\n"
        "result = {'heads': heads.mean(0).numpy(), 'mlps': mlps.mean(0).numpy(), 'embed': float(embed.mean()),\n"
        "          'rest': float(rest.mean()), 'metric': float(metric_value.mean())}\n",
    )
