"""When the local fast paths (replay sweeps, hook lens, fast attribution) may run instead of a trace."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from ..model import Model
from .model_key import user_hooks

_state = threading.local()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the block with the fast paths off (the traced paths are used), e.g. for comparisons."""
    before = getattr(_state, "off", False)
    _state.off = True
    try:
        yield
    finally:
        _state.off = before


def switched_off() -> bool:
    """Whether `disabled()` is active in this thread or `$WORKBENCH_FAST=0`."""
    return getattr(_state, "off", False) or os.environ.get("WORKBENCH_FAST", "1") == "0"


def has_hooks(model: Model) -> bool:
    """Whether a user's hook is on any module (or globally). The fast paths then step aside: nnsight's
    `.output` is a module's value before its forward hooks, and the replays skip calls (a block whose mlp_out
    is patched, the rows joining above it) whose hooks would have run; the traced path is exact with hooks."""
    from torch.nn.modules import module as torch_module

    if any(getattr(torch_module, d, None) for d in ("_global_forward_hooks", "_global_forward_pre_hooks")):
        return True
    return any(user_hooks(m) for m in model.hf.modules())


def on_cpu(model: Model) -> bool:
    """Whether the local model's weights are on the CPU (the device the fast paths are written and tested
    for; elsewhere the traced paths run)."""
    return all(p.device.type == "cpu" for p in model.hf.parameters())


def allowed(model: Model) -> bool:
    """The checks every fast path makes: not switched off, a local CPU model, no user hooks."""
    return not switched_off() and not model.remote and on_cpu(model) and not has_hooks(model)


def first(x: object) -> object:
    """A module's main output: the first element of a tuple output."""
    return x[0] if isinstance(x, tuple | list) else x
