"""Issue 15 ("Speed"): a patchscope over all L x T source states, Workbench vs one forward per state.

    python benchmarks/patchscope.py [--threads 1] [--states N]
    make bench-patchscope PATCHSCOPE_ARGS="--states 60"

- The source: "The Eiffel Tower is located in the city of" (10 tokens) on the embedded model; the target
  prompt the identity prompt "cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?", the state written at its last
  position in the same layer (resid_post); the next-token top-5 read at the target's last position.
- Peer: plain PyTorch forward hooks on the same HF model (`model.hf`): one forward of the source keeps every
  block output; then one forward of the target prompt per state, a hook on the block overwriting the
  target position with that state (`logits_to_keep=1`). `--states N` runs N sampled states and extrapolates
  (marked ~).
- Workbench: `wb.patchscope(model, prompt)` (locally the replay engine: every run starts at its target layer
  from the cached target run, the runs of one layer sharing block calls).
- Printed: wall and CPU seconds, forward-pass equivalents (time / one plain forward of the target prompt),
  the ratio, and the max abs difference of the top-5 probabilities (top-1 ids must agree).
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

PROMPT = "The Eiffel Tower is located in the city of"


def timed(fn):
    """(wall s, CPU s, output)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def peer(model, source: torch.Tensor, target: torch.Tensor, states: list[tuple[int, int]], k: int):
    """One plain-hook forward per state: (top ids [n, k], top probs [n, k])."""
    hf = model.hf
    blocks = hf.model.layers
    kept: dict[int, torch.Tensor] = {}

    def keep(j):
        def hook(_m, _a, out):
            kept[j] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        return hook

    handles = [b.register_forward_hook(keep(j)) for j, b in enumerate(blocks)]
    with torch.no_grad():
        hf(source, logits_to_keep=1)
    for h in handles:
        h.remove()
    ids, probs = [], []
    pos = target.shape[1] - 1
    for layer, t in states:
        state = kept[layer][0, t]

        def put(_m, _a, out, state=state):
            (out[0] if isinstance(out, tuple) else out)[0, pos] = state

        handle = blocks[layer].register_forward_hook(put)
        with torch.no_grad():
            logits = hf(target, logits_to_keep=1).logits[0, -1].float()
        handle.remove()
        top = torch.softmax(logits, -1).topk(k)
        ids.append(top.indices)
        probs.append(top.values)
    return torch.stack(ids).numpy(), torch.stack(probs).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--states", type=int, default=0, help="states the peer runs, sampled (0 = all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import workbench as wb
    from workbench.ops.patchscope import IDENTITY_PROMPT

    model = wb.load()
    source = model.to_tokens(PROMPT)
    target = model.to_tokens(IDENTITY_PROMPT)
    n_layers, n_tokens, k = model.n_layers, source.shape[1], 5
    every = [(layer, t) for layer in range(n_layers) for t in range(n_tokens)]
    states = every if not args.states else sorted(random.Random(0).sample(every, args.states))
    with torch.no_grad():  # warm-up, and the cost of one plain forward of the target prompt
        for _ in range(3):
            model.hf(target, logits_to_keep=1)
        one_wall, one_cpu, _ = timed(lambda: [model.hf(target, logits_to_keep=1) for _ in range(10)])
    one_wall, one_cpu = one_wall / 10, one_cpu / 10
    wb.patchscope(model, PROMPT, layers=[0], positions=[0], progress=False)  # warm-up
    w_wall, w_cpu, ps = timed(lambda: wb.patchscope(model, PROMPT, progress=False))
    p_wall, p_cpu, (p_ids, p_probs) = timed(lambda: peer(model, source, target, states, k))
    scale = len(every) / len(states)
    mark = "~" if scale != 1 else ""
    p_wall, p_cpu = p_wall * scale, p_cpu * scale
    ours_ids = np.stack([ps.top_ids[layer, t] for layer, t in states])
    ours_probs = np.stack([ps.top_probs[layer, t] for layer, t in states])
    same_top1 = bool((ours_ids[:, 0] == p_ids[:, 0]).all())
    diff = float(np.abs(ours_probs - p_probs).max())
    lines = [
        f"patchscope over {n_layers} x {n_tokens} = {len(every)} states, identity target prompt "
        f"({target.shape[1]} tokens), top-{k}; threads {args.threads}; peer states {len(states)}/{len(every)}",
        f"one plain forward of the target prompt: {one_wall * 1e3:.1f} ms wall, {one_cpu * 1e3:.1f} ms CPU",
        f"Workbench: {w_wall:.2f} s wall, {w_cpu:.2f} s CPU = {w_cpu / one_cpu:.1f} forward-equivalents (CPU)",
        f"peer (one forward per state): {mark}{p_wall:.2f} s wall, {mark}{p_cpu:.2f} s CPU = "
        f"{mark}{p_cpu / one_cpu:.1f} forward-equivalents",
        f"ratio peer / Workbench: {mark}{p_wall / w_wall:.1f}x wall, {mark}{p_cpu / w_cpu:.1f}x CPU; "
        f"top-1 equal: {same_top1}; max abs diff of the top-{k} probabilities {diff:.1e}",
    ]
    print("\n".join(lines))
    return 0 if same_top1 and diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
