"""Sweeps as the engines take them, for tests: one site, one edit kind, cells as (layer, position, head)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from workbench.engine import replay
from workbench.engine.edits import Cell as WbCell
from workbench.engine.edits import Edit
from workbench.engine.traced import run_rows

_KIND = {"copy": "source", "value": "set"}


class Cell(NamedTuple):
    """A sweep cell without its site (the site is given once per sweep)."""

    layer: int
    position: int | None = None
    head: int | None = None


def rows(site: str, cells: Sequence[Cell], mode: str = "copy", values: Sequence[torch.Tensor] | None = None):
    kind = _KIND.get(mode, mode)
    return [
        [Edit(c if isinstance(c, WbCell) else WbCell(site, *c), values[i] if values is not None else kind)]
        for i, c in enumerate(cells)
    ]


def run_batch(model, source_ids, base_ids, site, cells, metric, *, mode="copy", values=None, top_k=0, **kw):
    """`traced.run_rows` (replay when it applies) over one edit per cell."""
    return run_rows(model, source_ids, base_ids, rows(site, cells, mode, values), metric, top_k=top_k, **kw)


def fast_run(model, source_ids, base_ids, site, cells, metric, *, mode="copy", values=None, top_k=0, **kw):
    """The replay engine alone (None when it does not apply)."""
    return replay.run(model, source_ids, base_ids, rows(site, cells, mode, values), metric, top_k=top_k, **kw)
