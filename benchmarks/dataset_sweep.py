"""Issue 13 ("Speed", "Batching"): a resid_pre patch sweep over a dataset of IOI pairs, Workbench vs
TransformerLens's batched `get_act_patch_resid_pre` on the same batch, and the cost per example as the
dataset grows.

    python benchmarks/dataset_sweep.py [--n 32] [--tl-cells 24] [--threads 1] [--roles]

- The dataset: `wb.Dataset.from_template` over one IOI template with single-token names (ABC corruption:
  the second B becomes C), every pair 15 tokens, each example's own target ({A}) and foil ({B}).
- Workbench: `wb.patch_sweep(model, ds, metric=wb.logit_diff())` from cold (no cached runs).
- TransformerLens (its own venv, `.bench-venv`, as `make bench` builds it; `tl_worker.py`, kind
  "dataset"): `get_act_patch_resid_pre` on the [N, T] batch with a batch-mean logit difference, the clean
  `run_with_cache` of the batch in the timed region. Every cell is one forward of the whole batch, so it
  runs `--tl-cells` sampled cells and its sweep time is extrapolated per cell (~); the max abs difference
  of the mean grid is over those cells.
- Cost per example: the dataset sweep of the first N examples (N = 1, 4, 16, and the full run) against N
  single-pair sweeps (`wb.patch_sweep(model, clean, corrupt, ...)`, cold; the per-example engine call the
  dataset path made before the stacked replay). Single-pair sweeps of 4 examples are timed; their cost per
  example is flat in N by construction.
- `--roles`: align="roles" over 3 examples, the replay (several positions of one site and layer per run)
  against the traced engine (`fast.disabled()`), which it used before.
- Peak memory: peak RSS above the start of the op (Linux VmHWM after clear_refs), in each process.
"""

from __future__ import annotations

import argparse
import itertools
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

TEMPLATE = "Then,{A} and{B} went to the park.{B} gave a ball to"
CORRUPT = "Then,{A} and{B} went to the park.{C} gave a ball to"
NAMES = [" Mary", " John", " Tom", " James", " Anna", " Paul", " Mark", " Sarah", " David", " Kate", " Lisa",
         " Peter", " Jack", " Emma", " Alice", " Bob", " Sam", " Mike"]  # fmt: skip


def ioi(model, n: int):
    """n IOI pairs from one template, names that are one token each, all of one length."""
    from workbench.data.dataset import Dataset

    names = [x for x in NAMES if model.to_tokens(x, what="name").shape[1] == 1]
    rng = random.Random(0)
    triples = list(itertools.permutations(names, 3))
    rng.shuffle(triples)
    rows = [{"A": a, "B": b, "C": c} for a, b, c in triples[:n]]
    return Dataset.from_template(TEMPLATE, rows=rows, corrupt=CORRUPT, target="{A}", foil="{B}")


CPU: dict[int, float] = {}  # id of a timed op's output -> its CPU seconds


def timed(fn):
    """(wall seconds, peak RSS above the start, output); the op's CPU seconds go to CPU[id(output)]."""
    base = rss_reset()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    CPU[id(out)] = time.process_time() - c0
    return time.perf_counter() - t0, peak_since(base), out


def quiet(_fraction: float, _message: str) -> None:
    """A progress callback that prints nothing (no tqdm bar in the timings)."""


def cold() -> None:
    from workbench.engine import replay as F

    F._BASELINES.clear()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="examples in the dataset")
    ap.add_argument("--scan", default="1,4,16", help="smaller N for the cost per example (plus --n)")
    ap.add_argument("--singles", type=int, default=4, help="single-pair sweeps timed")
    ap.add_argument("--tl-cells", type=int, default=24, help="sampled cells TransformerLens runs (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--roles", action="store_true", help="also time align='roles' (3 examples) vs traced")
    ap.add_argument("--tl-python", default=str(ROOT / ".bench-venv" / "bin" / "python"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    import workbench as wb
    from benchmarks.run import TLWorker

    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load_start = os.getloadavg()
    model = wb.load()
    ds = ioi(model, args.n)
    from workbench.data.align import alignment

    al = alignment(model, ds, "exact")
    T = al.clean_ids[0].shape[1]
    L = model.n_layers
    print(f"{len(ds)} IOI pairs, T = {T}, e.g. {ds[0].clean!r} / {ds[0].corrupt!r}", flush=True)
    metric = wb.logit_diff()
    tl = TLWorker(
        args.tl_python, model.load_info["folder"], args.threads, ROOT / "benchmarks" / "tl_worker.log"
    )
    print(f"TransformerLens worker: {tl.info}", flush=True)
    # warm both (imports, packed weights) on a one-example run
    wb.patch_sweep(model, ds[:1], metric=metric, progress=quiet)
    tok = model.tokenizer
    targets = [tok(e.target, add_special_tokens=False)["input_ids"][0] for e in ds]
    foils = [tok(e.foil, add_special_tokens=False)["input_ids"][0] for e in ds]
    cells = [[lyr, p] for lyr in range(L) for p in range(T)]
    sample = cells if not args.tl_cells else sorted(random.Random(1).sample(cells, args.tl_cells))
    req = dict(cmd="op", kind="dataset", clean=[c[0].tolist() for c in al.clean_ids],
               corrupt=[k[0].tolist() for k in al.corrupt_ids], targets=targets, foils=foils)  # fmt: skip
    tl.ask(
        {
            **req,
            "clean": req["clean"][:2],
            "corrupt": req["corrupt"][:2],
            "targets": targets[:2],
            "foils": foils[:2],
            "cells": sample[:1],
        }
    )  # fmt: skip  (warm)

    # 1. the full dataset, Workbench then TransformerLens
    cold()
    t_wb, peak_wb, res = timed(lambda: wb.patch_sweep(model, ds, metric=metric, progress=quiet))
    cpu_wb = CPU[id(res)]
    print(f"Workbench: {t_wb:.2f} s ({cpu_wb:.2f} CPU s), peak {peak_wb / 2**20:.0f} MB", flush=True)
    ans = tl.ask({**req, "cells": None if not args.tl_cells else sample})
    per_cell = (ans["time"] - ans["setup"]) / len(sample)
    t_tl = ans["setup"] + per_cell * len(cells)
    cpu_cell = (ans["cpu"] - ans["setup_cpu"]) / len(sample)
    cpu_tl = ans["setup_cpu"] + cpu_cell * len(cells)
    wb_on_sample = np.array([res.values[lyr, p] for lyr, p in sample])
    diff = float(np.abs(wb_on_sample - np.array(ans["values"])).max())
    print(f"TransformerLens: {'~' if args.tl_cells else ''}{t_tl:.2f} s ({per_cell:.3f} s per cell, "
          f"clean cache {ans['setup']:.2f} s), peak {ans['peak'] / 2**20:.0f} MB; max abs diff {diff:.1e}",
          flush=True)  # fmt: skip
    assert diff <= 1e-3, f"Workbench and TransformerLens differ by {diff}"

    # 2. cost per example: the dataset sweep of N examples vs N single-pair sweeps
    scan = {}
    for n in [int(x) for x in args.scan.split(",") if x]:
        cold()
        t, peak, out = timed(lambda n=n: wb.patch_sweep(model, ds[:n], metric=metric, progress=quiet))
        scan[n] = (t, peak, CPU[id(out)])
        print(
            f"dataset N={n}: {t:.2f} s, {t / n:.3f} s per example ({CPU[id(out)] / n:.3f} CPU s)", flush=True
        )
    scan[len(ds)] = (t_wb, peak_wb, cpu_wb)
    singles = []
    for i in range(args.singles):
        e = ds[i]
        cold()
        t, peak, one = timed(lambda e=e: wb.patch_sweep(model, e.clean, e.corrupt,
                                                         metric=wb.logit_diff(e.target, e.foil), progress=quiet))  # fmt: skip
        singles.append((t, peak, CPU[id(one)]))
        gap = float(np.abs(one.values - res.per_example[i]).max())
        assert gap <= 1e-4, f"example {i}: the dataset sweep differs from its single-pair sweep by {gap}"
    single_s = float(np.mean([t for t, _, _ in singles]))
    single_cpu = float(np.mean([c for _, _, c in singles]))
    single_peak = max(p for _, p, _ in singles)
    print(f"single-pair sweep: {single_s:.3f} s per example (mean of {len(singles)})", flush=True)

    roles = None
    if args.roles:
        from workbench.engine import fast

        few = ds[:3]
        cold()
        t_fast, _, r_fast = timed(
            lambda: wb.patch_sweep(model, few, metric=metric, align="roles", progress=quiet)
        )
        with fast.disabled():
            t_plain, _, r_plain = timed(lambda: wb.patch_sweep(model, few, metric=metric, align="roles",
                                                               progress=quiet))  # fmt: skip
        gap = float(np.abs(r_fast.per_example - r_plain.per_example).max())
        roles = (t_fast, t_plain, gap, len(r_fast.columns))
        print(f"roles (3 examples, {len(r_fast.columns)} columns): replay {t_fast:.2f} s, traced {t_plain:.2f} s,"
              f" max abs diff {gap:.1e}", flush=True)  # fmt: skip
    tl.close()
    load_end = os.getloadavg()

    # the report
    tilde = "~" if args.tl_cells else ""
    lines = [
        f"Run {started} UTC (`benchmarks/dataset_sweep.py {' '.join(sys.argv[1:])}`), torch threads {args.threads} "
        f"in both processes; load average at start {', '.join(f'{x:.1f}' for x in load_start)}, at end "
        f"{', '.join(f'{x:.1f}' for x in load_end)} (2 cores shared with other engineers' jobs). CPU s = the "
        "process's CPU time over the op (one thread: less sensitive to the load than wall time).",
        "",
        f"resid_pre sweep over {len(ds)} IOI pairs, T = {T} ({L} layers x {T} positions = {L * T} cells, "
        "mean logit difference of each example's target and foil):",
        "",
        "| | wall s | CPU s | examples / s (wall) | peak MB | max abs diff of the mean grid vs WB |",
        "|---|---|---|---|---|---|",
        f"| Workbench `wb.patch_sweep(model, ds)` | {t_wb:.2f} | {cpu_wb:.2f} | {len(ds) / t_wb:.3f} "
        f"| {peak_wb / 2**20:.0f} | — |",
        f"| TransformerLens batched `get_act_patch_resid_pre` | {tilde}{t_tl:.2f} | {tilde}{cpu_tl:.2f} "
        f"| {len(ds) / t_tl:.3f} | {ans['peak'] / 2**20:.0f} | {diff:.1e} |",
        "",
        f"TL / WB = **{t_tl / t_wb:.1f}x** wall, **{cpu_tl / cpu_wb:.1f}x** CPU (target >= 10x)."
        + (
            f" TransformerLens ran {len(sample)} sampled cells ({per_cell:.2f} s each: one forward of the "
            f"[{len(ds)}, {T}] batch) plus its clean cache ({ans['setup']:.2f} s), extrapolated to {len(cells)}."
            if args.tl_cells
            else ""
        ),
        "",
        "Cost per example, dataset sweep of the first N examples vs N single-pair sweeps "
        f"(single-pair: mean of {len(singles)} cold sweeps, {single_s:.2f} s / {single_cpu:.2f} CPU s each, "
        f"peak {single_peak / 2**20:.0f} MB):",
        "",
        "| N | dataset wall s | wall s / example | CPU s / example | N single-pair sweeps wall s "
        "| single / dataset (CPU) | peak MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sorted(scan):
        t, peak, cpu = scan[n]
        lines.append(f"| {n} | {t:.2f} | {t / n:.3f} | {cpu / n:.3f} | {'~' if n > len(singles) else ''}"
                     f"{single_s * n:.2f} | {single_cpu * n / cpu:.2f}x | {peak / 2**20:.0f} |")  # fmt: skip
    if roles:
        t_fast, t_plain, gap, n_cols = roles
        lines += ["", f"align='roles' over 3 examples ({n_cols} columns): replay {t_fast:.2f} s, traced engine "
                      f"{t_plain:.2f} s ({t_plain / t_fast:.1f}x), max abs diff {gap:.1e}."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (ROOT / "benchmarks" / "results_datasets.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
