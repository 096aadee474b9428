"""Issue 16 on a real local NDIF server: wb.steer (both positions modes, a function vector), wb.steer_sweep and
SteerView on a remote model are one request per action and equal the local run of the same weights; on_token
gets the steps after the request (nothing streams remotely)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

import workbench as wb

from .test_workbench_remote import models, requests  # noqa: F401  (fixtures)

pytestmark = pytest.mark.ndif

PROMPT = "I went to the park today and"
TOL = 1e-4


@dataclass
class FV:
    vector: torch.Tensor


def test_steer_positions_and_function_vectors_match_local_in_one_request(models, requests) -> None:  # noqa: F811
    remote, local = models
    vec = torch.randn(remote.d_model, generator=torch.Generator().manual_seed(0))
    for positions in ("all", "last"):
        before = len(requests)
        steps: list[wb.SteerStep] = []
        a = wb.steer(remote, PROMPT, vector=FV(vec), layer=5, scale=4.0, max_new_tokens=5, positions=positions,
                     on_token=steps.append)  # fmt: skip
        assert len(requests) - before == 1, "the baseline and the steered row are one generation"
        b = wb.steer(local, PROMPT, vector=vec, layer=5, scale=4.0, max_new_tokens=5, positions=positions)
        assert a.tokens == b.tokens and a.baseline_tokens == b.baseline_tokens
        assert float(np.abs(a.top_probs - b.top_probs).max()) <= TOL
        assert [s.ids[1] for s in steps] == a.tokens and not any(s.live for s in steps)


def test_steer_sweep_matches_local_in_one_request(models, requests) -> None:  # noqa: F811
    remote, local = models
    vec = torch.randn(remote.d_model, generator=torch.Generator().manual_seed(1))
    before = len(requests)
    a = wb.steer_sweep(remote, PROMPT, vector=vec, layer=6, scales=[1.0, 4.0, 8.0], max_new_tokens=4)
    assert len(requests) - before == 1
    b = wb.steer_sweep(local, PROMPT, vector=vec, layer=6, scales=[1.0, 4.0, 8.0], max_new_tokens=4)
    assert a.texts == b.texts and a.baseline == b.baseline


def test_steer_view_on_a_remote_model_is_one_request_per_generate(models, requests) -> None:  # noqa: F811
    remote, local = models
    view = wb.SteerView(remote, PROMPT, positive="The food was delicious", negative="The food was", layer=6,
                        scale=0.5, max_new_tokens=6)  # fmt: skip
    view.wait(300)
    assert view.error == "" and view.norms
    sent: list[dict] = []
    view.send = lambda content, buffers=None: sent.append(content)
    before = len(requests)
    view.request("generate")
    view.wait(300)
    assert view.status == "done" and view.error == "", view.error
    assert len(requests) - before == 1
    events = [c["event"] for c in sent if c.get("kind") == "stream"]
    assert events == ["start"], "a remote run sends no step messages: the whole run arrives in `run`"
    assert view.run["live"] is False and view.run["state"] == "done"
    want = wb.steer(local, PROMPT, vector=("The food was delicious", "The food was"), layer=6, scale=0.5,
                    max_new_tokens=6)  # fmt: skip
    assert view.run["text"] == str(want) and view.run["baseline"] == want.baseline
    assert "remote=True" in view.to_code()
