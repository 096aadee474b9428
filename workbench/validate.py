"""Shared checks for what users pass in: integer-like indices, numbers, text. Each raises a WorkbenchError
(or the subclass given) whose message names the problem and the fix.

One validator for every integer index (layer, position, head, token id, top_k, ...), so every op accepts
the same things: Python ints, numpy integers (what `argmax` returns) and 0-d integer tensors/arrays; and
refuses the same things with the same words: booleans (an `int` subclass, so `head=True` would silently
mean head 1), floats (the wrong type, not an out-of-range index) and anything else.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from .errors import TokenizationError, WorkbenchError


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def as_int(
    value: Any,
    what: str,
    *,
    lo: int | None = None,
    hi: int | None = None,
    error: type[WorkbenchError] = WorkbenchError,
    hint: str = "",
) -> int:
    """`value` as a plain int in lo..hi (inclusive), or `error` saying what was wrong and what to pass."""
    span = f"{lo}..{hi}" if lo is not None and hi is not None else f">= {lo}" if lo is not None else ""
    want = f"{what} must be an integer" + (f" {span}" if span else "")
    if isinstance(value, bool | np.bool_) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise error(f"{want}, got the boolean {value!r} (True/False are not accepted as integers).{hint}")
    if isinstance(value, torch.Tensor | np.ndarray):
        real = (
            not value.dtype.is_complex
            if isinstance(value, torch.Tensor)
            else np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
        )
        if value.ndim != 0 or not real:
            raise error(
                f"{want}, got a {type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}: "
                f"pass one integer (e.g. int(x) or x.item() of an integer tensor).{hint}"
            )
        value = value.item()
    elif isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, float | np.floating):
        whole = math.isfinite(value) and float(value).is_integer()
        fix = f"pass {int(value)}" if whole else "pass an integer (int(...) if you meant to truncate)"
        raise error(f"{want}, got the float {value!r}, which is the wrong type: {fix}.{hint}")
    if not isinstance(value, int):
        raise error(f"{want}, got {_describe(value)}.{hint}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise error(f"{what} {value} is out of range: it must be {span}.{hint}")
    return value


def as_bool(value: Any, what: str) -> bool:
    """A True/False flag (numpy booleans accepted); anything else is refused, not truth-tested."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise WorkbenchError(f"{what} must be True or False, got {_describe(value)}.")


def as_number(value: Any, what: str, *, finite: bool = True) -> float:
    """A real number (Python, numpy or 0-d tensor) as a float; booleans, NaN and infinities refused."""
    if isinstance(value, bool | np.bool_):
        raise WorkbenchError(f"{what} must be a number, got the boolean {value!r}.")
    if isinstance(value, torch.Tensor | np.ndarray):
        if value.ndim != 0 or value.dtype in (torch.bool, np.bool_) or "complex" in str(value.dtype):
            raise WorkbenchError(
                f"{what} must be one real number, got a {type(value).__name__} of shape "
                f"{tuple(value.shape)} and dtype {value.dtype}."
            )
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise WorkbenchError(f"{what} must be a number, got {_describe(value)}.")
    out = float(value)
    if finite and not math.isfinite(out):
        raise WorkbenchError(f"{what} must be a finite number, got {out!r}.")
    return out


def check_text(text: str, what: str) -> str:
    """A str that can be encoded (no lone surrogates such as '\\ud800', which no tokenizer accepts)."""
    if not isinstance(text, str):
        raise TokenizationError(f"The {what} must be a string, got {_describe(text)}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise TokenizationError(
            f"The {what} contains {bad!r} at index {exc.start}: a lone surrogate, which is not valid Unicode "
            "text and cannot be tokenized (it usually comes from splitting an emoji or decoding bytes with "
            "'surrogatepass'/'surrogateescape'). Remove it, or clean the text with "
            "text.encode('utf-8', 'replace').decode('utf-8')."
        ) from None
    return text


def as_list(value: Any, what: str, example: str) -> list[Any]:
    """A non-empty list from a list/tuple/range/array (a str or a single item is one element)."""
    if isinstance(value, str | int | np.integer) or (
        isinstance(value, torch.Tensor | np.ndarray) and value.ndim == 0
    ):
        items = [value]
    elif isinstance(value, dict | set | frozenset):
        raise WorkbenchError(
            f"{what} must be a list (order matters), got a {type(value).__name__}: {example}."
        )
    else:
        try:
            items = list(value)
        except TypeError:
            raise WorkbenchError(f"{what} must be a list, got {_describe(value)}: {example}.") from None
    if not items:
        raise WorkbenchError(f"{what} is empty: give at least one, e.g. {example}.")
    return items
