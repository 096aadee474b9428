"""Tidy pandas frames: one row per cell, the result's options in `frame.attrs["options"]`.

Layouts (columns):
- SweepResult: layer, position, token, head, value, normalized, site — positions/tokens are <NA> for
  [layer, head] sweeps and heads <NA> for [layer, position] sweeps. Row order is C order of `.values`.
- LensResult, what="cells" (default): layer, position, token, top_token, top_prob, entropy, kl
  (+ target, target_prob, target_rank with token=...); what="topk": one row per (layer, position, k):
  layer, position, token, k (1 = most likely), pred_token, pred_id, prob.
- AttentionResult: layer, head, query, query_token, key, key_token, value.
- Value, what="value" (default): one row: op, site, layer, position, head, metric, value, clean,
  corrupt, normalized (a joint op, cells= or intervene: one row per place, each with the joint run's
  value); what="topk": k, token, token_id, prob.
- SteerResult: run ("prompt" / "baseline" / "steered"), text, layer, scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import WorkbenchError
from .theme import check_choice, check_unknown


def _pd():
    import pandas as pd

    return pd


def _finish(df, result):
    df.attrs["options"] = dict(getattr(result, "options", {}) or {})
    return df


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
    return [ix.reshape(-1) for ix in np.indices(shape)] if shape else []


def sweep_frame(result, **unknown: Any):
    pd = _pd()
    check_unknown("SweepResult.to_frame()", unknown, [])
    values = np.asarray(result.values)
    axes = tuple(result.axes)
    if values.ndim != len(axes):
        raise WorkbenchError(f"The sweep's values have shape {values.shape} but its axes are {axes}.")
    idx = dict(zip(axes, _grid(values.shape), strict=True))
    n = values.size
    tokens = np.asarray(list(result.tokens) + [None], dtype=object)
    pos = idx.get("position")
    df = pd.DataFrame(
        {
            "layer": pd.array(idx["layer"], dtype="Int64"),
            "position": pd.array(pos if pos is not None else [pd.NA] * n, dtype="Int64"),
            "token": pd.array(
                tokens[np.minimum(pos, len(tokens) - 1)] if pos is not None else [pd.NA] * n, dtype="string"
            ),
            "head": pd.array(idx["head"] if "head" in idx else [pd.NA] * n, dtype="Int64"),
            "value": values.reshape(-1),
            "normalized": np.asarray(result.normalized).reshape(-1),
            "site": pd.array([result.options.get("site")] * n, dtype="string"),
        }
    )
    return _finish(df, result)


def _ids(result, name: str, index: np.ndarray) -> np.ndarray:
    """Grid indices as the model's layers / positions: a patchscope over chosen ones names them in `name`."""
    chosen = getattr(result, name, None)
    return np.asarray(chosen)[index] if chosen else index


def lens_frame(result, *, what: str = "cells", token: str | int | None = None, **unknown: Any):
    pd = _pd()
    check_unknown("LensResult.to_frame()", unknown, ["what", "token"])
    check_choice("what", what, ("cells", "topk"))
    probs = np.asarray(result.top_probs)
    n_l, n_t, k = probs.shape
    tokens = list(result.tokens)
    if what == "topk":
        if token is not None:
            raise WorkbenchError("token= applies to what='cells'.")
        li, ti, ki = _grid((n_l, n_t, k))
        df = pd.DataFrame(
            {
                "layer": _ids(result, "layer_ids", li),
                "position": _ids(result, "positions", ti),
                "token": pd.array([tokens[t] for t in ti], dtype="string"),
                "k": ki + 1,
                "pred_token": pd.array(
                    [result.top_tokens[a][b][c] for a, b, c in zip(li, ti, ki, strict=True)], dtype="string"
                ),
                "pred_id": np.asarray(result.top_ids).reshape(-1),
                "prob": probs.reshape(-1),
            }
        )
        return _finish(df, result)
    li, ti = _grid((n_l, n_t))
    cols: dict[str, Any] = {
        "layer": _ids(result, "layer_ids", li),
        "position": _ids(result, "positions", ti),
        "token": pd.array([tokens[t] for t in ti], dtype="string"),
        "top_token": pd.array(
            [result.top_tokens[a][b][0] for a, b in zip(li, ti, strict=True)], dtype="string"
        ),
        "top_prob": probs[..., 0].reshape(-1),
        "entropy": np.asarray(result.entropy).reshape(-1),
        "kl": np.asarray(result.kl).reshape(-1),
    }
    if token is not None:
        cols["target"] = pd.array([str(token)] * li.size, dtype="string")
        cols["target_prob"] = np.asarray(result.prob(token)).reshape(-1)
        cols["target_rank"] = np.asarray(result.rank(token)).reshape(-1)
    return _finish(pd.DataFrame(cols), result)


def attention_frame(result, **unknown: Any):
    pd = _pd()
    check_unknown("AttentionResult.to_frame()", unknown, [])
    pat = np.asarray(result.patterns)
    if pat.ndim != 4:
        raise WorkbenchError(f"Attention patterns must be [L, H, T, T]; this result's are {pat.shape}.")
    li, hi, qi, ki = _grid(pat.shape)
    layers = np.asarray([int(x) for x in result.layers] or [0], dtype=np.int64)
    tokens = np.asarray(list(result.tokens), dtype=object)
    df = pd.DataFrame(
        {
            "layer": layers[li] if li.size else li,
            "head": hi,
            "query": qi,
            "query_token": pd.array(tokens[qi] if qi.size else [], dtype="string"),
            "key": ki,
            "key_token": pd.array(tokens[ki] if ki.size else [], dtype="string"),
            "value": pat.reshape(-1),
        }
    )
    return _finish(df, result)


def value_frame(v, *, what: str = "value", **unknown: Any):
    pd = _pd()
    check_unknown("Value.to_frame()", unknown, ["what"])
    check_choice("what", what, ("value", "topk"))
    if what == "topk":
        probs = np.asarray(getattr(v, "top_probs", np.zeros(0)), dtype=np.float32).reshape(-1)
        ids = np.asarray(getattr(v, "top_ids", np.zeros(0)), dtype=np.int64).reshape(-1)
        toks = list(getattr(v, "top_tokens", []))
        df = pd.DataFrame(
            {
                "k": np.arange(1, probs.size + 1),
                "token": pd.array(toks[: probs.size], dtype="string"),
                "token_id": ids[: probs.size],
                "prob": probs,
            }
        )
        return _finish(df, v)
    o = v.options
    places = o.get("cells") or [e[:4] for e in o.get("edits") or []]  # a joint op: one row per place
    if not places:
        places = [(o.get("site"), o.get("layer"), o.get("position"), o.get("head"))]
    n = len(places)
    df = pd.DataFrame(
        {
            "op": [o.get("op")] * n,
            "site": [p[0] for p in places],
            "layer": pd.array([p[1] for p in places], dtype="Int64"),
            "position": pd.array([p[2] for p in places], dtype="Int64"),
            "head": pd.array([p[3] for p in places], dtype="Int64"),
            "metric": [o.get("metric")] * n,
            "value": [float(v)] * n,
            "clean": [float(v.clean)] * n,
            "corrupt": [float(v.corrupt)] * n,
            "normalized": [float(v.normalized)] * n,
        }
    )
    return _finish(df, v)


def steer_frame(s, **unknown: Any):
    pd = _pd()
    check_unknown("SteerResult.to_frame()", unknown, [])
    o = s.options
    runs = [("prompt", str(o.get("prompt", "")))]
    if getattr(s, "baseline", ""):
        runs.append(("baseline", str(s.baseline)))
    runs.append(("steered", str(s)))
    df = pd.DataFrame(
        {
            "run": [r for r, _ in runs],
            "text": [t for _, t in runs],
            "layer": pd.array([o.get("layer")] * len(runs), dtype="Int64"),
            "scale": [o.get("scale")] * len(runs),
        }
    )
    return _finish(df, s)


def steer_sweep_frame(sw, **unknown: Any):
    """One row per run: the prompt, the baseline, then each scale with its push, first divergence and text."""
    pd = _pd()
    check_unknown("SteerSweepResult.to_frame()", unknown, [])
    o = sw.options
    runs = [("prompt", str(o.get("prompt", "")), None, None, None), ("baseline", sw.baseline, 0.0, 0.0, None)]
    for scale, r in zip(sw.scales, sw.results, strict=True):
        runs.append(("steered", str(r), float(scale), float(r.relative), r.diverges_at))
    df = pd.DataFrame(
        {
            "run": [r[0] for r in runs],
            "text": [r[1] for r in runs],
            "layer": pd.array([o.get("layer")] * len(runs), dtype="Int64"),
            "scale": [r[2] for r in runs],
            "relative": [r[3] for r in runs],
            "diverges_at": pd.array([r[4] for r in runs], dtype="Int64"),
        }
    )
    return _finish(df, sw)
