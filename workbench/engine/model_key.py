"""A key of everything a local model computes with, for the fast paths' caches (cached runs, packed weights).

Tensor version counters and data pointers cannot see every edit users make: a write through `.data`
(`w.data[:, :800] = 0`) bumps no version counter, and an in-place permutation keeps the pointer. So the
key holds a content hash of every parameter and buffer (xxh3 over the raw bytes, memory-bound: ~50 ms for
the 135M-parameter embedded model, about what one small forward reads anyway) and a structural part that
sees a swapped module, a new instance or class forward, a hook (module or global), a module's plain
settings (a norm's `eps`, an attention's `scaling`), the config and the attention implementation. Computed once per fast-path call, under the model lock.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import xxhash

from ..model import Model


@dataclass(frozen=True)
class ModelKey:
    """Equal keys mean the model computes exactly as before; `digests` maps id(tensor) -> content hash."""

    structure: tuple
    tensors: tuple
    digests: dict[int, int]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ModelKey)
            and self.structure == other.structure
            and self.tensors == other.tensors
        )

    def __hash__(self) -> int:
        return hash((self.structure, self.tensors))


def digest(t: torch.Tensor) -> int:
    """Content hash of a CPU tensor's elements (any dtype; non-contiguous tensors are copied first)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    flat = t.contiguous().reshape(-1)
    if flat.numel() == 0:
        return 0
    raw = flat.view(torch.uint8) if flat.element_size() > 1 else flat
    if raw.dtype is not torch.uint8:  # bool / int8
        raw = raw.view(torch.uint8)
    return xxhash.xxh3_64_intdigest(memoryview(raw.numpy()))


def _observes_only(hook: object) -> bool:
    """transformers' output-capturing hooks (installed for `output_hidden_states=` / `output_attentions=`, then
    left on the model): they only record outputs while a capture is active and never change them."""
    return getattr(hook, "__module__", "") == "transformers.utils.output_capturing"


def user_hooks(module: torch.nn.Module) -> list:
    """The module's forward, pre-forward and backward hooks that can change what it computes."""
    hooks = [
        *module._forward_hooks.values(),
        *module._forward_pre_hooks.values(),
        *module._backward_hooks.values(),
    ]
    return [h for h in hooks if not _observes_only(h)]


def _hooks(module: torch.nn.Module) -> tuple:
    dicts = (
        module._forward_hooks,
        module._forward_pre_hooks,
        module._backward_hooks,
        getattr(module, "_backward_pre_hooks", {}),
    )
    return tuple(tuple(id(h) for h in d.values()) for d in dicts)


def _instance_forward(module: torch.nn.Module) -> object:
    """The module's instance-level forward, seen through a fast path's own temporary swap."""
    forward = module.__dict__.get("forward")
    return getattr(forward, "workbench_swapped", forward)


_SCALARS = (int, float, bool, str, type(None))


def _settings(module: torch.nn.Module) -> tuple:
    """The module's plain settings (`eps`, `scaling`, `training`, ...): editing one changes what it computes."""
    return tuple(
        (k, v) for k, v in sorted(vars(module).items()) if not k.startswith("_") and isinstance(v, _SCALARS)
    )


def structure_key(model: Model) -> tuple:
    """The cheap part: modules (identity, class, forwards, hooks, settings), global hooks, the config."""
    from torch.nn.modules import module as torch_module

    mods = tuple(
        (name, id(m), type(m), id(_instance_forward(m)), id(type(m).forward), _hooks(m), _settings(m))
        for name, m in model.hf.named_modules()
    )
    global_hooks = tuple(
        tuple(id(h) for h in getattr(torch_module, d, {}).values())
        for d in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    )
    config = model.hf.config
    return (
        mods,
        global_hooks,
        getattr(config, "_attn_implementation", None),
        config.to_json_string(use_diff=False),
    )


def model_key(model: Model) -> ModelKey:
    """The full key: structure plus every parameter's and buffer's identity, layout and content hash."""
    digests: dict[int, int] = {}
    tensors = []
    for name, t in (*model.hf.named_parameters(), *model.hf.named_buffers()):
        h = digests.get(id(t))
        if h is None:
            h = digests[id(t)] = digest(t)
        tensors.append((name, id(t), t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device, h))
    return ModelKey(structure_key(model), tuple(tensors), digests)
