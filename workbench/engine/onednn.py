"""float32 linear layers through oneDNN for the local fast paths (CPU, no grad).

On CPU, torch sends float32 `F.linear` to MKL's sgemm. On the reference machine (AMD EPYC, Zen 5, one
thread) that runs at ~90 GFLOP/s, while oneDNN (also inside every x86 CPU torch build) reaches ~210 with
its AVX-512 kernels, and ~3x at 10-row calls once the weight is packed in its layout: the same float32
arithmetic in another summation order (differences ~1e-6 relative). `onednn_linears(model)` swaps the
forward of the model's linear layers for oneDNN's for the duration of a block; nothing changes outside it,
and a layer falls back to `F.linear` whenever oneDNN cannot serve the call (grad, other dtypes or devices).

Used only around runs whose module calls the fast paths make themselves (never inside an nnsight trace,
and never on remote models). `$WORKBENCH_ONEDNN=0` turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import weakref
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ..model import Model
from .batching import available_bytes
from .model_key import ModelKey, model_key
from .threads import swapped_forwards


@functools.cache
def available() -> bool:
    """Whether this torch build runs oneDNN's float32 linear (checked once on a tiny example). x86-64 only:
    elsewhere (Apple silicon, ARM servers) torch's own BLAS is the one tuned for the machine."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        out = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.equal(out, F.linear(x, w)))


def enabled() -> bool:
    return os.environ.get("WORKBENCH_ONEDNN", "1") != "0" and available()


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    packed: torch.Tensor | None = None,
) -> torch.Tensor:
    """`F.linear`, through oneDNN when it applies (float32 CPU tensors, no autograd); `packed` is `weight`
    in oneDNN's blocked layout (`_packed`), which saves the reorder every call otherwise pays."""
    if not _serves(x, weight):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, weight if packed is None else packed, bias, "none", [], "")


def _serves(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN serves this call: float32 CPU tensors and no autograd."""
    return (
        enabled()
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


# module -> ((content hash, data pointer, shape) of the weight it was packed from, the packed weight)
_PACKED: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()


def _weight(module: torch.nn.Module) -> torch.Tensor:
    """The weight as [out, in] (GPT-2's Conv1D stores [in, out])."""
    return module.weight if type(module) is torch.nn.Linear else module.weight.t()


def _packed(module: torch.nn.Module, content: int) -> torch.Tensor:
    """The module's weight in oneDNN's layout, repacked whenever the weight's content or storage changed
    (`content` is its hash in the call's `ModelKey`: a write through `.data` changes it too)."""
    weight = module.weight
    key = (content, weight.data_ptr(), tuple(weight.shape))
    hit = _PACKED.get(module)
    if hit is None or hit[0] != key:
        hit = (key, torch.ops.mkldnn._reorder_linear_weight(_weight(module).detach().contiguous(), None))
        _PACKED[module] = hit
    return hit[1]


def _linear_type(module: torch.nn.Module) -> bool:
    """An nn.Linear or a GPT-2 style Conv1D (weight [in, out])."""
    return type(module) is torch.nn.Linear or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


def _forward_for(module: torch.nn.Module, content: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A oneDNN forward for a linear module; with `content` (the weight's hash) through its packed weight."""
    if content is not None:
        return lambda x: linear(x, _weight(module), module.bias, _packed(module, content))
    return lambda x: linear(x, _weight(module), module.bias)


def _pack_budget() -> int:
    """Bytes of packed weights worth keeping: a quarter of free memory, at most 2 GiB ($WORKBENCH_ONEDNN_PACK
    sets it; 0 turns packing off)."""
    default = min(2 << 30, available_bytes() // 4)
    return int(os.environ.get("WORKBENCH_ONEDNN_PACK", default))


@contextlib.contextmanager
def onednn_linears(model: Model, key: ModelKey | None = None) -> Iterator[None]:
    """Run the model's float32 linear layers through oneDNN inside the block (under `model.lock`), in this
    thread only. Call no nnsight trace inside: the swap stands in for nnsight's idle per-module controller.

    Weights are kept packed in oneDNN's layout (a second copy, cached per module, checked against the
    weights' content hashes in `key`, computed here when not given) when they fit the budget of
    `_pack_budget`: that halves the time of small calls such as a 10-token forward."""
    if model.remote or not enabled():
        yield
        return
    with model.lock:
        modules = _eligible(model)
        pack = sum(m.weight.numel() * 4 for m in modules) <= _pack_budget()
        if pack and key is None:
            key = model_key(model)
        digests = key.digests if pack and key is not None else {}
        swaps = [(m, _forward_for(m, digests.get(id(m.weight)))) for m in modules]
        with swapped_forwards(swaps):
            yield


def _eligible(model: Model) -> list[torch.nn.Module]:
    modules = []
    for module in model.hf.modules():
        weight = getattr(module, "weight", None)
        if (
            not isinstance(weight, torch.Tensor)
            or weight.dtype != torch.float32
            or weight.device.type != "cpu"
        ):
            continue
        if not _linear_type(module):
            continue
        # nnsight wraps every module's own forward in an instance-level controller (idle outside a
        # trace); any other instance-level forward is somebody's edit, which must keep running.
        if _own_forward(module):
            modules.append(module)
    return modules


def _own_forward(module: torch.nn.Module) -> bool:
    """No instance-level forward but nnsight's idle controller around the class's own."""
    current = module.__dict__.get("forward")
    return current is None or getattr(current, "__wrapped__", None) is type(module).forward
