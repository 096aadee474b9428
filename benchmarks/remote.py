"""The remote column: requests and time per op on a real local NDIF server, against the same op run locally.

Run with `make bench-remote` (starts the NDIF stack in a network namespace and runs this inside it, with
WORKBENCH_NDIF_URL / WORKBENCH_NDIF_MODEL set). Writes benchmarks/results_remote.md.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import workbench as wb

CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum is located in the city of"
REPS = int(os.environ.get("BENCH_REPS", "3"))


def _values(result: Any) -> np.ndarray:
    if isinstance(result, float):
        return np.array([float(result)])
    for name in ("values", "top_probs", "patterns"):
        if hasattr(result, name):
            return np.asarray(getattr(result, name), dtype=np.float32)
    raise TypeError(type(result))


def main() -> int:
    import nnsight
    from nnsight.intervention.backends.remote import RemoteBackend

    url, folder = os.environ["WORKBENCH_NDIF_URL"], os.environ["WORKBENCH_NDIF_MODEL"]
    nnsight.CONFIG.API.HOST = url
    nnsight.CONFIG.API.APIKEY = os.environ.get("NDIF_API_KEY", "local-bench")
    nnsight.CONFIG.APP.REMOTE_LOGGING = False
    remote, local = wb.load(folder, remote=True), wb.load(folder)
    metric = wb.logit_diff(" Paris", " Rome")
    ops: list[tuple[str, Callable[[wb.Model], Any]]] = [
        ("logit lens (top-5, all layers)", lambda m: wb.logit_lens(m, CLEAN)),
        ("single-cell patch", lambda m: wb.patch(m, CLEAN, CORRUPT, metric=metric, layer=12, position=3)),
        ("resid_pre sweep", lambda m: wb.patch_sweep(m, CLEAN, CORRUPT, metric=metric, site="resid_pre")),
        ("mlp_out sweep", lambda m: wb.patch_sweep(m, CLEAN, CORRUPT, metric=metric, site="mlp_out")),
        (
            "head sweep (layer x head)",
            lambda m: wb.patch_sweep(m, CLEAN, CORRUPT, metric=metric, site="head"),
        ),
        ("attribution (resid_pre)", lambda m: wb.attribution_patch(m, CLEAN, CORRUPT, metric=metric)),
        ("attention (all layers)", lambda m: wb.attention(m, CLEAN)),
        ("zero ablation", lambda m: wb.ablate(m, CLEAN, metric=metric, site="mlp_out", layer=5)),
    ]
    sent: list[int] = []
    original = RemoteBackend.request

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(1)
        return original(self, *args, **kwargs)

    RemoteBackend.request = counting
    rows = []
    for name, op in ops:
        remote_times, local_times, requests = [], [], []
        diff = 0.0
        for _ in range(REPS):
            before = len(sent)
            t0 = time.perf_counter()
            r = op(remote)
            remote_times.append(time.perf_counter() - t0)
            requests.append(len(sent) - before)
            t0 = time.perf_counter()
            lo = op(local)
            local_times.append(time.perf_counter() - t0)
            diff = max(diff, float(np.abs(_values(r) - _values(lo)).max()))
        rows.append(
            (
                name,
                statistics.median(requests),
                statistics.median(remote_times),
                statistics.median(local_times),
                diff,
            )
        )
        print(
            f"{name:32s} requests {rows[-1][1]:.0f}  remote {rows[-1][2]:.2f} s  local {rows[-1][3]:.2f} s  "
            f"max |diff| {diff:.2e}",
            flush=True,
        )
    lines = [
        "# Remote column: Workbench ops on a local NDIF server",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, nnsight {nnsight.__version__}. "
        f"Server: ndif 0.1.2 on this machine (CPU model actor, float32) in a network namespace; "
        f"model SmolLM2-135M-Instruct; {REPS} repetitions, medians. Prompts: {CLEAN!r} / {CORRUPT!r}. "
        f"Load average at the end: {os.getloadavg()[0]:.1f} (other work on the machine slows the local column: "
        "torch's OpenMP threads spin when the cores are busy).",
        "",
        "| op | requests | remote (s) | local (s) | max abs diff remote vs local |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {q:.0f} | {rt:.2f} | {lt:.2f} | {d:.1e} |" for n, q, rt, lt, d in rows]
    lines += [
        "",
        "Every user action is one request (a sweep is one batched trace). Remote time includes the request "
        "round trip through the NDIF API, queue and object store on the same 2-core machine that runs the "
        "local column, so it measures overhead, not a GPU server.",
    ]
    out = Path(__file__).with_name("results_remote.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0 if all(r[1] == 1 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
