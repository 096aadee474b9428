"""What a fast path changes on a module (a forward, a hook) acts only in the thread that changed it.

The fast paths run under `model.lock`, and whole-model calls from other threads wait for it (`Model`
serialises them). These wrappers also keep a direct call of a submodule from another thread meanwhile on
the module's own forward, and keep that thread's activations out of our captures.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch


def mine(hook: Callable[..., Any]) -> Callable[..., Any]:
    """`hook`, run only for module calls made by the current thread (a no-op for other threads)."""
    owner = threading.get_ident()

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == owner:
            return hook(*args, **kwargs)
        return None

    return guarded


@contextlib.contextmanager
def swapped_forwards(swaps: Sequence[tuple[torch.nn.Module, Callable[..., Any]]]) -> Iterator[None]:
    """Each module's forward is its replacement in this thread, its own forward in every other thread;
    everything is restored on exit, also after an exception."""
    owner = threading.get_ident()
    saved: list[tuple[torch.nn.Module, Any]] = []
    try:
        for module, replacement in swaps:
            previous = module.__dict__.get("forward")
            fallback = previous if previous is not None else type(module).forward.__get__(module)

            def forward(*args: Any, _new=replacement, _old=fallback, **kwargs: Any) -> Any:
                if threading.get_ident() == owner:
                    return _new(*args, **kwargs)
                return _old(*args, **kwargs)

            forward.workbench_swapped = previous  # type: ignore[attr-defined]  # what `_model_key` sees
            saved.append((module, previous))
            module.forward = forward
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
