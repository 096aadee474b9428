"""Progress bars for long calls from Python: tqdm's notebook bar in Jupyter, a text bar elsewhere.

A call with no `progress=` of its own gets a bar that appears only when the call takes longer than half a
second (views pass their own callback and show progress themselves). `$WORKBENCH_PROGRESS=0` turns bars
off. The kernel's interrupt (KeyboardInterrupt) stops a call between two steps and leaves the model usable.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def enabled() -> bool:
    return os.environ.get("WORKBENCH_PROGRESS", "1") != "0"


@contextlib.contextmanager
def bar(description: str) -> Iterator[Callable[[float, str], None]]:
    """A `progress(fraction, message)` callback drawing a bar, closed at the end of the block."""
    from tqdm.auto import tqdm

    form = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}"
    t = tqdm(total=100, desc=description, delay=0.5, leave=False, bar_format=form)
    try:

        def update(fraction: float, message: str) -> None:
            # update() (not refresh()) so that a call shorter than `delay` draws nothing
            t.set_description_str(f"{description} ({message})", refresh=False)
            t.update(round(100 * min(max(float(fraction), 0.0), 1.0), 1) - t.n)

        yield update
    finally:
        t.close()


def with_bar(name: str) -> Callable[[F], F]:
    """Give an op (keyword-only `progress=`) a bar when its caller passes none."""

    def wrap(fn: F) -> F:
        if "progress" not in inspect.signature(fn).parameters:
            return fn

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            given = kwargs.get("progress")
            if given is False:  # progress=False: no bar (and no callback)
                return fn(*args, **{**kwargs, "progress": None})
            if given is not None and not callable(given):
                from .errors import WorkbenchError

                raise WorkbenchError(
                    f"progress= takes a callable(fraction, message), or False for no bar; got {given!r:.40}."
                )
            if given is not None or not enabled():
                return fn(*args, **kwargs)
            with bar(name) as update:
                return fn(*args, **{**kwargs, "progress": update})

        return run  # type: ignore[return-value]

    return wrap
