"""oneDNN linear layers (`workbench/ops/_fast_linear.py`): same numbers as `F.linear`, swapped only inside
the block, never over somebody else's forward, repacked after a weight edit, and off when grad is needed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import CLEAN, assert_close, tiny
from workbench.engine import onednn as FL
from workbench.testing import FAMILIES, tiny_model

pytestmark = pytest.mark.skipif(not FL.available(), reason="this torch build has no oneDNN float32 linear")


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.hf(model.to_tokens(CLEAN)).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pack", ["0", "default"])
def test_forward_equals_plain(family, pack, monkeypatch):
    """A whole forward with every linear layer (and GPT-2's Conv1D) through oneDNN, packed or not."""
    if pack == "0":
        monkeypatch.setenv("WORKBENCH_ONEDNN_PACK", "0")
    model = tiny(family)
    plain = _logits(model)
    with FL.onednn_linears(model):
        swapped = [m for m in model.hf.modules() if FL._linear_type(m) and "forward" in m.__dict__]
        assert swapped and all(getattr(m.forward, "__wrapped__", None) is None for m in swapped)
        fast = _logits(model)
    assert_close(fast, plain, 1e-5, f"{family} logits, oneDNN vs F.linear")


def test_forwards_restored_and_others_left_alone():
    """nnsight's controllers come back after the block; a user's own instance-level forward is never
    swapped (its edit keeps applying inside the block)."""
    model = tiny_model("llama", seed=3)
    q = model.hf.model.layers[0].self_attn.q_proj
    down = model.hf.model.layers[1].mlp.down_proj
    before = {id(m): m.__dict__.get("forward") for m in model.hf.modules()}
    down.forward = lambda x: 2.0 * F.linear(x, down.weight, down.bias)  # somebody's edit
    try:
        edited = _logits(model)
        with FL.onednn_linears(model):
            assert q.__dict__.get("forward") is not before[id(q)]
            inside = _logits(model)
        assert_close(inside, edited, 1e-5, "user forward honoured inside the block")
        for m in model.hf.modules():
            if m is not down:
                assert m.__dict__.get("forward") is before[id(m)]
    finally:
        del down.forward
    assert "forward" not in down.__dict__ or down.__dict__["forward"] is before[id(down)]


def test_packed_weight_follows_edits():
    """An in-place weight edit or a replaced weight is seen by the next call (the packed copy is redone)."""
    model = tiny_model("gpt2", seed=4)
    with FL.onednn_linears(model):
        _logits(model)
    layer = model.hf.transformer.h[0].mlp.c_fc  # Conv1D
    with torch.no_grad():
        layer.weight.mul_(0.25)
    plain = _logits(model)
    with FL.onednn_linears(model):
        assert_close(_logits(model), plain, 1e-5, "after an in-place edit")
    layer.weight = torch.nn.Parameter(torch.randn_like(layer.weight))
    plain = _logits(model)
    with FL.onednn_linears(model):
        assert_close(_logits(model), plain, 1e-5, "after a replaced weight")


def test_grad_falls_back_to_f_linear():
    """With autograd on, calls go to F.linear, so gradients are right (oneDNN's op has no backward)."""
    model = tiny_model("llama", seed=5)
    ids = model.to_tokens(CLEAN)
    out = model.hf(ids).logits[0, -1].sum()
    want = torch.autograd.grad(out, model.hf.lm_head.weight)[0]
    with FL.onednn_linears(model):
        out = model.hf(ids).logits[0, -1].sum()
        got = torch.autograd.grad(out, model.hf.lm_head.weight)[0]
    assert_close(got, want, 1e-6, "gradient through the swapped lm_head")


def test_switched_off(monkeypatch):
    monkeypatch.setenv("WORKBENCH_ONEDNN", "0")
    model = tiny_model("llama", seed=6)
    q = model.hf.model.layers[0].self_attn.q_proj
    before = q.__dict__.get("forward")
    with FL.onednn_linears(model):
        assert q.__dict__.get("forward") is before
