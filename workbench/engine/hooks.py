"""Edits as plain forward hooks on the local torch model (the engines that run without a trace)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..model import Model
from .edits import Edit, lowered
from .fast import first
from .kernels import apply_edits, slot
from .sites import site as site_record
from .threads import mine


def hookable(edits: Sequence[Edit]) -> bool:
    """Whether plain hooks can apply these edits (patterns need the trace's view of the attention function)."""
    return not any(site_record(e.cell.site).pattern for e in edits)


def edit_hooks(
    model: Model, rows: dict[int, Sequence[Edit]], src_row: int = 0, mean_row: int = 1
) -> list[Any]:
    """Register hooks applying each batch row's edits ({row: edits}) in place, like the traced engine;
    returns the handles (remove them in a `finally`). Hooks act only in the calling thread."""
    groups: dict[tuple[str, bool], tuple[Any, list[tuple[tuple | None, list[tuple]]]]] = {}
    for row, edits in rows.items():
        for e in edits:
            ref = model.site_ref(e.cell.site, e.cell.layer)
            entry = groups.setdefault((ref.path, ref.use_input), (ref, []))
            layouts = entry[1]
            for layout, group in layouts:
                if layout == ref.layout:
                    group.append(lowered(e, row))
                    break
            else:
                layouts.append((ref.layout, [lowered(e, row)]))
    handles = []
    for ref, layouts in groups.values():

        def apply(x: torch.Tensor, layouts: list = layouts) -> None:
            for layout, group in layouts:
                apply_edits(slot(x, layout), group, src_row, mean_row)

        module = model.module(ref)
        if ref.use_input:

            def pre(_mod: Any, args: tuple, kwargs: dict, apply: Any = apply) -> None:
                apply(args[0] if args else next(iter(kwargs.values())))

            handles.append(module.register_forward_pre_hook(mine(pre), with_kwargs=True))
        else:

            def post(_mod: Any, _args: Any, out: Any, apply: Any = apply) -> None:
                apply(first(out))

            handles.append(module.register_forward_hook(mine(post)))
    return handles
