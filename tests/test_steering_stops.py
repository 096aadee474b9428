"""Steering where greedy generation stops early (EOS before max_new_tokens) matches plain HF generate."""

from __future__ import annotations

import pytest
import torch

import workbench as wb


@pytest.mark.embedded
def test_steer_stops_at_eos_like_hf_generate() -> None:
    model = wb.load()
    prompt, layer, scale, n = "I went to the park today and", 4, 8.0, 24
    vec = wb.steering_vector(
        model, "I talk about weddings constantly", "I do not talk about weddings constantly", layer
    )
    result = wb.steer(model, prompt, vector=vec, layer=layer, scale=scale, max_new_tokens=n)
    ids = model.to_tokens(prompt)
    add = scale * vec

    def hook(module, args, kwargs):
        if args:
            return (args[0] + add, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + add}

    handle = model.hf.model.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            ref = model.hf.generate(ids, max_new_tokens=n, do_sample=False)[0, ids.shape[1] :].tolist()
    finally:
        handle.remove()
    assert len(ref) < n, "this case must stop early to test anything"
    assert result.tokens == ref
    assert str(result) == model.tokenizer.decode(ref, skip_special_tokens=True)
