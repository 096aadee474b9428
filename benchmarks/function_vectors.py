"""Issue 16 ("Speed"): every head's causal indirect effect, Workbench vs one forward per (head, prompt).

    python benchmarks/function_vectors.py [--threads 1] [--prompts 4] [--heads N] [--task antonyms]
    make bench-fv FV_ARGS="--prompts 4 --heads 40"

- The task: `wb.datasets.task("antonyms")`, 10-shot prompts (~96 tokens on the embedded model), `--prompts`
  of them (seed 0): each head's mean output at the last position over the clean prompts, patched into the
  shuffled-label prompts at the last position; the effect on p(answer). Embedded model: 30 layers x 9 heads.
- Peer: the authors' loop (Todd et al.'s `compute_indirect_effect`, last token) with plain PyTorch hooks on the
  same HF model (`model.hf`): one forward per clean prompt for the means, one per shuffled prompt unedited, and
  one per (head, prompt) with a pre-hook on that layer's output projection overwriting the head's slice at the
  last position. `--heads N` runs N sampled heads per prompt and extrapolates to all L x H (marked ~).
- Workbench: `wb.head_effects(model, task, n_shots=10, n_prompts=...)` (locally: the means in one traced
  forward, then the replay engine: each patched run starts at its head's layer, at the last position, from
  the cached shuffled run; the runs of every prompt share block calls).
- Printed: wall and CPU seconds, forward-pass equivalents (CPU time / one plain forward of a 10-shot prompt),
  the ratio, and the max abs difference of the effects on the heads the peer ran (must be below 1e-4).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def timed(fn):
    """(wall s, CPU s, output)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def peer(
    model, ds, heads: list[tuple[int, int]]
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """One plain-hook forward per (head, prompt): the effects [N, len(heads)], and the (wall, CPU) seconds of
    the fixed part (means, unedited runs) and of the per-head forwards."""
    t0, c0 = time.perf_counter(), time.process_time()
    per_wall = per_cpu = 0.0
    hf = model.hf
    blocks = hf.model.layers
    L, H, d = model.n_layers, model.n_heads, model.d_head
    tok = model.tokenizer
    ids = [tok(p, return_tensors="pt").input_ids for p in ds.clean]
    sums = torch.zeros(L, H * d)
    kept: dict[int, torch.Tensor] = {}

    def keep(j):
        def hook(_m, args):
            kept[j] = args[0][0, -1].detach().float()

        return hook

    handles = [blocks[j].self_attn.o_proj.register_forward_pre_hook(keep(j)) for j in range(L)]
    with torch.no_grad():
        for x in ids:
            hf(x, logits_to_keep=1)
            sums += torch.stack([kept[j] for j in range(L)])
    for h in handles:
        h.remove()
    means = sums / len(ids)
    out = np.zeros((len(ds), len(heads)), np.float32)
    for i, (prompt, answer) in enumerate(zip(ds.corrupt, ds.target, strict=True)):
        x = tok(prompt, return_tensors="pt").input_ids
        t = tok(answer, add_special_tokens=False).input_ids[0]
        with torch.no_grad():
            base = torch.softmax(hf(x, logits_to_keep=1).logits[0, -1].float(), -1)[t]
        t1, c1 = time.perf_counter(), time.process_time()
        for k, (layer, head) in enumerate(heads):
            cols = slice(head * d, (head + 1) * d)

            def put(_m, args, layer=layer, cols=cols):
                z = args[0].clone()
                z[0, -1, cols] = means[layer, cols].to(z.dtype)
                return (z, *args[1:])

            handle = blocks[layer].self_attn.o_proj.register_forward_pre_hook(put)
            with torch.no_grad():
                p = torch.softmax(hf(x, logits_to_keep=1).logits[0, -1].float(), -1)[t]
            handle.remove()
            out[i, k] = float(p - base)
        per_wall += time.perf_counter() - t1
        per_cpu += time.process_time() - c1
    fixed = (time.perf_counter() - t0 - per_wall, time.process_time() - c0 - per_cpu)
    return out, fixed, (per_wall, per_cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=4, help="n-shot prompts (both sides)")
    ap.add_argument("--heads", type=int, default=0, help="heads per prompt the peer runs, sampled (0 = all)")
    ap.add_argument("--task", default="antonyms")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import workbench as wb

    model = wb.load()
    task = wb.datasets.task(args.task)
    ds = task.dataset(10, args.prompts, seed=0)
    L, H = model.n_layers, model.n_heads
    every = [(layer, head) for layer in range(L) for head in range(H)]
    heads = every if not args.heads else sorted(random.Random(0).sample(every, args.heads))
    one_ids = model.to_tokens(ds.clean[0])
    with torch.no_grad():  # warm-up, and the cost of one plain forward of a 10-shot prompt
        for _ in range(3):
            model.hf(one_ids, logits_to_keep=1)
        one_wall, one_cpu, _ = timed(lambda: [model.hf(one_ids, logits_to_keep=1) for _ in range(10)])
    one_wall, one_cpu = one_wall / 10, one_cpu / 10
    wb.head_effects(model, task, n_shots=10, n_prompts=1, progress=False)  # warm-up
    w_wall, w_cpu, cie = timed(
        lambda: wb.head_effects(model, task, n_shots=10, n_prompts=args.prompts, progress=False)
    )
    effects, fixed, per_head = peer(model, ds, heads)
    # the peer's forwards: N (means) + N (shuffled, unedited) + N per head; its per-head part scaled to L x H
    full = 2 * args.prompts + args.prompts * len(every)
    scale = len(every) / len(heads)
    mark = "~" if scale != 1 else ""
    p_wall = fixed[0] + per_head[0] * scale
    p_cpu = fixed[1] + per_head[1] * scale
    ours = np.stack([cie.per_example[:, layer, head] for layer, head in heads], 1)
    diff = float(np.abs(ours - effects).max())
    n_tokens = one_ids.shape[1]
    lines = [
        f"head_effects: {args.prompts} prompts x {L} x {H} = {args.prompts * L * H} patched runs, task {args.task!r}, "
        f"10-shot (~{n_tokens} tokens); threads {args.threads}; peer heads {len(heads)}/{len(every)} per prompt",
        f"one plain forward of a 10-shot prompt: {one_wall * 1e3:.1f} ms wall, {one_cpu * 1e3:.1f} ms CPU",
        f"Workbench: {w_wall:.2f} s wall, {w_cpu:.2f} s CPU = {w_cpu / one_cpu:.1f} forward-equivalents (CPU)",
        f"peer (one forward per (head, prompt), {full} forwards): {mark}{p_wall:.2f} s wall, {mark}{p_cpu:.2f} s CPU = "
        f"{mark}{p_cpu / one_cpu:.1f} forward-equivalents",
        f"ratio peer / Workbench: {mark}{p_wall / w_wall:.1f}x wall, {mark}{p_cpu / w_cpu:.1f}x CPU; "
        f"max abs diff of the effects on the peer's heads {diff:.1e}",
    ]
    print("\n".join(lines))
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
