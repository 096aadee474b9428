"""Issue 16 ("Speed"): SteerView shows the first generated token within 1.5x the time of one plain forward.

    python benchmarks/steer_latency.py [--reps 15] [--threads 1] [--tokens 24] [--sweep 3]
    make bench-steer STEER_ARGS="--reps 30"

- The embedded model; the prompt "I went to the park today and" (7 tokens); the vector "The food was delicious"
  minus "The food was" at layer 6 (`positive=`/`negative=`, computed when the view is made), scale 0.5.
- Click to first token: the time from the view's message handler receiving {"kind": "generate"} (what a click on
  Generate sends) to the view sending the first "stream"/"step" message (the first generated token, here both
  the unsteered and the steered row's). It covers the job hand-off to the model's worker thread, tokenizing,
  the nnsight generate set-up, the prompt's forward pass of the batch [unsteered, steered] (2 rows) and the
  message itself. The rest of the generation (`--tokens`) runs after it and is not timed.
- One plain forward: `model.hf(ids)` of the prompt alone (batch 1, full logits, no hooks, no nnsight) under
  torch.no_grad: the cheapest way to get the first token's distribution at all.
- The two are interleaved rep by rep (the load of the shared machine hits both alike); warm-up reps are not
  counted. Printed: median and min of each (wall ms, and the process's CPU ms over the same span) and the
  ratios. `--sweep N` repeats the click with N more scales (a batch of 2 + N rows): the cost of a sweep.
- Writes benchmarks/results_steer.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PROMPT = "I went to the park today and"
POSITIVE, NEGATIVE = "The food was delicious", "The food was"
LAYER, SCALE = 6, 0.5
TARGET = 1.5


def click_to_first_token(view, reps: int, warm: int) -> tuple[list[float], list[float]]:
    """(wall s, CPU s) from the "generate" message to the first "step" message, per rep."""
    wall, cpu = [], []
    for i in range(warm + reps):
        first = threading.Event()
        stamp: dict[str, float] = {}
        real = type(view).send

        def send(content, buffers=None, _stamp=stamp, _first=first, _real=real):
            if content.get("event") == "step" and not _first.is_set():
                _stamp["wall"], _stamp["cpu"] = time.perf_counter(), time.process_time()
                _first.set()
            return _real(view, content, buffers=buffers)

        view.send = send
        t0, c0 = time.perf_counter(), time.process_time()
        view._on_msg(view, {"kind": "generate", "id": f"bench{i}"}, [])
        if not first.wait(120):
            raise RuntimeError(f"no token streamed: status {view.status!r}, error {view.error!r}")
        view.wait(300)
        del view.send
        if view.error:
            raise RuntimeError(view.error)
        if i >= warm:
            wall.append(stamp["wall"] - t0)
            cpu.append(stamp["cpu"] - c0)
    return wall, cpu


def plain_forward(model, ids: torch.Tensor) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        model.hf(ids)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--tokens", type=int, default=24, help="max_new_tokens of each run (not timed past the first)"
    )
    ap.add_argument(
        "--sweep", type=int, default=3, help="extra scales for the sweep measurement (0: skip it)"
    )
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import workbench as wb

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_start = os.getloadavg()
    model = wb.load()
    ids = model.to_tokens(PROMPT)
    view = wb.SteerView(
        model,
        PROMPT,
        positive=POSITIVE,
        negative=NEGATIVE,
        layer=LAYER,
        scale=SCALE,
        max_new_tokens=args.tokens,
    )
    view.wait(300)

    rows: dict[str, tuple[list[float], list[float]]] = {"plain": ([], []), "click": ([], [])}
    sweep_rows: dict[str, tuple[list[float], list[float]]] = {"plain": ([], []), "click": ([], [])}
    for _ in range(args.warm):
        plain_forward(model, ids)
    for _ in range(args.reps):  # interleaved: one plain forward, one click
        w, c = plain_forward(model, ids)
        rows["plain"][0].append(w)
        rows["plain"][1].append(c)
        cw, cc = click_to_first_token(view, 1, 0 if rows["click"][0] else args.warm)
        rows["click"][0].extend(cw)
        rows["click"][1].extend(cc)
    text = str(view.run.get("text", ""))
    check = wb.steer(
        model,
        PROMPT,
        vector=(POSITIVE, NEGATIVE),
        layer=LAYER,
        scale=SCALE,
        max_new_tokens=args.tokens,
        progress=False,
    )
    same = text == str(check)
    if args.sweep:
        view.sweep = [SCALE * (k + 2) for k in range(args.sweep)]
        for _ in range(args.reps):
            w, c = plain_forward(model, ids)
            sweep_rows["plain"][0].append(w)
            sweep_rows["plain"][1].append(c)
            cw, cc = click_to_first_token(view, 1, 0 if sweep_rows["click"][0] else 1)
            sweep_rows["click"][0].extend(cw)
            sweep_rows["click"][1].extend(cc)
    load_end = os.getloadavg()

    def ms(xs: list[float]) -> str:
        return f"{1000 * statistics.median(xs):.1f} (min {1000 * min(xs):.1f})"

    def ratio(a: list[float], b: list[float]) -> tuple[float, float]:
        return statistics.median(a) / statistics.median(b), min(a) / min(b)

    r_med, r_min = ratio(rows["click"][0], rows["plain"][0])
    c_med, c_min = ratio(rows["click"][1], rows["plain"][1])
    verdict = "met" if r_med <= TARGET else "**missed**"
    lines = [
        f"Run {started} UTC (`benchmarks/steer_latency.py {' '.join(sys.argv[1:])}`), torch threads {args.threads}; "
        f"load average at start {', '.join(f'{x:.1f}' for x in load_start)}, at end "
        f"{', '.join(f'{x:.1f}' for x in load_end)} (2 cores shared with other engineers' jobs).",
        "",
        f"Embedded SmolLM2-135M, prompt {PROMPT!r} ({ids.shape[1]} tokens), vector {POSITIVE!r} - {NEGATIVE!r} at "
        f"layer {LAYER}, scale {SCALE}, {args.reps} interleaved reps after {args.warm} warm-up. Click to first "
        "token = the view's message handler receiving 'generate' -> the first 'step' message sent (batch of "
        "[unsteered, steered]). Plain forward = `model.hf(ids)`, batch 1, no hooks.",
        "",
        "| measurement | wall ms, median (min) | CPU ms, median (min) |",
        "|---|---|---|",
        f"| one plain forward | {ms(rows['plain'][0])} | {ms(rows['plain'][1])} |",
        f"| SteerView click -> first token | {ms(rows['click'][0])} | {ms(rows['click'][1])} |",
    ]
    if args.sweep:
        lines.append(
            f"| plain forward (during the sweep reps) | {ms(sweep_rows['plain'][0])} | {ms(sweep_rows['plain'][1])} |"
        )
        lines.append(
            f"| click -> first token, sweep of {args.sweep} more scales ({2 + args.sweep} rows) | "
            f"{ms(sweep_rows['click'][0])} | {ms(sweep_rows['click'][1])} |"
        )
    lines += [
        "",
        f"Click to first token / one plain forward: **{r_med:.2f}x** (medians; {r_min:.2f}x of the minima), CPU "
        f"{c_med:.2f}x ({c_min:.2f}x): target <= {TARGET}x {verdict}.",
    ]
    if args.sweep:
        s_med, s_min = ratio(sweep_rows["click"][0], sweep_rows["plain"][0])
        lines.append(
            f"With a sweep of {args.sweep} more scales ({2 + args.sweep} rows in the batch): **{s_med:.2f}x** "
            f"({s_min:.2f}x of the minima); the target is stated for one steered run, a sweep costs its extra rows."
        )
    lines.append(f"The view's steered text equals wb.steer with the same settings: {same}.")
    out_text = "\n".join(lines) + "\n"
    print(out_text)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results_steer.md"
    out.write_text(out_text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
