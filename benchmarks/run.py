"""`make bench`: Workbench vs TransformerLens 4.x vs a naive nnsight loop, same model, prompts and metric.

Contenders run interleaved in one run (the order rotates every repetition), each with the same number of
torch threads; TransformerLens runs in its own venv as a worker process that times itself. Printed and
written to benchmarks/results.md: medians, ratios, forward-pass equivalents, the ratio to the lower bound
of exact patching, max abs differences between contenders and peak memory (RSS above the start of the op).

Cells that TransformerLens or the naive loop would take too long for are sampled: each of their patched
runs is one full forward, so time scales with the number of cells and the table extrapolates from the
sample (marked with ~). Workbench runs the full sweep at T=10; at larger T it can run all layers at a
sample of positions (--wb-positions), and per-head sweeps at a few heads of every layer (--wb-heads, the
default of --big), extrapolated by the lower bound of the cells it skipped (marked ~).

--big times a randomly initialised model of SmolLM2-1.7B's shape instead (benchmarks/big.py).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import naive  # noqa: E402
from benchmarks.memory import peak_since, rss_reset  # noqa: E402
from benchmarks.prompts import FOIL, TARGET, pair  # noqa: E402

OPS = [
    dict(
        key="resid_pre",
        name="resid_pre sweep (layer x pos)",
        kind="sweep",
        site="resid_pre",
        by_position=True,
    ),
    dict(
        key="attn_out", name="attn_out sweep (layer x pos)", kind="sweep", site="attn_out", by_position=True
    ),
    dict(key="mlp_out", name="mlp_out sweep (layer x pos)", kind="sweep", site="mlp_out", by_position=True),
    dict(key="head", name="head sweep (layer, all pos)", kind="sweep", site="head", by_position=False),
    dict(key="head_by_pos", name="head sweep (layer x pos)", kind="sweep", site="head", by_position=True),
    # q/k/v (issue 12): one head's slice of the projection output before rotary, every position at once;
    # k and v sweep the key-value heads, as TransformerLens's hook_k / hook_v do (no ungrouping).
    dict(key="q", name="q sweep (layer, all pos)", kind="sweep", site="q", by_position=False),
    dict(key="k", name="k sweep (layer, kv head, all pos)", kind="sweep", site="k", by_position=False),
    dict(key="v", name="v sweep (layer, kv head, all pos)", kind="sweep", site="v", by_position=False),
    # Path patching (issue 12): wb.path_patch_sweep to logits, every head the sender in turn; the peer is a
    # per-head plain-hook loop in TransformerLens (4.3 has only head-to-head direct path patching). The row
    # runs where `wb.path_patch_sweep` exists and stays empty elsewhere.
    dict(
        key="path",
        name="path patching sweep (sender heads -> logits)",
        kind="path",
        site="head",
        by_position=False,
    ),
    dict(key="attribution", name="attribution patching (3 sites x layer x pos)", kind="attribution"),
    dict(key="lens", name="logit lens (all layers x pos, top-5)", kind="lens"),
    dict(key="single", name="single-cell patch (click, warm)", kind="single"),
]


# The --big group: a random model of SmolLM2-1.7B's shape (1.7B parameters, 6.8 GB float32 per copy). The
# op rows the issue asks for there, the peers' sample per sweep (a forward is ~10x the embedded model's) and
# the heads per layer Workbench runs in its per-head sweeps (768 cells each, all at the same cost per layer).
BIG_OPS = ("resid_pre", "head", "q", "k", "v", "attribution", "lens", "single")
BIG_MAX_CELLS = 12
BIG_WB_HEADS = 4

# ------------------------------------------------------------------------------------------- process facts


def timed(fn):
    base = rss_reset()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, peak_since(base), out


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


# ------------------------------------------------------------------------------------------- TL worker
class TLWorker:
    """TransformerLens in its own venv, one JSON request per line."""

    def __init__(self, python: str, folder: str, threads: int, log: Path, freeze: bool = False) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(
            [python, str(ROOT / "benchmarks" / "tl_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log, "w"),  # noqa: SIM115 (lives as long as the worker)
            text=True,
            env=env,
        )
        self.info = self.ask({"cmd": "setup", "folder": folder, "threads": threads, "freeze": freeze})

    def ask(self, req: dict) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the TransformerLens worker died (see benchmarks/tl_worker.log)")
        ans = json.loads(line)
        if not ans.get("ok"):
            raise RuntimeError(ans.get("error", "TransformerLens worker error"))
        return ans

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask({"cmd": "quit"})
        self.proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------- the ops
def is_sweep(op: dict) -> bool:
    """Ops that run one patched forward per cell for the peers (sampled, extrapolated per cell)."""
    return op["kind"] in ("sweep", "path")


def per_head(op: dict) -> bool:
    from workbench.engine.sites import site

    return site(op["site"]).per_head


def sweep_cells(model, op: dict, n_tokens: int) -> list[tuple[int, int | None, int | None]]:
    """The cells of a sweep in the order of Workbench's result grid (k/v: the key-value heads)."""
    from workbench.engine.sites import site

    L = model.n_layers
    if not per_head(op):
        return [(lyr, p, None) for lyr in range(L) for p in range(n_tokens)]
    H = model.n_kv_heads if site(op["site"]).heads == "kv" else model.n_heads
    if op["by_position"]:
        return [(lyr, p, h) for lyr in range(L) for p in range(n_tokens) for h in range(H)]
    return [(lyr, None, h) for lyr in range(L) for h in range(H)]


def tl_cell(op: dict, cell: tuple) -> list[int]:
    lyr, p, h = cell
    if not per_head(op):
        return [lyr, p]
    return [lyr, p, h] if op["by_position"] else [lyr, h]


def bound_of(model, cells, n_tokens: int) -> int:
    """Token-block evaluations a patch really changes: (L - l)(T - p), p = 0 for all positions."""
    return sum((model.n_layers - lyr) * (n_tokens - (p or 0)) for lyr, p, _ in cells)


def timed_attribution(model, ctx: dict, metric) -> tuple[float, int, dict]:
    """Attribution patching of resid_pre, attn_out and mlp_out by layer x position, timed."""
    import numpy as np

    import workbench as wb

    sites = ["resid_pre", "attn_out", "mlp_out"]
    t, peak, res = timed(
        lambda: wb.attribution_patch(
            model, ctx["clean"], ctx["corrupt"], metric=metric, site=sites, by_position=True
        )
    )
    vals = [(res[s].values - res[s].corrupt).reshape(-1) for s in sites]
    return t, peak, {"values": np.concatenate(vals)}


class Bench:
    def __init__(self, args, model, tl: TLWorker | None) -> None:
        self.args, self.model, self.tl = args, model, tl

    # one plain forward of the corrupt prompt, and the best cost per token-block on this machine
    def plain_forward(self, ids: torch.Tensor) -> float:
        hf = self.model.hf
        with torch.no_grad():
            hf(ids, logits_to_keep=1)
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                hf(ids, logits_to_keep=1)
                ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    def token_block_cost(self, ids: torch.Tensor) -> float:
        """Seconds per token-block evaluation of a batched forward of ~400 tokens (--big: ~160, one timed
        run each: a 400-token forward of the 1.7B shape takes most of a minute here): the best of the plain
        HF forward and the same forward with Workbench's oneDNN linear layers (the fastest kernels we know)."""
        from workbench.engine.onednn import onednn_linears

        tokens, reps = (160, 1) if self.args.big else (400, 3)
        n = max(1, tokens // ids.shape[1])
        batch = ids.expand(n, -1).contiguous()
        hf = self.model.hf
        best = float("inf")
        for kernels in (contextlib.nullcontext, lambda: onednn_linears(self.model)):
            with torch.no_grad(), kernels():
                hf(batch, logits_to_keep=1)
                ts = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    hf(batch, logits_to_keep=1)
                    ts.append(time.perf_counter() - t0)
            best = min(best, statistics.median(ts))
        return best / (n * ids.shape[1] * self.model.n_layers)

    def run_wb(self, op, ctx):
        import workbench as wb
        from workbench.engine import replay as F
        from workbench.engine.edits import Cell, Edit
        from workbench.engine.traced import run_rows

        model, metric = self.model, wb.logit_diff(TARGET, FOIL)
        if op["kind"] == "sweep":
            F._BASELINES.clear()  # cold: a sweep pays for its own clean/corrupt runs
            if ctx["wb_cells"] is None:
                t, peak, res = timed(
                    lambda: wb.patch_sweep(
                        model,
                        ctx["clean"],
                        ctx["corrupt"],
                        metric=metric,
                        site=op["site"],
                        by_position=op["by_position"],
                    )
                )
                return t, peak, {"values": res.values.reshape(-1), "clean": res.clean, "corrupt": res.corrupt}
            rows = [[Edit(Cell(op["site"], *c))] for c in ctx["wb_cells"]]
            bound = metric.bind(model)
            t, peak, out = timed(lambda: run_rows(model, ctx["c"], ctx["k"], rows, bound))
            return t, peak, {"values": out.values.numpy(), "clean": out.source, "corrupt": out.base}
        if op["kind"] == "path":
            if not hasattr(wb, "path_patch_sweep"):
                return None  # an older Workbench: the row stays empty
            F._BASELINES.clear()  # cold, like the sweeps
            t, peak, res = timed(
                lambda: wb.path_patch_sweep(
                    model, ctx["clean"], ctx["corrupt"], metric=metric, receivers="logits"
                )
            )
            return t, peak, {"values": res.values.reshape(-1), "clean": res.clean, "corrupt": res.corrupt}
        if op["kind"] == "attribution":
            return timed_attribution(model, ctx, metric)
        if op["kind"] == "lens":
            t, peak, res = timed(lambda: wb.logit_lens(model, ctx["corrupt"], top_k=5))
            return t, peak, {"values": res.top_probs[: model.n_layers].reshape(-1)}
        if op["kind"] == "single":

            def click():
                return wb.patch(
                    model, ctx["clean"], ctx["corrupt"], metric=metric, site="resid_pre", layer=0, position=0
                )

            click()  # warm: the first click of a pair pays for the clean/corrupt runs
            t, peak, v = timed(click)
            return t, peak, {"values": [float(v)]}
        raise ValueError(op["kind"])

    def run_naive(self, op, ctx):
        import workbench as wb
        from workbench.engine import replay as F

        model, metric = self.model, wb.logit_diff(TARGET, FOIL)
        bound = metric.bind(model)
        if op["kind"] == "sweep":
            cells, timing = ctx["sample"], {}
            t, peak, vals = timed(
                lambda: naive.sweep(model, ctx["c"], ctx["k"], op["site"], cells, bound, timing)
            )
            return t, peak, {"values": vals, "setup": timing.get("setup", 0.0)}
        if op["kind"] == "attribution":
            with F.disabled():  # the plain nnsight trace (forward + backward through nnsight)
                return timed_attribution(model, ctx, metric)
        if op["kind"] == "single":
            act = naive.clean_acts(model, ctx["c"], "resid_pre")[0][0]
            t, peak, v = timed(
                lambda: naive.patched_metric(model, ctx["k"], "resid_pre", 0, 0, None, act, bound)
            )
            return t, peak, {"values": [v]}
        return None

    def run_tl(self, op, ctx):
        if self.tl is None:
            return None
        req = {
            "cmd": "op",
            "clean": ctx["c"][0].tolist(),
            "corrupt": ctx["k"][0].tolist(),
            "target": self.model.token_id(TARGET),
            "foil": self.model.token_id(FOIL),
        }
        if op["kind"] == "sweep":
            req.update(kind="sweep", op=op["key"], cells=[tl_cell(op, c) for c in ctx["sample"]])
        elif op["kind"] == "path":
            req.update(kind="path", cells=[tl_cell(op, c) for c in ctx["sample"]])
        elif op["kind"] == "single":
            req.update(kind="single", cell=[0, 0])
        else:
            req.update(kind=op["kind"])
        ans = self.tl.ask(req)
        return ans["time"], ans["peak"], {"values": ans["values"], "setup": ans.get("setup", 0.0)}


def max_diff(a, b) -> float | None:
    import numpy as np

    if a is None or b is None:
        return None
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        return None
    return float(np.abs(a - b).max())


def run_T(bench: Bench, n_tokens: int, ops: list[dict]) -> list[dict]:
    import numpy as np

    model, args = bench.model, bench.args
    reps = args.reps if n_tokens <= 10 else args.reps_large
    max_cells = args.max_cells if n_tokens <= 10 else args.max_cells_large
    clean, corrupt = pair(model, n_tokens)
    c, k = model.to_tokens(clean), model.to_tokens(corrupt)
    rng = random.Random(0)
    fwds, tbs = [], []
    rows = []
    contexts = {}
    for op in ops:
        ctx = dict(clean=clean, corrupt=corrupt, c=c, k=k, wb_cells=None)
        if is_sweep(op):
            cells = sweep_cells(model, op, n_tokens)
            ctx["all"] = cells
            pool = cells  # the cells the peers sample from: among those Workbench runs
            if args.wb_heads and op["kind"] == "sweep" and per_head(op) and not op["by_position"]:
                # Workbench runs every layer at a few heads: all heads of a layer cost the same (the same
                # rows from the same layer on), so the lower bound extrapolates the rest exactly per cell
                n_h = max(cl[2] for cl in cells) + 1
                if args.wb_heads < n_h:
                    keep = set(range(0, n_h, n_h // args.wb_heads)[: args.wb_heads])
                    pool = ctx["wb_cells"] = [cl for cl in cells if cl[2] in keep]
            n_sample = min(len(pool), max_cells)
            idx = sorted(rng.sample(range(len(pool)), n_sample))
            ctx["sample"] = [pool[i] for i in idx]
            if args.wb_positions and n_tokens > 10 and op["by_position"]:
                step = max(1, n_tokens // args.wb_positions)
                keep = set(range(0, n_tokens, step)) | {n_tokens - 1}
                wb_cells = [cl for cl in cells if cl[1] in keep]
                if len(wb_cells) < len(cells):
                    ctx["wb_cells"] = wb_cells
                    # the sampled cells that TL/naive run must be among those Workbench runs
                    ctx["sample"] = [cl for cl in ctx["sample"] if cl[1] in keep] or wb_cells[:1]
        contexts[op["key"]] = ctx
    times = {op["key"]: {"wb": [], "tl": [], "naive": []} for op in ops}
    peaks = {op["key"]: {"wb": 0, "tl": 0, "naive": 0} for op in ops}
    results = {op["key"]: {} for op in ops}
    contenders = ["wb", "tl", "naive"]
    for rep in range(reps):
        order = contenders[rep % 3 :] + contenders[: rep % 3]
        fwds.append(bench.plain_forward(k))  # measured every repetition: the machine's load drifts
        tbs.append(bench.token_block_cost(k))
        for op in ops:
            ctx = contexts[op["key"]]
            for who in order:
                if who == "naive" and args.skip_naive:
                    continue
                fn = {"wb": bench.run_wb, "tl": bench.run_tl, "naive": bench.run_naive}[who]
                try:
                    out = fn(op, ctx)
                except Exception as exc:  # shown in the table, the run goes on
                    print(f"  {who} {op['key']} T={n_tokens}: {type(exc).__name__}: {exc}", flush=True)
                    out = None
                if out is None:
                    continue
                t, peak, res = out
                if is_sweep(op) and who != "wb":  # extrapolate the per-cell part only
                    n_run = len(ctx["sample"])
                    t = res.get("setup", 0.0) + (t - res.get("setup", 0.0)) * len(ctx["all"]) / n_run
                times[op["key"]][who].append(t)
                peaks[op["key"]][who] = max(peaks[op["key"]][who], peak)
                results[op["key"]][who] = res
            print(
                f"  T={n_tokens} rep {rep + 1}/{reps} {op['key']:<12} "
                + " ".join(f"{w}={times[op['key']][w][-1]:.2f}s" for w in contenders if times[op["key"]][w]),
                flush=True,
            )
    fwd, tb = statistics.median(fwds), statistics.median(tbs)
    for op in ops:
        key, ctx = op["key"], contexts[op["key"]]
        med = {w: (statistics.median(v) if v else None) for w, v in times[key].items()}
        res = results[key]
        row = dict(op=op["name"], key=key, T=n_tokens, fwd=fwd, token_block=tb, load=os.getloadavg())
        wb_vals = res.get("wb", {}).get("values")
        if wb_vals is not None and len(wb_vals):  # the size of the numbers the max abs diffs compare
            row["wb_max_abs"] = float(np.nanmax(np.abs(np.asarray(wb_vals, dtype=np.float64))))
        if is_sweep(op):
            n_all = len(ctx["all"])
            wb_cells = ctx["wb_cells"] or ctx["all"]
            row["cells"] = n_all
            full_bound = bound_of(model, ctx["all"], n_tokens)
            run_bound = bound_of(model, wb_cells, n_tokens)
            row["bound_fwd"] = full_bound / (model.n_layers * n_tokens)
            row["bound"] = full_bound
            if med["tl"] is not None:  # the most any exact method could gain over TransformerLens here
                row["tl_bound_ratio"] = med["tl"] / (full_bound * tb)
            if med["wb"] is not None:
                row["wb_extrapolated"] = ctx["wb_cells"] is not None
                row["bound_ratio"] = med["wb"] / (run_bound * tb)
                med["wb"] = med["wb"] * full_bound / run_bound
            if op["kind"] == "path":  # frozen heads: blocks recompute MLPs and norms only, not the bound's
                row["bound_ratio"] = row["tl_bound_ratio"] = None  # whole block, so it bounds nothing here
            scale = n_all / len(ctx["sample"])
            row["sampled"] = len(ctx["sample"]) if scale > 1 else None  # times were extrapolated per rep
            # compare on the sampled cells
            pos = {cl: i for i, cl in enumerate(wb_cells)}
            if wb_vals is not None:
                wb_on_sample = np.asarray(wb_vals)[[pos[cl] for cl in ctx["sample"]]]
                row["diff_tl"] = max_diff(wb_on_sample, res.get("tl", {}).get("values"))
                row["diff_naive"] = max_diff(wb_on_sample, res.get("naive", {}).get("values"))
        else:
            row["cells"] = None
            row["diff_tl"] = max_diff(wb_vals, res.get("tl", {}).get("values"))
            row["diff_naive"] = max_diff(wb_vals, res.get("naive", {}).get("values"))
        row.update(
            wb=med["wb"],
            tl=med["tl"],
            naive=med["naive"],
            wb_peak=peaks[key]["wb"],
            tl_peak=peaks[key]["tl"],
            naive_peak=peaks[key]["naive"],
            wb_fwd_eq=(med["wb"] / fwd) if med["wb"] else None,
        )
        rows.append(row)
    by_key = {r["key"]: r for r in rows}
    path, head = by_key.get("path"), by_key.get("head")
    if path and head and path["wb"] and head["wb"]:  # the path target is relative to the head sweep
        path["vs_head"] = path["wb"] / head["wb"]
    return rows


# ------------------------------------------------------------------------------------------- the table
TARGETS = {
    "resid_pre": "TL/WB >= 10, diff <= 1e-3",
    "attn_out": "TL/WB >= 10, diff <= 1e-3",
    "mlp_out": "TL/WB >= 10, diff <= 1e-3",
    "head": "TL/WB >= 10, diff <= 1e-3",
    "head_by_pos": "TL/WB >= 10, diff <= 1e-3",
    "q": "TL/WB >= 10, diff <= 1e-4",
    "k": "TL/WB >= 10, diff <= 1e-4",
    "v": "TL/WB >= 10, diff <= 1e-4",
    "path": "WB path / WB head sweep <= 3",
    "attribution": "<= 4 fwd",
    "lens": "<= 2 fwd",
    "single": "<= 1.3 fwd",
}


def _s(x, fmt="{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def _mb(x) -> str:
    return "—" if not x else f"{x / 2**20:.0f}"


def table(rows: list[dict]) -> str:
    head = (
        "| op | T | cells | Workbench s | TransformerLens s | naive nnsight s | TL / WB | naive / WB | WB fwd-eq "
        "| WB / lower bound | TL / lower bound | max abs diff WB-TL | max abs diff WB-naive "
        "| peak MB WB / TL / naive | target |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        approx_tl = "~" if r.get("sampled") else ""
        approx_wb = "~" if r.get("wb_extrapolated") else ""
        ratio_tl = (r["tl"] / r["wb"]) if r["tl"] and r["wb"] else None
        ratio_nv = (r["naive"] / r["wb"]) if r["naive"] and r["wb"] else None
        lines.append(
            f"| {r['op']} | {r['T']} | {r['cells'] or '—'} | {approx_wb}{_s(r['wb'])} | {approx_tl}{_s(r['tl'])} "
            f"| {approx_tl}{_s(r['naive'])} | {_s(ratio_tl, '{:.1f}x')} | {_s(ratio_nv, '{:.1f}x')} "
            f"| {_s(r['wb_fwd_eq'], '{:.1f}')} | {_s(r.get('bound_ratio'), '{:.2f}')} "
            f"| {_s(r.get('tl_bound_ratio'), '{:.1f}')} "
            f"| {_s(r.get('diff_tl'), '{:.1e}')} | {_s(r.get('diff_naive'), '{:.1e}')} "
            f"| {_mb(r['wb_peak'])} / {_mb(r['tl_peak'])} / {_mb(r['naive_peak'])} | {TARGETS[r['key']]}"
            + (f" (now {r['vs_head']:.2f})" if r.get("vs_head") else "")
            + " |"
        )
    return head + "\n".join(lines) + "\n"


def packed_mb(model) -> float:
    """Size of the oneDNN-packed copy of the model's float32 linear weights that Workbench keeps."""
    from workbench.engine import onednn as FL

    return sum(m.weight.numel() * 4 for m in FL._eligible(model)) / 2**20


def packing(model) -> str:
    """What the header says about the packed copy: kept when it fits the budget, else not made at all."""
    from workbench.engine import onednn as FL

    mb, budget = packed_mb(model), FL._pack_budget() / 2**20
    if mb <= budget:
        return (
            f"keep a packed copy of the linear weights ({mb:.0f} MB for this model) from the first fast-path "
            "call on; the peak-memory column starts after it."
        )
    return (
        f"would keep a packed copy of the linear weights, but {mb:.0f} MB is over the budget "
        f"({budget:.0f} MB: a quarter of free memory, at most 2 GiB), so they run unpacked here."
    )


def key_ms(model) -> float:
    """Milliseconds of one ModelKey (the content hash of every parameter each fast-path call makes)."""
    from workbench.engine.model_key import model_key

    model_key(model)
    t0 = time.perf_counter()
    model_key(model)
    return (time.perf_counter() - t0) * 1e3


def header(args, model, tl: TLWorker | None, load_start, load_end, started: str, per_T: dict) -> str:
    import nnsight
    import transformers

    tl_info = tl.info if tl else {}
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    lines = [
        "# Benchmarks: exact patching, Workbench vs TransformerLens vs a naive nnsight loop",
        "",
        f"Run {started} UTC by `make bench` (`benchmarks/run.py {' '.join(sys.argv[1:])}`).",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {mem}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in load_start)}, at end {', '.join(f'{x:.1f}' for x in load_end)} "
        "(the machine is shared: other processes were busy).",
        f"- torch.get_num_threads() = {torch.get_num_threads()} for Workbench and the naive loop, "
        f"{tl_info.get('threads', '—')} for TransformerLens (its own process).",
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, nnsight {nnsight.__version__}; TransformerLens {tl_info.get('version', '—')} "
        f"(transformers {tl_info.get('transformers', '—')}, torch {tl_info.get('torch', '—')}, own venv).",
        f"- Model: {model!r}, float32, attention {model.hf.config._attn_implementation} in Workbench "
        "(TransformerBridge forces eager). TransformerLens boots the same local folder "
        "(`TransformerBridge.boot_transformers(folder)`) and gets the same token ids."
        + (
            " Weights: random, seeded (`benchmarks/big.py`: SmolLM2-1.7B's config.json shape, transformers' "
            "own init), the embedded model's tokenizer; TransformerLens's weights frozen "
            "(`requires_grad_(False)`, as Workbench's attribution does: weight gradients would add 6.8 GB)."
            if args.big
            else ""
        ),
        "- Workbench's local fast paths run float32 linear layers through oneDNN "
        "(`workbench/engine/onednn.py`; torch's default, MKL, was ~2.3x slower per matmul on the AMD EPYC) "
        f"and {packing(model)} Every fast-path call first hashes every parameter (`ModelKey`, the trust "
        f"check of issue 10): {key_ms(model):.0f} ms on this model at the end of the run.",
        f"- Metric: logit_diff({TARGET!r}, {FOIL!r}) at the last position. Pair at T=10: "
        "'The Eiffel Tower is located in the city of' / 'The Colosseum is located in the city of'; longer T "
        "put a neutral preamble in front.",
        f"- {args.reps} repetitions at T=10, {args.reps_large} at larger T; contenders interleaved (order "
        "rotates every repetition); medians shown.",
        "- Sweeps: TransformerLens's own `get_act_patch_*` functions (`resid_pre`, `attn_out`, `mlp_out`, "
        "`attn_head_out_all_pos`, `attn_head_out_by_pos`, `attn_head_q/k/v_all_pos`) with the clean "
        "`run_with_cache` inside the timed region; Workbench `wb.patch_sweep` from cold (no cached runs). "
        "q/k/v: one head's slice of the projection output before rotary (TransformerLens's `hook_q/k/v`); "
        "k and v sweep the key-value heads in both (TransformerBridge keeps `hook_k`/`hook_v` at "
        "n_key_value_heads, no ungrouping). `~` = extrapolated: TransformerLens "
        f"and the naive loop run at most {args.max_cells} sampled cells per sweep at T=10 and "
        f"{args.max_cells_large} at larger T (one full forward each, so "
        "time is linear in cells) and the max abs differences are over those cells; at T > 10 Workbench may "
        "run all layers at a subset of positions and is extrapolated by the lower bound of the rest"
        + (
            f"; per-head all-position sweeps run every layer at {args.wb_heads} heads in Workbench "
            "(every head of a layer costs the same), extrapolated by the lower bound, and TransformerLens "
            "samples among those cells."
            if args.wb_heads
            else "."
        ),
        "- fwd-eq = time / one plain forward of the corrupt prompt (HF, no grad, `logits_to_keep=1`, median "
        "over repetitions): " + ", ".join(f"T={T}: {v['fwd'] * 1e3:.0f} ms" for T, v in per_T.items()) + ".",
        "- Lower bound = sum over cells of (L - l)(T - p) token-block evaluations (p = 0 for all-position "
        "cells) times the best cost of one token-block evaluation on this machine (a batched forward of "
        f"~{160 if args.big else 400} tokens / (tokens x layers), the faster of HF's own and HF's with oneDNN linear layers, median "
        "over repetitions: "
        + ", ".join(f"T={T}: {v['tb'] * 1e6:.1f} µs" for T, v in per_T.items())
        + "). WB / lower bound = how far Workbench is from the fastest possible exact sweep.",
        "- Attribution: TransformerLens = the usual recipe (forward + backward hooks on the corrupt run, "
        "clean `run_with_cache`); naive = Workbench's traced nnsight path. Lens: TransformerLens = "
        "`run_with_cache` + `ln_final` + `unembed` + log-softmax/top-5/entropy/KL; no naive variant. "
        "Single-cell patch: resid_pre at layer 0, position 0 (the most expensive click), clean activations "
        "cached for every contender.",
        "- Peak memory = peak RSS above the RSS at the start of the op (Linux VmHWM after clear_refs).",
        "",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--big",
        action="store_true",
        help="time a randomly initialised model with SmolLM2-1.7B's shape (benchmarks/big.py) instead of "
        f"the embedded one: defaults --tokens 10, --ops {','.join(BIG_OPS)}, --max-cells {BIG_MAX_CELLS}, "
        f"--wb-heads {BIG_WB_HEADS}, no naive loop, TransformerLens weights frozen; writes results_big.md",
    )
    ap.add_argument("--tokens", default=None, help="prompt lengths, comma-separated (default 10,50,200)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions at T <= 10")
    ap.add_argument("--reps-large", type=int, default=1, help="repetitions at T > 10")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--max-cells", type=int, default=None, help="cells TL / naive run per sweep (sampled; default 60)"
    )
    ap.add_argument("--max-cells-large", type=int, default=12, help="the same at T > 10")
    ap.add_argument(
        "--wb-positions", type=int, default=4, help="positions Workbench runs at T > 10 (0 = all)"
    )
    ap.add_argument(
        "--wb-heads",
        type=int,
        default=None,
        help="heads per layer Workbench runs in per-head all-position sweeps (0 = all, the default)",
    )
    ap.add_argument("--ops", default="", help="comma-separated op keys (default: all)")
    ap.add_argument("--large-ops", default="resid_pre,attn_out,mlp_out,attribution,lens,single")
    ap.add_argument("--tl-python", default=str(ROOT / ".bench-venv" / "bin" / "python"))
    ap.add_argument("--skip-tl", action="store_true")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--out", default=None, help="default benchmarks/results.md (--big: results_big.md)")
    ap.add_argument("--render", default="", help="only re-render the table of --out from this results.json")
    args = ap.parse_args()
    big_defaults = dict(tokens="10", max_cells=BIG_MAX_CELLS, wb_heads=BIG_WB_HEADS, ops=",".join(BIG_OPS))
    plain_defaults = dict(tokens="10,50,200", max_cells=60, wb_heads=0, ops="")
    for name, value in (big_defaults if args.big else plain_defaults).items():
        if getattr(args, name) in (None, ""):
            setattr(args, name, value)
    if args.big:
        args.skip_naive = True
    args.out = args.out or str(ROOT / "benchmarks" / ("results_big.md" if args.big else "results.md"))
    if args.render:
        rows = json.loads(Path(args.render).read_text())
        for r in rows:
            bound = r.get("bound") or (r.get("bound_fwd") or 0) * r["T"] * 30  # 30 layers: the embedded model
            if bound and r.get("tl") and r.get("token_block"):
                r["tl_bound_ratio"] = r["tl"] / (bound * r["token_block"])
        old_text = Path(args.out).read_text()
        Path(args.out).write_text(old_text[: old_text.index("| op |")] + table(rows))
        return 0

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    import workbench as wb

    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load_start = os.getloadavg()
    model = wb.load()
    folder = model.load_info.get("folder")
    if args.big:  # the embedded model only lends its tokenizer
        from benchmarks import big

        folder = big.ensure(Path(folder))
        del model
        gc.collect()
        model = wb.load(str(folder))
    tl = None
    if not args.skip_tl:
        if not folder or not Path(args.tl_python).exists():
            print("TransformerLens venv or model folder missing: run `make bench` (it builds .bench-venv).")
        else:
            tl = TLWorker(
                args.tl_python,
                str(folder),
                args.threads,
                ROOT / "benchmarks" / "tl_worker.log",
                freeze=args.big,
            )
            print(f"TransformerLens worker: {tl.info}", flush=True)
    bench = Bench(args, model, tl)
    wanted = [o for o in OPS if not args.ops or o["key"] in args.ops.split(",")]
    large = set(args.large_ops.split(","))
    all_rows, per_T = [], {}
    try:
        for n_tokens in [int(x) for x in args.tokens.split(",")]:
            ops = wanted if n_tokens <= 10 else [o for o in wanted if o["key"] in large]
            print(f"T = {n_tokens}: {len(ops)} ops, threads {torch.get_num_threads()}", flush=True)
            rows = run_T(bench, n_tokens, ops)
            per_T[n_tokens] = {"fwd": rows[0]["fwd"], "tb": rows[0]["token_block"]}
            all_rows += rows
            print(table(rows), flush=True)
    finally:
        if tl is not None:
            tl.close()
    text = header(args, model, tl, load_start, os.getloadavg(), started, per_T) + table(all_rows)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(all_rows, indent=1, default=str))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
