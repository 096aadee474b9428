"""TransformerLens side of the benchmark: runs in its own venv (.bench-venv), driven over stdin/stdout.

One JSON request per line in, one JSON answer per line out. Timing happens here, inside this process, so
the runner's own work never counts against TransformerLens. Requests:
  {"cmd": "setup", "folder": ..., "threads": 1}
  {"cmd": "op", "op": ..., "clean": [ids], "corrupt": [ids], "target": id, "foil": id, "cells": [[...]]|null}
  {"cmd": "op", "kind": "dataset", "clean": [[ids], ...], "corrupt": [[ids], ...], "targets": [id, ...],
   "foils": [id, ...], "cells": [[layer, pos], ...]|null}  (issue 13: a batch of pairs, batch-mean metric)
Answers: {"ok": true, "time": s, "peak": bytes, "values": [...]} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.memory import peak_since, rss_reset  # noqa: E402

MODEL = None


def setup(req: dict) -> dict:
    global MODEL
    import warnings

    warnings.filterwarnings("ignore")
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(int(req.get("threads", 1)))
    MODEL = TransformerBridge.boot_transformers(req["folder"], device="cpu", dtype=torch.float32)
    MODEL.eval()
    if req.get("freeze"):  # no weight gradients in attribution (the 1.7B group: 6.8 GB more otherwise)
        MODEL.requires_grad_(False)
    from importlib.metadata import version

    return {
        "ok": True,
        "version": version("transformer-lens"),
        "transformers": version("transformers"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _metric(target: int, foil: int):
    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[0, -1, target] - logits[0, -1, foil]).float()

    return metric


_SWEEPS = {
    "resid_pre": ("get_act_patch_resid_pre", ("layer", "pos")),
    "attn_out": ("get_act_patch_attn_out", ("layer", "pos")),
    "mlp_out": ("get_act_patch_mlp_out", ("layer", "pos")),
    "head": ("get_act_patch_attn_head_out_all_pos", ("layer", "head")),
    "head_by_pos": ("get_act_patch_attn_head_out_by_pos", ("layer", "pos", "head")),
    # hook_q / hook_k / hook_v: the projections split into heads, before rotary (hook_rot_q/k come after);
    # on a grouped-query model the bridge keeps k and v at n_key_value_heads (no ungrouping), so k/v cells
    # are key-value heads, as in Workbench
    "q": ("get_act_patch_attn_head_q_all_pos", ("layer", "head")),
    "k": ("get_act_patch_attn_head_k_all_pos", ("layer", "head")),
    "v": ("get_act_patch_attn_head_v_all_pos", ("layer", "head")),
}


def sweep(req: dict) -> list[float]:
    """TransformerLens's own patching function (clean cache included: a sweep needs it)."""
    import pandas as pd
    from transformer_lens import patching

    model = MODEL
    clean = torch.tensor([req["clean"]])
    corrupt = torch.tensor([req["corrupt"]])
    fn_name, axes = _SWEEPS[req["op"]]
    fn = getattr(patching, fn_name)
    metric = _metric(req["target"], req["foil"])
    with torch.no_grad():
        t0 = time.perf_counter()
        _, clean_cache = model.run_with_cache(clean)
        req["_setup"] = time.perf_counter() - t0  # the clean run, paid once per sweep
        if req.get("cells") is None:
            out = fn(model, corrupt, clean_cache, metric)
            return out.flatten().tolist()
        index_df = pd.DataFrame(req["cells"], columns=list(axes))
        out = fn(model, corrupt, clean_cache, metric, index_axis_names=None, index_df=index_df)
        return out.flatten().tolist()


def single(req: dict) -> list[float]:
    """One patched forward with a hook (the clean cache is prepared outside the timed region)."""
    return [float(req["_run"]())]


def prepare_single(req: dict):
    from functools import partial

    from transformer_lens import utilities as utils

    model = MODEL
    clean = torch.tensor([req["clean"]])
    corrupt = torch.tensor([req["corrupt"]])
    layer, pos = req["cell"]
    name = utils.get_act_name("resid_pre", layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean, names_filter=lambda n: n == name)
    act = cache[name]
    metric = _metric(req["target"], req["foil"])

    def hook(x, hook, pos):
        x[:, pos] = act[:, pos]
        return x

    def run():
        with torch.no_grad():
            logits = model.run_with_hooks(corrupt, fwd_hooks=[(name, partial(hook, pos=pos))])
        return metric(logits)

    return run


def attribution(req: dict) -> list[float]:
    """The standard TransformerLens recipe: forward+backward hooks on the corrupt run, clean cache."""
    from functools import partial

    model = MODEL
    clean = torch.tensor([req["clean"]])
    corrupt = torch.tensor([req["corrupt"]])
    metric = _metric(req["target"], req["foil"])
    names = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")

    L = model.cfg.n_layers
    wanted = [f"blocks.{layer}.{short}" for short in names for layer in range(L)]

    acts: dict = {}
    grads: dict = {}
    model.reset_hooks()

    def fwd(x, hook, key):
        acts[key] = x.detach()

    def bwd(x, hook, key):
        grads[key] = x.detach()

    for name in wanted:  # hook.name is the canonical name; key by the name asked for
        model.add_hook(name, partial(fwd, key=name), "fwd")
        model.add_hook(name, partial(bwd, key=name), "bwd")
    if not any(p.requires_grad for p in model.parameters()):  # frozen weights: the graph starts here
        model.add_hook("hook_embed", lambda x, hook: x.requires_grad_(True), "fwd")
    try:
        value = metric(model(corrupt))
        value.backward()
    finally:
        model.reset_hooks()
        model.zero_grad(set_to_none=True)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=wanted)
    out = []
    for short in names:  # [3, L, T] in the runner's order
        for layer in range(L):
            name = f"blocks.{layer}.{short}"
            out.append(((clean_cache[name] - acts[name]) * grads[name]).sum(-1)[0])
    return torch.stack(out).flatten().tolist()


def lens(req: dict) -> list[float]:
    """Logit lens of every layer's resid_post, top-5, entropy and KL to the final distribution."""
    model = MODEL
    ids = torch.tensor([req["corrupt"]])
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
        resid = torch.stack([cache[f"blocks.{i}.hook_resid_post"][0] for i in range(model.cfg.n_layers)])
        logits = model.unembed(model.ln_final(resid)).float()  # [L, T, V]
        logp = torch.log_softmax(logits, dim=-1)
        top = logp.topk(5, dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        final = logp[-1]
        kl = (final.exp() * (final - logp)).sum(-1)
    del entropy, kl
    return top.values.exp().flatten().tolist()


def path(req: dict) -> list[float]:
    """Path patching to logits (Wang et al. 2022) as a per-sender plain-hook loop: one forward of the corrupt
    prompt per sender head with that head's hook_z set to its clean value and every other head's hook_z
    frozen at its corrupt value (MLPs and norms recomputed). With receivers = logits the second step of
    path patching (patch the final residual into the corrupt run) reads the same logits, so one forward
    per sender is the whole method. TransformerLens 4.3 has no such function: its path patching,
    `get_act_patch_direct_path`, patches one source head's write into later heads' q/k/v inputs."""
    from functools import partial

    model = MODEL
    clean = torch.tensor([req["clean"]])
    corrupt = torch.tensor([req["corrupt"]])
    metric = _metric(req["target"], req["foil"])
    L = model.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(L)]
    with torch.no_grad():
        t0 = time.perf_counter()
        _, clean_cache = model.run_with_cache(clean, names_filter=names)
        _, corrupt_cache = model.run_with_cache(corrupt, names_filter=names)
        req["_setup"] = time.perf_counter() - t0  # the two cached runs, paid once per sweep
        frozen = [corrupt_cache[n] for n in names]
        sender = [clean_cache[n] for n in names]

        def hook(z, hook, layer, send):
            z = frozen[layer].clone()
            if send is not None:
                z[:, :, send] = sender[layer][:, :, send]
            return z

        out = []
        for s_layer, s_head in req["cells"]:
            hooks = [
                (names[layer], partial(hook, layer=layer, send=s_head if layer == s_layer else None))
                for layer in range(L)
            ]
            out.append(float(metric(model.run_with_hooks(corrupt, fwd_hooks=hooks))))
    return out


def dataset(req: dict) -> list[float]:
    """Issue 13: TransformerLens's batched `get_act_patch_resid_pre` over a batch of equal-length pairs with a
    batch-mean logit difference (each example's own target and foil), the clean cache of the batch
    included; `cells` (layer, pos) samples the grid."""
    import pandas as pd
    from transformer_lens import patching

    model = MODEL
    clean = torch.tensor(req["clean"])  # [N, T]
    corrupt = torch.tensor(req["corrupt"])
    rows = torch.arange(clean.shape[0])
    target, foil = torch.tensor(req["targets"]), torch.tensor(req["foils"])

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1].float()
        return (last[rows, target] - last[rows, foil]).mean()

    with torch.no_grad():
        t0, c0 = time.perf_counter(), time.process_time()
        _, clean_cache = model.run_with_cache(clean)
        req["_setup"] = time.perf_counter() - t0
        req["_setup_cpu"] = time.process_time() - c0
        if req.get("cells") is None:
            return patching.get_act_patch_resid_pre(model, corrupt, clean_cache, metric).flatten().tolist()
        index_df = pd.DataFrame(req["cells"], columns=["layer", "pos"])
        out = patching.get_act_patch_resid_pre(
            model, corrupt, clean_cache, metric, index_axis_names=None, index_df=index_df
        )
        return out.flatten().tolist()


OPS = {"sweep": sweep, "attribution": attribution, "lens": lens, "path": path, "dataset": dataset}


def main() -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints (tqdm, warnings) must not corrupt the protocol
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            if req["cmd"] == "setup":
                ans = setup(req)
            elif req["cmd"] == "quit":
                break
            else:
                kind = req["kind"]
                if kind == "single":
                    req["_run"] = prepare_single(req)
                    req["_run"]()  # warm, as a click after the first is
                    fn = single
                else:
                    fn = OPS[kind]
                base = rss_reset()
                t0, c0 = time.perf_counter(), time.process_time()
                values = fn(req)
                dt = time.perf_counter() - t0
                cpu = time.process_time() - c0
                peak = peak_since(base)
                ans = {
                    "ok": True,
                    "time": dt,
                    "setup": req.get("_setup", 0.0),
                    "cpu": cpu,  # CPU seconds of this process (less sensitive to a busy machine)
                    "setup_cpu": req.get("_setup_cpu", 0.0),
                    "peak": peak,
                    "values": values,
                }
        except Exception as exc:  # reported to the runner, which prints it in the table
            ans = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        out.write(json.dumps(ans) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
