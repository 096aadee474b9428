"""`to_code()` of the function-vector results: standalone nnsight code (plain loops, one forward per prompt)
that reproduces `head_effects`, `function_vector` and `evaluate_vector`. Each snippet binds `result`."""

from __future__ import annotations

from typing import Any

import torch

from .codegen import _decode_lines, _load, _remote, lit, site_code
from .model import Model


def _dtype(model: Model) -> str:
    """The model's parameter dtype as code ('torch.float32')."""
    return "torch." + str(getattr(model.hf, "dtype", torch.float32)).replace("torch.", "")


def _dims(model: Model) -> str:
    return f"L, H, d = {model.n_layers}, {model.n_heads}, {model.d_head}  # layers, heads, head width\n"


def _means_lines(model: Model) -> str:
    """`last_heads(ids)`: every head's output at the last position, and `means` over the prompts `clean`."""
    sc = site_code(model, "head", "l")
    return (
        "\n\ndef last_heads(ids):\n"
        f'    """Every head\'s output at the last position, [L, H, d]: its slice of {sc.doc.split(": ")[-1]}."""\n'
        "    rows = []\n"
        "    with torch.no_grad(), model.trace(ids):\n"
        "        for l in range(L):\n"
        f"            x = {sc.read}\n"
        f"            rows.append({sc.view('x')}[0, -1].float().clone())\n"
        "        z = torch.stack(rows).save()\n"
        "    return z\n"
        "\n\n"
        "tok = lambda p: model.tokenizer(p, return_tensors='pt').input_ids\n"
        "means = sum(last_heads(tok(p)) for p in clean) / len(clean)  # each head's mean over the n-shot prompts\n"
    )


def head_effects_code(model: Model, o: dict[str, Any], ds: Any) -> str:
    """Todd et al.'s causal indirect effect: the means over the clean prompts, then one forward per shuffled
    prompt with 1 + L * H rows (row 0 unedited, row 1 + l * H + h with head (l, h) patched at the last position)."""
    sc = site_code(model, "head", "l")
    answers = [model.token_id(t) for t in ds.target]
    return _remote(
        model,
        _load(model)
        + f"# {o.get('task')!r}: {len(ds)} prompts, {o.get('n_shots')}-shot (seed {o.get('seed')})\n"
        + f"clean = {lit(list(ds.clean))}\n"
        + f"shuffled = {lit(list(ds.corrupt))}  # the same prompts, the demonstrations' labels permuted\n"
        + f"answers = {lit(answers)}  # each query's answer token\n"
        + _dims(model)
        + _means_lines(model)
        + "per_example = torch.zeros(len(shuffled), L, H)\n"
        "clean_p, shuffled_p = torch.zeros(len(shuffled)), torch.zeros(len(shuffled))\n"
        "for i, (prompt, t) in enumerate(zip(shuffled, answers)):\n"
        "    ids = tok(prompt)\n"
        "    batch = ids.repeat(1 + L * H, 1)  # row 0 unedited; row 1 + l * H + h: head (l, h) patched\n"
        "    with torch.no_grad(), model.trace(batch):\n"
        "        for l in range(L):\n"
        f"            x = {sc.read}\n"
        f"            heads = {sc.view('x')}\n"
        "            for h in range(H):\n"
        "                heads[1 + l * H + h, -1, h] = means[l, h].to(heads.dtype)\n"
        "        p = torch.softmax(model.output.logits[:, -1].float(), dim=-1)[:, t].save()\n"
        "    per_example[i] = (p[1:] - p[0]).reshape(L, H)  # the rise of p(answer) over the shuffled prompt's\n"
        "    shuffled_p[i] = p[0]\n"
        "    with torch.no_grad(), model.trace(tok(clean[i])):\n"
        "        q = torch.softmax(model.output.logits[:, -1].float(), dim=-1)[0, t].save()\n"
        "    clean_p[i] = q\n"
        "result = per_example.mean(0).numpy()  # [L, H]: HeadEffects.values\n",
    )


def _project_lines(model: Model, indent: str) -> str:
    """Trace-body lines: each chosen head's mean through its slice of the output projection, summed."""
    sc = site_code(model, "head", "l")
    return (
        f"{indent}parts = []\n"
        f"{indent}for l, h in heads:  # the output projection applied ad hoc to head h's mean in its slot\n"
        f"{indent}    x = torch.zeros(2, H * d, dtype={_dtype(model)})  # row 1 stays zero: o_proj(0) is the bias\n"
        f"{indent}    x[0, h * d : (h + 1) * d] = means[l, h]\n"
        f"{indent}    y = {sc.module}(x).float()\n"
        f"{indent}    parts.append(y[0] - y[1])\n"
        f"{indent}vector = torch.stack(parts).sum(0).save()\n"
    )


def _decode_vector(model: Model, indent: str) -> str:
    norm, unembed = "model." + model.arch.final_norm, "model." + model.arch.unembed
    return (
        f"{indent}logits = {unembed}({norm}(vector[None].to({_dtype(model)}))).float()\n"
        + _decode_lines(model, indent)
        + f"{indent}top = torch.softmax(logits[0], dim=-1).topk(10)  # what the vector says: fv.decode()\n"
        f"{indent}top_ids = top.indices.save()\n"
    )


def function_vector_code(model: Model, o: dict[str, Any], task: Any) -> str:
    """The vector from its heads: each head's mean output over the n-shot prompts, projected and summed."""
    ds = task.dataset(o["n_shots"], o["n_prompts"], seed=o["seed"])
    heads = [tuple(h) for h in o["heads"]]
    how = (
        "the heads of largest mean indirect effect (HeadEffects.to_code() computes those)"
        if o.get("selected")
        else "the heads given"
    )
    return _remote(
        model,
        _load(model)
        + f"# {o.get('task')!r}: {len(ds)} prompts, {o.get('n_shots')}-shot (seed {o.get('seed')})\n"
        + f"clean = {lit(list(ds.clean))}\n"
        + f"heads = {lit(heads)}  # (layer, head): {how}\n"
        + _dims(model)
        + _means_lines(model)
        + "with torch.no_grad(), model.trace(tok(clean[0])):  # any prompt: it only hosts the projections\n"
        + _project_lines(model, "    ")
        + _decode_vector(model, "    ")
        + "result = vector.numpy()  # [d_model]: FunctionVector.vector\n",
    )


def evaluate_vector_code(model: Model, o: dict[str, Any], ds: Any, vector: torch.Tensor) -> str:
    """Zero-shot accuracy with the vector added after each layer's block at the last position (one forward
    per prompt: row 0 unedited, row 1 + k with the vector added at layers[k])."""
    sc = site_code(model, "resid_post", "l")
    answers = [model.token_id(t) for t in ds.target]
    if vector.numel() > 50_000:
        vec = "vector = globals()['vector']  # the [d_model] vector (too large to print): set it first\n"
    else:
        vec = f"vector = torch.tensor({lit(vector)})  # scale {o.get('scale')} x the function vector\n"
    return _remote(
        model,
        _load(model)
        + f"prompts = {lit(list(ds.clean))}  # {o.get('task')!r}: zero-shot queries\n"
        + f"answers = {lit(answers)}\n"
        + vec
        + f"layers = {lit(o['layers'])}\n"
        "correct = torch.zeros(len(prompts), 1 + len(layers))\n"
        "for i, (prompt, t) in enumerate(zip(prompts, answers)):\n"
        "    ids = model.tokenizer(prompt, return_tensors='pt').input_ids\n"
        "    batch = ids.repeat(1 + len(layers), 1)\n"
        "    with torch.no_grad(), model.trace(batch):\n"
        "        for k, l in enumerate(layers):  # the hidden state after block l (resid_post), last position\n"
        f"            h = {sc.read}\n"
        "            h[1 + k, -1] += vector.to(h.dtype)\n"
        "        top = model.output.logits[:, -1].argmax(dim=-1).save()\n"
        "    correct[i] = (top == t).float()\n"
        "baseline = float(correct[:, 0].mean())  # VectorEvaluation.baseline\n"
        "result = correct[:, 1:].mean(0).numpy()  # VectorEvaluation.accuracy, one per layer\n",
    )
