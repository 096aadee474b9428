"""Issue 17 ("Speed"): edge attribution (EAP, EAP-IG) and faithfulness in forward-pass equivalents, and the EAP-IG
reference algorithm as a plain hook loop on the same model.

    python benchmarks/circuits.py [--threads 1] [--n 32] [--steps 5] [--size 500] [--reps 1]
    make bench-circuits CIRCUITS_ARGS="--reps 2"

- Data: `wb.datasets.ioi(n)` (15-token prompts, ABC corruption), metric `wb.logit_diff()` (each example's IO
  name minus its subject), on the embedded SmolLM2-135M (30 layers x 9 heads, 3 key-value heads): 70,651 edges.
- The unit: one plain batched forward of the n clean prompts, `model.hf(ids [n, 15], logits_to_keep=1)`, no
  grad, no hooks (measured before every contender; the median of all of them). Forward-pass equivalents per
  example = a contender's time / the unit (the unit already covers all n examples).
- Workbench: `wb.edge_attribution(method="eap")`, `method="eap-ig", steps=5`, and `wb.faithfulness` of the top
  `--size` edges of the EAP-IG graph. Targets (issue 17): EAP <= 4, EAP-IG(5) <= 8, faithfulness <= 2.
- Peer: the EAP-IG reference algorithm as researchers write it (hannamw/EAP-IG, the MIB baseline), with plain
  PyTorch hooks on `model.hf` and no Workbench code: a clean and a corrupt forward recording every sender's
  output in the residual stream (embeddings, each head's z_h W_O,h, each MLP's output) into an activation
  difference [B, T, S, d]; then per step a forward from interpolated input embeddings with the residual stream
  split into per-receiver copies (TransformerLens's `use_split_qkv_input`: each q / k / v head and each MLP reads
  its own copy through its own norm, and the logits read a copy of the final norm's input) and a backward, each
  copy's gradient hook adding einsum(activation difference, gradient) to its receiver's column. Same convention as
  Workbench (clean - corrupt, alphas k/steps, k = 1..steps; hannamw's code uses k = 0..steps-1). The peer also
  runs EAP (one gradient run at the corrupt embeddings). Every edge's score is compared with Workbench's: the max
  abs difference must be below 1e-4 (the exit code says).
- Memory: peak RSS above the start of each op (Linux VmHWM after clear_refs, benchmarks/memory.py).
- Writes benchmarks/results_circuits.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from memory import peak_since, rss_reset  # noqa: E402

TARGETS = {"eap": 4.0, "eap-ig": 8.0, "faithfulness": 2.0}


def timed(fn):
    """(wall s, CPU s, peak RSS above the start in bytes, output)."""
    base = rss_reset()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, peak_since(base), out


# ------------------------------------------------------------------------------------------- the peer
class Reference:
    """EAP / EAP-IG edge scores of a Llama-family HF model with plain hooks (hannamw/EAP-IG's algorithm)."""

    def __init__(self, hf: torch.nn.Module) -> None:
        self.hf = hf
        cfg = hf.config
        self.L, self.H, self.G = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
        self.d = cfg.hidden_size
        self.dh = getattr(cfg, "head_dim", None) or self.d // self.H
        self.layers = hf.model.layers
        self.S = 1 + self.L * (self.H + 1)  # embed, then per layer H heads and the MLP
        self.R_l = self.H + 2 * self.G + 1  # per layer: q heads, k heads, v heads, the MLP
        self.R = self.L * self.R_l + 1  # and the logits

    def names(self) -> tuple[list[str], list[str]]:
        senders = ["embed"] + [
            n for li in range(self.L) for n in [f"L{li}H{h}" for h in range(self.H)] + [f"MLP{li}"]
        ]
        receivers = []
        for li in range(self.L):
            receivers += [f"L{li}H{h}.q" for h in range(self.H)]
            receivers += [f"L{li}H{g}.k" for g in range(self.G)] + [f"L{li}H{g}.v" for g in range(self.G)]
            receivers.append(f"MLP{li}")
        return senders, receivers + ["logits"]

    # senders ------------------------------------------------------------------------------------
    def sender_outputs(self, embeds: torch.Tensor) -> torch.Tensor:
        """[B, T, S, d]: every sender's output in the residual stream, one no-grad forward from `embeds`."""
        B, T, _ = embeds.shape
        out = torch.zeros(B, T, self.S, self.d)
        out[:, :, 0] = embeds
        handles = []

        def z_hook(li):
            w_o = self.layers[li].self_attn.o_proj.weight  # [d, H * dh]

            def hook(_m, args):
                z = args[0].view(B, T, self.H, self.dh)
                heads = torch.einsum("bthk,dhk->bthd", z, w_o.view(self.d, self.H, self.dh))
                out[:, :, 1 + li * (self.H + 1) : 1 + li * (self.H + 1) + self.H] = heads

            return hook

        def mlp_hook(li):
            def hook(_m, _args, y):
                out[:, :, 1 + li * (self.H + 1) + self.H] = y

            return hook

        for li, layer in enumerate(self.layers):
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(z_hook(li)))
            handles.append(layer.mlp.register_forward_hook(mlp_hook(li)))
        try:
            with torch.no_grad():
                self.hf(inputs_embeds=embeds, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        return out

    # receivers ----------------------------------------------------------------------------------
    def gradient_run(
        self, embeds: torch.Tensor, diff: torch.Tensor, target, foil, scores: torch.Tensor
    ) -> None:
        """One forward from `embeds` with the stream split into per-receiver copies, and one backward whose
        gradient hooks add (activation difference . gradient) to every receiver's column of `scores`."""
        B, T, _ = embeds.shape
        H, G, dh, d = self.H, self.G, self.dh, self.d
        handles = []
        stream: dict[str, torch.Tensor] = {}

        def add(r0: int, n_senders: int):
            def hook(grad):  # grad [B, T, n, d] (n copies) or [B, T, d]
                g = grad if grad.dim() == 4 else grad.unsqueeze(2)
                scores[:n_senders, r0 : r0 + g.shape[2]] += torch.einsum(
                    "btsd,btnd->sn", diff[:, :, :n_senders], g
                )

            return hook

        def keep_x(key):
            def hook(_m, args):
                stream[key] = args[0]

            return hook

        def split_proj(li, kind, n, r0):
            layer = self.layers[li]
            w = getattr(layer.self_attn, f"{kind}_proj").weight.view(n, dh, d)
            norm = layer.input_layernorm
            n_senders = 1 + li * (H + 1)

            def hook(mod, _args, _out):
                x = stream[f"attn{li}"]
                copies = x.unsqueeze(2).repeat(1, 1, n, 1)  # [B, T, n, d]: this receiver kind's own streams
                copies.register_hook(add(r0, n_senders))
                u = norm.forward(copies)
                y = torch.einsum("btnd,nkd->btnk", u, w).reshape(B, T, n * dh)
                return y + mod.bias if mod.bias is not None else y

            return hook

        def split_mlp(li, r):
            norm = self.layers[li].post_attention_layernorm
            n_senders = 1 + li * (H + 1) + H

            def hook(_m, _args):
                copy = stream[f"mlp{li}"].clone()
                copy.register_hook(add(r, n_senders))
                return (norm.forward(copy),)

            return hook

        def split_final(_m, args):
            copy = args[0].clone()
            copy.register_hook(add(self.R - 1, self.S))
            return (copy,)

        for li, layer in enumerate(self.layers):
            base = li * self.R_l
            handles.append(layer.input_layernorm.register_forward_pre_hook(keep_x(f"attn{li}")))
            handles.append(layer.post_attention_layernorm.register_forward_pre_hook(keep_x(f"mlp{li}")))
            handles.append(layer.self_attn.q_proj.register_forward_hook(split_proj(li, "q", H, base)))
            handles.append(layer.self_attn.k_proj.register_forward_hook(split_proj(li, "k", G, base + H)))
            handles.append(layer.self_attn.v_proj.register_forward_hook(split_proj(li, "v", G, base + H + G)))
            handles.append(layer.mlp.register_forward_pre_hook(split_mlp(li, base + H + 2 * G)))
        handles.append(self.hf.model.norm.register_forward_pre_hook(split_final))
        try:
            logits = self.hf(inputs_embeds=embeds, logits_to_keep=1).logits[:, -1].float()
            rows = torch.arange(B)
            metric = (logits[rows, target] - logits[rows, foil]).sum()  # logit diff, summed over the batch
            metric.backward()
        finally:
            for h in handles:
                h.remove()

    def scores(self, clean_ids, corrupt_ids, target, foil, steps: int, batch: int) -> np.ndarray:
        """[S, R] mean edge scores over the examples; steps = 0: EAP, else EAP-IG with `steps` steps."""
        params = [p for p in self.hf.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        total = torch.zeros(self.S, self.R)
        embed = self.hf.get_input_embeddings()
        try:
            for i in range(0, clean_ids.shape[0], batch):
                c, k = clean_ids[i : i + batch], corrupt_ids[i : i + batch]
                t, f = target[i : i + batch], foil[i : i + batch]
                with torch.no_grad():
                    e_clean, e_corrupt = embed(c), embed(k)
                diff = self.sender_outputs(e_clean) - self.sender_outputs(e_corrupt)
                alphas = [0.0] if steps == 0 else [j / steps for j in range(1, steps + 1)]
                part = torch.zeros(self.S, self.R)
                for a in alphas:
                    e = (e_corrupt + a * (e_clean - e_corrupt)).detach().requires_grad_(True)
                    self.gradient_run(e, diff, t, f, part)
                total += part / len(alphas)
        finally:
            for p in params:
                p.requires_grad_(True)
        return (total / clean_ids.shape[0]).numpy()


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=32, help="IOI examples")
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    ap.add_argument("--size", type=int, default=500, help="edges of the circuit whose faithfulness is timed")
    ap.add_argument("--reps", type=int, default=1, help="timed runs of each contender (median)")
    ap.add_argument("--batch", type=int, default=32, help="the peer's batch size")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--out", default=None, help="default benchmarks/results_circuits.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import workbench as wb

    load_start = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    model = wb.load()
    ds = wb.datasets.ioi(args.n)
    metric = wb.logit_diff()
    clean_ids = torch.cat([model.to_tokens(p) for p in ds.clean])
    corrupt_ids = torch.cat([model.to_tokens(p) for p in ds.corrupt])
    target = torch.tensor([model.token_id(t) for t in ds.target])
    foil = torch.tensor([model.token_id(t) for t in ds.foil])
    units: list[tuple[float, float]] = []

    def unit(reps: int = 5) -> None:
        with torch.no_grad():
            model.hf(clean_ids, logits_to_keep=1)  # warm
            for _ in range(reps):
                w, c, _, _ = timed(lambda: model.hf(clean_ids, logits_to_keep=1))
                units.append((w, c))

    small = wb.datasets.ioi(2, seed=1)  # warm-up of each op (first-call costs: tokenizing, weight reads)
    g_small = wb.edge_attribution(model, small, metric=metric, method="eap", progress=False)
    wb.edge_attribution(model, small, metric=metric, method="eap-ig", steps=args.steps, progress=False)
    wb.faithfulness(model, small, wb.Circuit(g_small.top(args.size).edges), metric=metric, progress=False)

    runs: dict[str, list[tuple[float, float, int]]] = {}
    out: dict[str, object] = {}

    def contender(name, fn):
        for _ in range(args.reps):
            unit()
            w, c, mem, res = timed(fn)
            runs.setdefault(name, []).append((w, c, mem))
            out[name] = res
            print(f"{name}: {w:.2f} s wall, {c:.2f} s CPU, peak +{mem / 2**20:.0f} MB", flush=True)

    contender("eap", lambda: wb.edge_attribution(model, ds, metric=metric, method="eap", progress=False))
    contender(
        "eap-ig",
        lambda: wb.edge_attribution(
            model, ds, metric=metric, method="eap-ig", steps=args.steps, progress=False
        ),
    )
    circuit = out["eap-ig"].top(args.size)  # type: ignore[attr-defined]
    contender("faithfulness", lambda: wb.faithfulness(model, ds, circuit, metric=metric, progress=False))
    ref = Reference(model.hf)
    diffs: dict[str, float] = {}
    if not args.skip_peer:
        assert ref.names() == (out["eap"].senders, out["eap"].receivers)  # type: ignore[attr-defined]
        for name, steps in (("peer eap", 0), ("peer eap-ig", args.steps)):
            contender(
                name, lambda steps=steps: ref.scores(clean_ids, corrupt_ids, target, foil, steps, args.batch)
            )
            ours = out[name.split()[1]].matrix  # type: ignore[attr-defined]
            theirs = out[name]
            valid = np.isfinite(ours)
            assert (valid == ref_valid(ref)).all()
            diffs[name] = float(np.abs(ours[valid] - theirs[valid]).max())  # type: ignore[index]
            print(f"{name}: max abs diff over {int(valid.sum())} edges {diffs[name]:.2e}", flush=True)
    unit()
    load_end = os.getloadavg()
    text = report(
        args, model, clean_ids.shape[1], units, runs, out, diffs, ref, load_start, load_end, started
    )
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results_circuits.md"
    path.write_text(text)
    print(text)
    return 0 if all(v < 1e-4 for v in diffs.values()) else 1


def ref_valid(ref: Reference) -> np.ndarray:
    """[S, R] which sender reaches which receiver, from the peer's own layout."""
    v = np.zeros((ref.S, ref.R), bool)
    for li in range(ref.L):
        base = li * ref.R_l
        v[: 1 + li * (ref.H + 1), base : base + ref.H + 2 * ref.G] = True
        v[: 1 + li * (ref.H + 1) + ref.H, base + ref.R_l - 1] = True
    v[:, -1] = True
    return v


def report(args, model, width, units, runs, out, diffs, ref, load_start, load_end, started) -> str:
    import transformers

    u_wall = statistics.median(w for w, _ in units)
    u_cpu = statistics.median(c for _, c in units)
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), max(r[2] for r in v))
           for k, v in runs.items()}  # fmt: skip
    g = out["eap-ig"]
    f = out["faithfulness"]
    lines = [
        "# Circuits (issue 17): edge attribution and faithfulness, in forward-pass equivalents",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC (`benchmarks/circuits.py --threads {args.threads} --n {args.n} --steps "
        f"{args.steps} --size {args.size} --reps {args.reps} --batch {args.batch}`); python "
        f"{sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}; torch threads "
        f"{args.threads}; load average at start {load_start[0]:.1f}, {load_start[1]:.1f}, {load_start[2]:.1f}, at end "
        f"{load_end[0]:.1f}, {load_end[1]:.1f}, {load_end[2]:.1f} ({os.cpu_count()} cores shared with other "
        "engineers' jobs).",
        "",
        f"Embedded SmolLM2-135M ({model.n_layers} layers x {model.n_heads} heads, {model.n_kv_heads} key-value "
        f"heads), `wb.datasets.ioi({args.n})` ({width}-token prompts), `wb.logit_diff()`; {g.n_edges:,} edges; clean logit diff {g.clean_mean:.2f}, corrupt "
        f"{g.corrupt_mean:.2f}. The unit: one plain batched forward of the {args.n} clean prompts "
        f"(`model.hf(ids, logits_to_keep=1)`, no grad), median of {len(units)} runs measured before every contender: "
        f"**{u_wall * 1e3:.0f} ms wall, {u_cpu * 1e3:.0f} ms CPU**. Forward-pass equivalents per example = time / unit "
        "(CPU time: steadier than wall on a busy machine). Peak = RSS above the start of the op (0: the op ran "
        "within memory the process already held from the ops before it).",
        "",
        "| contender | wall s | CPU s | fwd-equiv / example (CPU) | (wall) | target | peak MB |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {
        "eap": "`wb.edge_attribution(method='eap')`",
        "eap-ig": f"`wb.edge_attribution(method='eap-ig', steps={args.steps})`",
        "faithfulness": f"`wb.faithfulness` of the top {args.size} EAP-IG edges (faithfulness {float(f):.3f})",
        "peer eap": "peer: reference hook loop, EAP",
        "peer eap-ig": f"peer: reference hook loop, EAP-IG ({args.steps} steps)",
    }
    verdicts = []
    for k, (w, c, mem) in med.items():
        t = TARGETS.get(k)
        fe = c / u_cpu
        mark = "" if t is None else f"<= {t:g}: " + ("met" if fe <= t else f"**missed** ({fe:.1f})")
        lines.append(
            f"| {labels[k]} | {w:.2f} | {c:.2f} | {fe:.1f} | {w / u_wall:.1f} | {mark} | {mem / 2**20:.0f} |"
        )
        if t is not None:
            verdicts.append(
                f"- {k}: {fe:.1f} forward-equivalents per example (CPU; {w / u_wall:.1f} wall) against a target of "
                f"<= {t:g}: " + ("met." if fe <= t else f"**missed** by {fe / t:.1f}x.")
            )
    lines += ["", *verdicts]
    for ours, peer in (("eap", "peer eap"), ("eap-ig", "peer eap-ig")):
        if peer in med:
            lines.append(
                f"- {peer} / Workbench {ours}: **{med[peer][1] / med[ours][1]:.2f}x CPU**, "
                f"{med[peer][0] / med[ours][0]:.2f}x wall; max abs difference of the scores over all "
                f"{int(np.isfinite(out[ours].matrix).sum()):,} edges {diffs[peer]:.1e} (must be < 1e-4; edge scores "
                f"reach {np.nanmax(np.abs(out[ours].matrix)):.2f})."
            )
    if "peer eap-ig" in out:
        lines += ["", f"Top edges of the EAP-IG graph, Workbench vs the peer ({args.steps} steps):", ""]
        lines += ["| edge | Workbench | peer |", "|---|---|---|"]
        senders, receivers = ref.names()
        for e in g.top(8).edges:
            s, r = senders.index(e.sender), receivers.index(e.receiver)
            lines.append(f"| {e} | {g.score(e):+.6f} | {out['peer eap-ig'][s, r]:+.6f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
