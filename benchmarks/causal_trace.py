"""Issue 14 ("Speed"): a full three-kind causal trace, Workbench vs ROME's method reimplemented with hooks.

    python benchmarks/causal_trace.py [--cells N] [--samples 10] [--window 10] [--threads 1] [--big]
    make bench-trace TRACE_ARGS="--cells 30"

- The fact: "The Eiffel Tower is located in the city of" (10 tokens), subject "Eiffel Tower" (tokens 1..3),
  target the clean top-1 (' Paris'); samples=10, window=10, ROME's "s3" noise (3 x the std of the clean
  subject embeddings, seed 0), made once as a tensor [S, n, D] that both contenders add as given.
- Peer (ROME's `calculate_hidden_flow` / `trace_with_patch`, own code, plain PyTorch forward hooks on the
  same HF model, `model.hf`): for every (layer, position) cell one batched forward of [clean, S noised]
  rows; a hook on the embedding module adds the noise to rows 1..S at the subject positions, a hook on the
  restored module copies row 0's state into rows 1..S at the position (kind resid: the block output; mlp /
  attn: that module's output at every layer of ROME's window range(max(0, l - w//2), min(L, l - (-w//2)))),
  p(target) = softmax(last logits)[target] averaged over rows 1..S. Its forwards keep only the last
  position's logits (`logits_to_keep=1`; ROME computes all of them, so this peer is the faster one).
  Severed (`--sever mlp`, ROME's `trace_with_repatch`): the resid restore with the MLP outputs at the
  restored position frozen in every later layer at their noised values; ROME runs a noised first pass per
  cell, the peer here runs it once and reuses it (again the faster peer).
- Workbench: `wb.causal_trace(model, prompt, subject=..., kind=k, samples=S, window=w, noise=<the tensor>)`
  for k in resid, mlp, attn (fast path: the replay from the cached noised run), then the same with
  `workbench.engine.fast.disabled()` (the traced nnsight path, `--traced-kinds`), then the severed trace.
- `--cells N`: the peer runs N sampled cells per kind (seeded) and its time is extrapolated per cell to all
  L x T cells (marked ~); the max abs difference is then over those cells. 0 (the default) runs every cell.
- `--big`: the same on a randomly initialised model of SmolLM2-1.7B's shape (benchmarks/big.py, built once
  into ~/.cache/workbench-bench, 6.8 GB); default --cells 12 there (a forward is ~10x the embedded one's).
- Wall and CPU seconds (the process's CPU time over the op; one thread, so steadier under load than wall),
  peak RSS above the start of the op (Linux VmHWM after clear_refs). Writes benchmarks/results_trace.md
  (--big: results_trace_big.md).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.memory import peak_since, rss_reset  # noqa: E402

PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "Eiffel Tower"
KINDS = ("resid", "mlp", "attn")
TOL = 1e-5


# ------------------------------------------------------------------------------------------- the peer
def _untuple(x):
    return x[0] if isinstance(x, tuple) else x


def hf_modules(hf) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """The embedding module and the blocks of a GPT-2, Llama-family or NeoX HF model (ROME's layername)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        obj = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return hf.get_input_embeddings(), list(obj)
    raise RuntimeError(f"unknown transformer structure: {type(hf).__name__}")


def sub_module(block: torch.nn.Module, kind: str) -> torch.nn.Module:
    """A block's MLP or attention module (the output ROME's mlp / attn traces restore)."""
    names = ("mlp",) if kind == "mlp" else ("self_attn", "attn", "attention")
    for name in names:
        if hasattr(block, name):
            return getattr(block, name)
    raise RuntimeError(f"no {kind} module in {type(block).__name__}")


def rome_window(layer: int, window: int, n_layers: int) -> range:
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


class Rome:
    """ROME's trace_with_patch with plain forward hooks: one batched forward of [clean, S noised] per cell."""

    def __init__(self, hf, ids: torch.Tensor, span: tuple[int, int], noise: torch.Tensor) -> None:
        self.hf = hf
        self.embed, self.blocks = hf_modules(hf)
        self.L, self.T = len(self.blocks), ids.shape[1]
        self.S = noise.shape[0]
        self.batch = ids.expand(1 + self.S, -1).contiguous()
        self.span = span
        self.noise = noise
        with torch.no_grad():
            clean = hf(ids, logits_to_keep=1).logits[0, -1].float()
        self.target = int(clean.argmax())
        self.high = float(torch.softmax(clean, -1)[self.target])
        self.frozen_mlp: list[torch.Tensor] | None = None

    def _add_noise(self, _mod, _args, out):
        x = _untuple(out)
        a, b = self.span
        x[1:, a:b] += self.noise.to(x.dtype)
        return out

    def forward(
        self, patches: list[tuple[torch.nn.Module, int]], freeze: list[tuple[int, int]] = ()
    ) -> float:
        """p(target) mean over rows 1..S with (module, position) restored from row 0 and the block MLPs at
        (layer, position) in `freeze` set to their noised values."""
        handles = [self.embed.register_forward_hook(self._add_noise)]
        spec: dict[torch.nn.Module, list[int]] = {}
        for mod, t in patches:
            spec.setdefault(mod, []).append(t)

        def restore(mod, _args, out):
            h = _untuple(out)
            for t in spec[mod]:
                h[1:, t] = h[0, t]
            return out

        for mod in spec:
            handles.append(mod.register_forward_hook(restore))
        for layer, t in freeze:
            mlp = sub_module(self.blocks[layer], "mlp")
            assert self.frozen_mlp is not None

            def unpatch(_mod, _args, out, layer=layer, t=t):
                h = _untuple(out)
                h[1:, t] = self.frozen_mlp[layer][1:, t]
                return out

            handles.append(mlp.register_forward_hook(unpatch))
        try:
            with torch.no_grad():
                logits = self.hf(self.batch, logits_to_keep=1).logits[1:, -1].float()
        finally:
            for h in handles:
                h.remove()
        return float(torch.softmax(logits, dim=-1)[:, self.target].mean())

    def record_noised_mlps(self) -> None:
        """The noised run's MLP outputs (ROME's first pass of trace_with_repatch), once."""
        saved: list[torch.Tensor | None] = [None] * self.L
        handles = [self.embed.register_forward_hook(self._add_noise)]
        for j, block in enumerate(self.blocks):

            def keep(_mod, _args, out, j=j):
                saved[j] = _untuple(out).detach().clone()

            handles.append(sub_module(block, "mlp").register_forward_hook(keep))
        try:
            with torch.no_grad():
                self.hf(self.batch, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        self.frozen_mlp = saved  # type: ignore[assignment]

    def cell(self, kind: str, layer: int, t: int, window: int, sever: str | None = None) -> float:
        if kind == "resid":
            patches = [(self.blocks[layer], t)]
        else:
            patches = [(sub_module(self.blocks[j], kind), t) for j in rome_window(layer, window, self.L)]
        freeze = [(j, t) for j in range(self.L)] if sever == "mlp" else []  # ROME: every layer
        return self.forward(patches, freeze)

    def low(self) -> float:
        return self.forward([])


# ------------------------------------------------------------------------------------------- timing
def timed(fn):
    """(wall s, CPU s, peak RSS above the start in bytes, output)."""
    gc.collect()
    base = rss_reset()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, peak_since(base), out


def peer_grid(rome: Rome, kind: str, window: int, cells: list[tuple[int, int]], sever: str | None):
    grid = np.full((rome.L, rome.T), np.nan, dtype=np.float64)
    for layer, t in cells:
        grid[layer, t] = rome.cell(kind, layer, t, window, sever)
    return grid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=None, help="cells the peer runs per kind, sampled (0 = all)")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--traced-kinds", default="resid", help="kinds also timed on the traced path ('' = none)")
    ap.add_argument("--sever", default="mlp", help="severed trace timed (kind resid); '' = none")
    ap.add_argument(
        "--big", action="store_true", help="a random model of SmolLM2-1.7B's shape (benchmarks/big.py)"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.cells is None:
        args.cells = 12 if args.big else 0
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    import workbench as wb
    from workbench.engine import fast

    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load_start = os.getloadavg()
    model = wb.load()
    if args.big:
        from benchmarks import big

        folder = big.ensure(Path(model.load_info["folder"]))
        del model
        gc.collect()
        model = wb.load(str(folder))
    kinds = [k for k in args.kinds.split(",") if k]
    traced_kinds = [k for k in args.traced_kinds.split(",") if k]
    sever = args.sever or None
    S, W = args.samples, args.window

    ids = model.to_tokens(PROMPT)
    from workbench.ops.tracing import subject_span

    span = subject_span(model, PROMPT, ids, SUBJECT)
    embed, _ = hf_modules(model.hf)
    with torch.no_grad():
        std = float(embed(ids)[0, span[0] : span[1]].float().std())
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(S, span[1] - span[0], model.d_model, generator=gen) * (3.0 * std)
    rome = Rome(model.hf, ids, span, noise)
    L, T = rome.L, rome.T
    all_cells = [(lyr, t) for lyr in range(L) for t in range(T)]
    sample = all_cells if not args.cells else sorted(random.Random(1).sample(all_cells, args.cells))
    tilde = "~" if args.cells else ""
    print(f"{model.name if hasattr(model, 'name') else type(model.hf).__name__}: {L} layers, T = {T}, subject "
          f"tokens {span}, target {model.str_tokens([rome.target])[0]!r}, S = {S}, window {W}; peer cells per "
          f"kind {len(sample)}/{len(all_cells)}", flush=True)  # fmt: skip

    def ours(kind: str, sever_: str | None = None):
        return wb.causal_trace(model, PROMPT, subject=SUBJECT, kind=kind, samples=S, window=W, noise=noise,
                               sever=sever_, progress=lambda *_: None)  # fmt: skip

    # warm both (imports, packed oneDNN weights, the peer's first forward)
    with contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115
        ours("resid")
    rome.low()

    def measure(kind: str, sever_: str | None, traced: bool) -> dict:
        ctx = fast.disabled() if traced else contextlib.nullcontext()
        with ctx:
            w_wall, w_cpu, w_peak, tr = timed(lambda: ours(kind, sever_))
        assert tr.target_id == rome.target, (tr.target_id, rome.target)
        return dict(wall=w_wall, cpu=w_cpu, peak=w_peak, values=tr.values.astype(np.float64), high=tr.high,
                    low=tr.low)  # fmt: skip

    def peer(kind: str, sever_: str | None) -> dict:
        s_wall = s_cpu = 0.0
        if sever_ == "mlp":  # the noised first pass, once (not extrapolated)
            s_wall, s_cpu, _, _ = timed(rome.record_noised_mlps)
        p_wall, p_cpu, p_peak, grid = timed(lambda: peer_grid(rome, kind, W, sample, sever_))
        n = len(all_cells) / len(sample)
        return dict(wall=s_wall + p_wall * n, cpu=s_cpu + p_cpu * n, peak=p_peak, grid=grid,
                    per_cell=p_wall / len(sample))  # fmt: skip

    results = {}
    jobs = [(k, None) for k in kinds] + ([("resid", sever)] if sever else [])
    for kind, sv in jobs:
        label = kind if sv is None else f"{kind}, sever={sv}"
        us = measure(kind, sv, traced=False)
        them = peer(kind, sv)
        mask = ~np.isnan(them["grid"])
        diff = float(np.abs(us["values"][mask] - them["grid"][mask]).max())
        results[label] = (us, them, diff)
        print(f"{label}: Workbench {us['wall']:.2f} s ({us['cpu']:.2f} CPU s), peer {tilde}{them['wall']:.2f} s "
              f"({tilde}{them['cpu']:.2f} CPU s, {them['per_cell'] * 1e3:.0f} ms per cell): "
              f"{them['wall'] / us['wall']:.1f}x wall, {them['cpu'] / us['cpu']:.1f}x CPU; max abs diff {diff:.1e}",
              flush=True)  # fmt: skip
    low_peer = rome.low()
    some = next(iter(results.values()))[0]
    low_diff = abs(some["low"] - low_peer)
    high_diff = abs(some["high"] - rome.high)
    traced = {}
    for kind in traced_kinds:
        t = measure(kind, None, traced=True)
        ref = results[kind][0]["values"]
        traced[kind] = (t, float(np.abs(t["values"] - ref).max()))
        print(f"{kind} traced path: {t['wall']:.2f} s ({t['cpu']:.2f} CPU s), max abs diff vs fast "
              f"{traced[kind][1]:.1e}", flush=True)  # fmt: skip
    load_end = os.getloadavg()

    # the report
    def ms(x: float) -> str:
        return f"{x / 2**20:.0f}"

    three = [results[k] for k in KINDS if k in results]
    lines = [
        f"Run {started} UTC (`benchmarks/causal_trace.py {' '.join(sys.argv[1:])}`), torch threads "
        f"{args.threads}; load average at start {', '.join(f'{x:.1f}' for x in load_start)}, at end "
        f"{', '.join(f'{x:.1f}' for x in load_end)} (2 cores shared with other engineers' jobs). CPU s = the "
        "process's CPU time over the op (one thread: steadier under load than wall time).",
        "",
        f"{'SmolLM2-1.7B shape (random weights)' if args.big else 'Embedded SmolLM2-135M'}, {L} layers: "
        f"{PROMPT!r} (T = {T}), subject {SUBJECT!r} (tokens {span[0]}..{span[1] - 1}), target "
        f"{model.str_tokens([rome.target])[0]!r} (high {rome.high:.4f}, low {low_peer:.4f}), samples {S}, "
        f"window {W}, one noise tensor [{S}, {span[1] - span[0]}, {model.d_model}] (3 x std {std:.4g}, seed 0) "
        f"for both. Peer = ROME's per-cell loop with plain hooks on `model.hf` ({L * T} batched forwards of "
        f"{1 + S} rows per kind)"
        + (f", {len(sample)} sampled cells per kind, extrapolated (~)." if args.cells else ", every cell."),
        "",
        "| trace | WB wall s | WB CPU s | WB peak MB | peer wall s | peer CPU s | peer peak MB | peer / WB wall "
        "| peer / WB CPU | max abs diff of p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, (us, them, diff) in results.items():
        lines.append(f"| {label} | {us['wall']:.2f} | {us['cpu']:.2f} | {ms(us['peak'])} | {tilde}{them['wall']:.2f} "
                     f"| {tilde}{them['cpu']:.2f} | {ms(them['peak'])} | **{them['wall'] / us['wall']:.1f}x** | "
                     f"**{them['cpu'] / us['cpu']:.1f}x** | {diff:.1e} |")  # fmt: skip
    if len(three) == 3:
        uw, uc = sum(u["wall"] for u, _, _ in three), sum(u["cpu"] for u, _, _ in three)
        pw, pc = sum(p["wall"] for _, p, _ in three), sum(p["cpu"] for _, p, _ in three)
        dmax = max(d for _, _, d in three)
        lines.append(f"| **three kinds** | {uw:.2f} | {uc:.2f} | | {tilde}{pw:.2f} | {tilde}{pc:.2f} | | "
                     f"**{pw / uw:.1f}x** | **{pc / uc:.1f}x** | {dmax:.1e} |")  # fmt: skip
        verdict = "met" if min(pw / uw, pc / uc) >= 5 else "**missed**"
        lines += ["", f"Full three-kind trace: peer / Workbench = **{pw / uw:.1f}x** wall, **{pc / uc:.1f}x** CPU "
                      f"(target >= 5x: {verdict}); max abs difference of p {dmax:.1e} (tolerance {TOL:g})."]  # fmt: skip
    lines.append(f"high / low: |WB - peer| = {high_diff:.1e} / {low_diff:.1e}.")
    if traced:
        lines += ["", "Workbench's traced path (`workbench.engine.fast.disabled()`, the nnsight trace: "
                      "[clean, S noised, S rows per run] per chunk):", ""]  # fmt: skip
        for kind, (t, d) in traced.items():
            us = results[kind][0]
            them = results[kind][1]
            lines.append(f"- {kind}: {t['wall']:.2f} s wall, {t['cpu']:.2f} CPU s, peak {ms(t['peak'])} MB; "
                         f"fast path {t['wall'] / us['wall']:.1f}x faster (wall), {t['cpu'] / us['cpu']:.1f}x (CPU); "
                         f"peer / traced {them['wall'] / t['wall']:.2f}x wall; max abs diff vs fast {d:.1e}")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / ("results_trace_big.md" if args.big
                                                                 else "results_trace.md")  # fmt: skip
    out.write_text(text)
    bad = {k: d for k, (_, _, d) in results.items() if d >= TOL}
    bad.update({f"{k} traced": d for k, (_, d) in traced.items() if d >= TOL})
    if bad:
        print(f"NOT EQUAL (>= {TOL:g}): {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
