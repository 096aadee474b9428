"""`to_code()` of the circuit results: standalone nnsight + torch code (no workbench op inside) that reproduces
`edge_attribution` (the [senders, receivers] score matrix), `faithfulness`, `faithfulness_curve` and `edge_patch`
over the same examples. Each snippet binds `result`.

The code has one function per method, in the style of ROME's `trace_with_patch`: `record` (one traced forward
that saves what the graph reads), `sender_outputs` / `receiver_grads` (the two sides of an edge score),
`attribute` (one example's EAP / EAP-IG scores) and `run_with_edges` (one forward with every receiver's input
rebuilt from chosen edges). Gradients are plain `torch.autograd.grad` on the tensors the trace saved, so the
code runs with the model's weights in this process (a remote model's code loads nothing to take them from).
"""

from __future__ import annotations

from typing import Any

from .codegen import _examples, _load, lit, plain, site_code
from .errors import WorkbenchError
from .model import Model

OPS = ("edge_attribution", "faithfulness", "faithfulness_curve", "edge_patch")


def code(
    op: str,
    model: Model,
    metric: Any,
    options: dict[str, Any],
    graph: Any = None,
    circuit: Any = None,
    dataset: Any = None,
) -> str:
    """Standalone code of one circuit op (`op` in OPS) on `dataset`; `graph` (attribution, curve) or `circuit`
    (faithfulness, edge_patch) is the op's own argument or result."""
    if op not in OPS:
        raise WorkbenchError(f"internal: no circuit code for op {op!r} (known: {', '.join(OPS)}).")
    if dataset is None:
        raise WorkbenchError(f"to_code() of {op} needs the dataset the result was computed on.")
    from .data.align import alignment

    o = plain(options)
    al = alignment(model, dataset, o.get("align") or "exact", corrupt=True)
    head = (
        _load(model)
        + metric.code(model)
        + _examples(model, metric, dataset, al, corrupt=True)
        + _graph(model)
    )
    if model.remote:
        head = (
            "# Remote model: this code takes gradients and rebuilds streams with torch in this process, so load the\n"
            "# model's weights here (TransformersModel(hf_model, tokenizer=...)) to run it.\n" + head
        )
    if op == "edge_attribution":
        return head + _record(model) + _attribute(model) + _attribution_main(o)
    body = head + _record(model) + _mixed(model) + _edge_helpers()
    if op == "faithfulness_curve":
        return body + _curve_main(o, graph)
    return body + _faithfulness_main(op, circuit)


# ------------------------------------------------------------------------------------------------- pieces
def _graph(model: Model) -> str:
    """The dimensions, the node names and which sender reaches which receiver."""
    scales = [model.residual_scale(layer) for layer in range(model.n_layers)]
    scale = (
        f"SCALE = [{scales[0]!r}] * L  # each block's residual multiplier\n"
        if len(set(scales)) == 1
        else f"SCALE = {lit(scales)}  # each block's residual multiplier\n"
    )
    seq = model._sequential()
    return (
        f"L, H, KV, D = {model.n_layers}, {model.n_heads}, {model.n_kv_heads}, {model.d_head}"
        "  # layers, query heads, key-value heads, head width\n"
        + scale
        + f"SEQUENTIAL = {seq!r}  # "
        + (
            "an MLP reads its own block's heads (its input is after attention)\n"
            if seq
            else "parallel blocks: an MLP reads the block's input, not its heads\n"
        )
        + "\n# The graph. Senders write to the residual stream: the embeddings, each head (its W_O slice of z) and\n"
        "# each MLP. Receivers read their own copy of the stream: each query head's q input, each key-value head's\n"
        "# k and v inputs (grouped-query attention: KV of them), each MLP's input and the logits (final norm's input).\n"
        'senders = ["embed"] + [n for l in range(L) for n in [f"L{l}H{h}" for h in range(H)] + [f"MLP{l}"]]\n'
        "receivers = [\n"
        '    n for l in range(L) for n in [f"L{l}H{h}.q" for h in range(H)] + [f"L{l}H{g}.k" for g in range(KV)]\n'
        '    + [f"L{l}H{g}.v" for g in range(KV)] + [f"MLP{l}"]\n'
        '] + ["logits"]\n'
        "S, R = len(senders), len(receivers)\n"
        "\n\ndef stage(name, reads):\n"
        '    """When a sender writes to (reads=False) or a receiver reads from (reads=True) the stream: a sender\n'
        "    feeds every receiver that reads at its stage or later (embed 0; block l's heads read at 2l, write at\n"
        '    2l + 1; its MLP reads at 2l + 1 if SEQUENTIAL else 2l, writes at 2l + 2; logits read at 2L)."""\n'
        '    if name in ("embed", "logits"):\n'
        '        return 0 if name == "embed" else 2 * L\n'
        '    if name.startswith("MLP"):\n'
        "        layer = int(name[3:])\n"
        "        return 2 * layer + (int(SEQUENTIAL) if reads else 2)\n"
        '    layer = int(name[1:].split("H")[0])\n'
        "    return 2 * layer + (0 if reads else 1)\n"
        "\n\n"
        "reach = torch.tensor([[stage(s, False) <= stage(r.split('.')[0], True) for r in receivers] for s in senders])\n"
        "first = {r: int(reach[:, j].sum()) for j, r in enumerate(receivers)}  # senders feeding r: a prefix\n"
    )


def _modules(model: Model) -> tuple[list[str], dict[str, int]]:
    """The q/k/v projection modules of block l as code (one when fused), and each kind's module index."""
    paths: list[str] = []
    which: dict[str, int] = {}
    for s in "qkv":
        m = site_code(model, s, "l").module
        if m not in paths:
            paths.append(m)
        which[s] = paths.index(m)
    return paths, which


def _block(model: Model, part: str) -> str:
    return f"model.{model.arch.layers}[l].{part}"


def _record(model: Model) -> str:
    paths, which = _modules(model)
    arch = model.arch
    head = site_code(model, "head", "l")
    embed = site_code(model, "embed", 0).module
    mlp = site_code(model, "mlp_out", "l").module
    shared = arch.attn_norm == arch.mlp_norm
    views = "".join(
        f'    if kind == "{s}":\n        return {site_code(model, s, "l").view("x")}\n' for s in "qkv"
    )
    x_mlp = (
        '            r["x_mlp"].append(r["x_attn"][-1])  # one norm feeds attention and the MLP\n'
        if shared
        else f'            r["x_mlp"].append({_block(model, arch.mlp_norm)}.input.save())\n'
    )
    return (
        "\n\ndef projections(l):\n"
        '    """Block l\'s q/k/v projection modules (one when q, k and v are fused)."""\n'
        f"    return [{', '.join(paths)}]\n"
        f'\n\nQKV = [("q", {which["q"]}, H), ("k", {which["k"]}, KV), ("v", {which["v"]}, KV)]'
        "  # receiver kind, its projection, its heads\n"
        "\n\ndef heads_view(kind, x):\n"
        '    """The [..., heads, D] view of a kind\'s columns in its projection output x [..., width]."""\n'
        + views
        + "\n\ndef norms(l):\n"
        '    """The norms in front of block l\'s attention and MLP (a receiver\'s input goes through them)."""\n'
        f"    return {_block(model, arch.attn_norm)}, {_block(model, arch.mlp_norm)}\n"
        "\n\ndef output_projection(l):\n"
        f"    return {head.module}\n"
        "\n\ndef record(ids, embeds=None):\n"
        '    """One forward of ids [1, T] (embeds replaces the token embeddings), saving what the graph reads per\n'
        "    block: the stream before attention (x_attn) and before the MLP (x_mlp), the q/k/v projection outputs,\n"
        "    the heads' z (the output projection's input), the MLP's own copy of its input and its output; then\n"
        '    the final norm\'s input and the last position\'s logits."""\n'
        '    r = {"x_attn": [], "x_mlp": [], "proj": [], "z": [], "mlp_in": [], "mlp_out": []}\n'
        "    with model.trace(ids):\n"
        "        if embeds is not None:\n"
        f"            {embed}.output = embeds\n"
        "        for l in range(L):\n"
        f'            r["x_attn"].append({_block(model, arch.attn_norm)}.input.save())\n'
        '            r["proj"].append([p.output.save() for p in projections(l)])\n'
        f'            r["z"].append({head.read}.save())\n'
        + x_mlp
        + f"            own = {mlp}.input.clone()  # the MLP's own copy: its gradient is the MLP's alone\n"
        f"            {mlp}.input = own\n"
        '            r["mlp_in"].append(own.save())\n'
        f'            r["mlp_out"].append({mlp}.output.save())\n'
        f'        r["x_final"] = model.{arch.final_norm}.input.save()\n'
        '        r["logits"] = model.output.logits[:, -1].save()\n'
        "    return r\n"
        "\n\ndef head_outputs(l, z):\n"
        '    """Each head\'s output in the stream, [H, T, d]: the output projection of its slice of z [T, H * D]\n'
        '    alone, minus the projection of zero (the bias, which every run shares), times the multiplier."""\n'
        "    parts = torch.zeros(H, *z.shape, dtype=z.dtype)\n"
        "    for h in range(H):\n"
        f"        {head.view('parts[h]')}[:, h] = {head.view('z')}[:, h]\n"
        "    o = output_projection(l)\n"
        "    return (o(parts) - o(torch.zeros_like(z))) * SCALE[l]\n"
        "\n\ndef sender_outputs(r):\n"
        '    """Every sender\'s output in the stream of a recorded run, [S, T, d], in sender order."""\n'
        "    with torch.no_grad():\n"
        '        out = [r["x_attn"][0][0][None]]  # the embeddings: block 0\'s input\n'
        "        for l in range(L):\n"
        '            out += [head_outputs(l, r["z"][l][0]), (r["mlp_out"][l][0] * SCALE[l])[None]]\n'
        "        return torch.cat(out)\n"
    )


def _attribute(model: Model) -> str:
    embed = site_code(model, "embed", 0).module
    return (
        "\n\ndef back(fn, x, grads):\n"
        '    """Gradients grads [n, T, ...] at fn\'s output taken back to its input at the point x [T, d]: [n, T, d]\n'
        '    (one vector-Jacobian product per receiver)."""\n'
        "    xs = x.detach().expand(len(grads), *x.shape).clone().requires_grad_(True)\n"
        "    with torch.enable_grad():\n"
        "        (g,) = torch.autograd.grad(fn(xs), xs, grads)\n"
        "    return g\n"
        "\n\ndef receiver_grads(r, value):\n"
        '    """d value / d each receiver\'s input in the stream, [R, T, d]: the gradient at a head\'s columns of its\n'
        "    projection output taken back through the projection and the norm (its own copy of the stream), at an\n"
        '    MLP\'s input back through its norm, and at the final norm\'s input for the logits."""\n'
        '    targets = [p for ps in r["proj"] for p in ps] + r["mlp_in"] + [r["x_final"]]\n'
        "    got = list(torch.autograd.grad(value, targets, allow_unused=True))\n"
        "    got = [torch.zeros_like(t) if g is None else g for g, t in zip(got, targets)]\n"
        '    n_proj = len(r["proj"][0])\n'
        "    out = []\n"
        "    for l in range(L):\n"
        "        attn_norm, mlp_norm = norms(l)\n"
        "        g_proj = got[l * n_proj : (l + 1) * n_proj]\n"
        "        for kind, i, n in QKV:\n"
        "            g = g_proj[i][0]  # [T, width]\n"
        "            masked = torch.zeros(n, *g.shape, dtype=g.dtype)  # head h's columns of the gradient only\n"
        "            for h in range(n):\n"
        "                heads_view(kind, masked[h])[:, h] = heads_view(kind, g)[:, h]\n"
        "            proj = projections(l)[i]\n"
        '            out.append(back(lambda u: proj(attn_norm(u)), r["x_attn"][l][0], masked))\n'
        "        g_mlp = got[L * n_proj + l][0]\n"
        '        out.append(back(mlp_norm, r["x_mlp"][l][0], g_mlp[None]))\n'
        "    out.append(got[-1][0][None])\n"
        "    return torch.cat(out)\n"
        "\n\ndef attribute(ex, steps=0):\n"
        '    """One example\'s edge scores [S, R, T]: (sender\'s clean - corrupt output) . d metric / d receiver input,\n'
        "    the gradient at the corrupt run (steps=0, EAP) or averaged over runs whose token embeddings are\n"
        '    corrupt + k/steps (clean - corrupt), k = 1..steps (EAP-IG)."""\n'
        '    clean, corrupt = torch.tensor([ex["clean"]]), torch.tensor([ex["corrupt"]])\n'
        "    with torch.no_grad():\n"
        "        rc, rk = record(clean), record(corrupt)\n"
        '        clean_logits = rc["logits"][0]\n'
        f"        e_clean, e_corrupt = {embed}(clean), {embed}(corrupt)\n"
        "    grads = 0\n"
        "    for k in range(1, steps + 1) if steps else [None]:\n"
        "        if k is None:\n"
        "            r = record(corrupt)\n"
        "        else:\n"
        "            e = e_clean if k == steps else e_corrupt + (k / steps) * (e_clean - e_corrupt)\n"
        "            r = record(corrupt, embeds=e)\n"
        '        value = metric(r["logits"], clean_logits)[0]\n'
        "        grads = grads + receiver_grads(r, value)\n"
        "    grads = grads / max(steps, 1)\n"
        "    diff = sender_outputs(rc) - sender_outputs(rk)  # [S, T, d]\n"
        '    scores = torch.einsum("std,rtd->srt", diff, grads)\n'
        '    base = (float(metric(clean_logits[None], clean_logits)[0]), float(metric(rk["logits"], clean_logits)[0]))\n'
        "    return scores, base\n"
    )


def _attribution_main(o: dict[str, Any]) -> str:
    steps = int(o.get("steps") or 0) if o.get("method") == "eap-ig" else 0
    by_pos = bool(o.get("by_position"))
    reduce = (
        "    # one score per column: the sum over the column's positions\n"
        '    per_example.append(torch.stack([scores[..., col].sum(-1) for col in ex["columns"]], dim=-1))\n'
        if by_pos
        else "    per_example.append(scores.sum(-1))  # summed over positions\n"
    )
    mask = "reach[..., None].expand_as(result)" if by_pos else "reach"
    return (
        f"\n\nsteps = {steps}  # {o.get('method')}"
        + (" (integration steps)\n" if steps else ": the gradient at the corrupt run\n")
        + "per_example, clean_metric, corrupt_metric = [], [], []\n"
        "for ex in examples:\n"
        "    target, foil = ex.get('target'), ex.get('foil')  # this example's answer tokens (the metric reads them)\n"
        "    scores, (c, k) = attribute(ex, steps)\n" + reduce + "    clean_metric.append(c)\n"
        "    corrupt_metric.append(k)\n"
        "result = torch.stack(per_example).mean(0)  # the mean over examples: Graph.matrix\n"
        f"result[~{mask}] = float('nan')  # no edge: the sender does not feed that receiver\n"
        "result = result.numpy()\n"
    )


def _mixed(model: Model) -> str:
    arch = model.arch
    head = site_code(model, "head", "l")
    mlp = site_code(model, "mlp_out", "l").module
    return (
        "\n\ndef rebuilt(ref_stream, cur, keep, lo, hi):\n"
        '    """Inputs of receivers lo..hi [n, T, d]: the reference stream plus, per kept edge (keep [S, R, T]), the\n'
        '    sender\'s output in this run minus its reference output (cur [S_so_far, T, d])."""\n'
        "    n_s = first[receivers[lo]]\n"
        "    k = keep[:n_s, lo:hi].to(ref_stream.dtype)\n"
        '    return ref_stream[None] + torch.einsum("srt,std->rtd", k, cur[:n_s])\n'
        "\n\ndef run_with_edges(base, reference, keep, clean_logits):\n"
        "    \"\"\"The metric of base's run in which every receiver's input is rebuilt as the reference run's stream plus\n"
        "    the kept edges' (sender's output in this run - its reference output); keep [S, R, T] bool.\n"
        "    Faithfulness: base clean, reference corrupt, keep = the circuit. Exact edge patching: base corrupt,\n"
        '    reference clean, keep = every edge but the patched ones."""\n'
        "    with torch.no_grad():\n"
        "        ref = record(reference)\n"
        "        ref_out = sender_outputs(ref)\n"
        "        with model.trace(base):\n"
        "            cur = None  # this run's sender outputs minus the reference's, in sender order\n"
        "            for l in range(L):\n"
        "                attn_norm, mlp_norm = norms(l)\n"
        "                if l == 0:\n"
        f"                    cur = {_block(model, arch.attn_norm)}.input[0][None] - ref_out[:1]\n"
        "                for i, p in enumerate(projections(l)):\n"
        "                    out = p.output.clone()\n"
        "                    for kind, j, n in QKV:\n"
        "                        if j != i:\n"
        "                            continue\n"
        '                        lo = receivers.index(f"L{l}H0.{kind}")\n'
        '                        y = p(attn_norm(rebuilt(ref["x_attn"][l][0], cur, keep, lo, lo + n)))  # [n, T, width]\n'
        "                        for h in range(n):\n"
        "                            heads_view(kind, out[0])[:, h] = heads_view(kind, y[h])[:, h]\n"
        "                    p.output = out\n"
        f"                z = {head.read}[0]\n"
        "                s = 1 + l * (H + 1)\n"
        "                cur = torch.cat([cur, head_outputs(l, z) - ref_out[s : s + H]])\n"
        '                r = receivers.index(f"MLP{l}")\n'
        f'                {mlp}.input = mlp_norm(rebuilt(ref["x_mlp"][l][0], cur, keep, r, r + 1))\n'
        f"                mlp_out = {mlp}.output[0] * SCALE[l]\n"
        "                cur = torch.cat([cur, mlp_out[None] - ref_out[s + H : s + H + 1]])\n"
        f'            model.{arch.final_norm}.input = rebuilt(ref["x_final"][0], cur, keep, R - 1, R)\n'
        "            value = metric(model.output.logits[:, -1], clean_logits).save()\n"
        "    return float(value[0])\n"
    )


def _edge_helpers() -> str:
    return (
        "\n\ndef edge_mask(ex, edges):\n"
        '    """[S, R, T] bool: where each edge \'sender -> receiver\' (\' @ column\' for one column) is in the circuit."""\n'
        '    keep = torch.zeros(S, R, len(ex["clean"]), dtype=torch.bool)\n'
        "    for e in edges:\n"
        '        s, _, rest = e.partition(" -> ")\n'
        '        r, _, col = rest.partition(" @ ")\n'
        "        if col:  # a column label, or a column index (negative from the end)\n"
        "            c = columns.index(col) if col in columns else int(col) % len(columns)\n"
        '            keep[senders.index(s), receivers.index(r), ex["columns"][c]] = True\n'
        "        else:\n"
        "            keep[senders.index(s), receivers.index(r)] = True\n"
        "    return keep\n"
        "\n\ndef baselines(ex):\n"
        '    """The example\'s clean logits and its clean and corrupt metrics."""\n'
        "    with torch.no_grad():\n"
        '        rc, rk = record(torch.tensor([ex["clean"]])), record(torch.tensor([ex["corrupt"]]))\n'
        '    clean_logits = rc["logits"][0]\n'
        '    m = lambda r: float(metric(r["logits"], clean_logits)[0])\n'
        "    return clean_logits, m(rc), m(rk)\n"
        "\n\ndef normalise(raw, clean, corrupt):\n"
        '    """1 = the clean metric, 0 = the corrupt one (means over the examples)."""\n'
        "    c, k = sum(clean) / len(clean), sum(corrupt) / len(corrupt)\n"
        "    return (raw - k) / (c - k) if c != k else float('nan')\n"
    )


def _edge_list(edges: Any) -> str:
    items = [str(e) for e in edges]
    if not items:
        return "[]"
    return "[\n" + "".join(f"    {e!r},\n" for e in items) + "]"


def _faithfulness_main(op: str, circuit: Any) -> str:
    patch = op == "edge_patch"
    run = (
        "    value = run_with_edges(corrupt, clean, ~edge_mask(ex, edges) & reach[..., None], clean_logits)\n"
        if patch
        else "    value = run_with_edges(clean, corrupt, edge_mask(ex, edges), clean_logits)\n"
    )
    what = (
        "the edges patched clean into the corrupt run" if patch else "the circuit: every other edge corrupted"
    )
    return (
        f"\n\nedges = {_edge_list(circuit.edges)}  # {what}\n"
        "per_example, clean_metric, corrupt_metric = [], [], []\n"
        "for ex in examples:\n"
        "    target, foil = ex.get('target'), ex.get('foil')  # this example's answer tokens (the metric reads them)\n"
        "    clean_logits, c, k = baselines(ex)\n"
        '    clean, corrupt = torch.tensor([ex["clean"]]), torch.tensor([ex["corrupt"]])\n'
        + run
        + "    per_example.append(value)\n"
        "    clean_metric.append(c)\n"
        "    corrupt_metric.append(k)\n"
        "raw = sum(per_example) / len(per_example)  # .raw\n"
        f"result = normalise(raw, clean_metric, corrupt_metric)  # float({'wb.edge_patch' if patch else 'wb.faithfulness'}(...))\n"
    )


def _curve_main(o: dict[str, Any], graph: Any) -> str:
    sizes = [int(s) for s in o["sizes"]]
    ranked = graph.top(max(sizes)).edges if sizes else ()
    return (
        f"\n\nranked = {_edge_list(ranked)}  # the graph's edges by |score|, largest first\n"
        f"sizes = {lit(sizes)}\n"
        "raw = torch.zeros(len(sizes), len(examples))\n"
        "clean_metric, corrupt_metric = [], []\n"
        "for i, ex in enumerate(examples):\n"
        "    target, foil = ex.get('target'), ex.get('foil')  # this example's answer tokens (the metric reads them)\n"
        "    clean_logits, c, k = baselines(ex)\n"
        "    clean_metric.append(c)\n"
        "    corrupt_metric.append(k)\n"
        '    clean, corrupt = torch.tensor([ex["clean"]]), torch.tensor([ex["corrupt"]])\n'
        "    for j, n in enumerate(sizes):  # the top-n circuit: every other edge corrupted\n"
        "        raw[j, i] = run_with_edges(clean, corrupt, edge_mask(ex, ranked[:n]), clean_logits)\n"
        "raw = raw.mean(1)  # FaithfulnessCurve.raw\n"
        "result = torch.tensor([normalise(float(v), clean_metric, corrupt_metric) for v in raw]).numpy()  # .values\n"
    )
