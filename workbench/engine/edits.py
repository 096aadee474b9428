"""Edits as values: a `Cell` names a place in the model, an `Edit` says what happens there.

Every op builds a list of Edits (one list per run: the edits of a run are applied jointly), the engines apply
lists of Edits, and codegen prints them. The kind of an edit is decided here, in `Edit.kind`, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from ..errors import SiteError, WorkbenchError
from ..validate import as_int
from .sites import site as site_record

if TYPE_CHECKING:
    from ..model import Model

# What an edit puts at its cell: copy from the source run, zero, the base run's mean over positions,
# a given tensor (set), or a given tensor added (steering). The engines' kernels switch on these names.
KINDS = ("source", "zero", "mean", "set", "add")


@dataclass(frozen=True)
class Cell:
    """A place in the model: `site` at `layer`, one `position` (None: every position), one `head`.

    `wb.Cell("head", 9, head=3)`, `wb.Cell("mlp_out", 20, position=9)`, `wb.Cell("q", 12, head=0)`.
    Frozen and hashable, so a set of cells is a plain Python set.
    """

    site: str
    layer: int
    position: int | None = None
    head: int | None = None

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={v}" for k, v in (("position", self.position), ("head", self.head)) if v is not None
        )
        return f"Cell({self.site!r}, {self.layer}{extra})"

    def checked(self, model: Model, n_tokens: int) -> Cell:
        """This cell validated against `model` and a prompt of `n_tokens`: position counted from 0."""
        rec = site_record(self.site)
        model.check_site_available(rec.name)
        layer = model.check_layer(self.layer)
        if rec.embed_only and layer != 0:
            raise SiteError(
                f"Site {rec.name!r} exists only at layer 0 (the token embeddings), got layer={layer}: "
                f"use wb.Cell({rec.name!r}, 0, position=...)."
            )
        position = None if self.position is None else model.check_position(self.position, n_tokens)
        head = self.head
        if head is not None:
            if not rec.per_head:
                heads = ", ".join(n for n in ("head", "q", "k", "v", "pattern"))
                raise SiteError(
                    f"head={head} only makes sense with a per-head site ({heads}); site {rec.name!r} is one "
                    f"vector per position. Drop head=, or use e.g. wb.Cell('head', {layer}, head={head})."
                )
            head = model.check_head(head, kv=rec.heads == "kv", site=rec.name)
        elif rec.needs_head:
            alt = " For all heads at once use site='attn_out'." if rec.name == "head" else ""
            raise SiteError(f"site={rec.name!r} needs head=<index>.{alt}")
        return Cell(rec.name, layer, position, head)


@dataclass(frozen=True)
class Add:
    """An edit value that adds `scale * tensor` to the activation (steering) instead of replacing it."""

    tensor: Any
    scale: float = 1.0

    def __repr__(self) -> str:
        shape = tuple(getattr(self.tensor, "shape", ()))
        return f"Add(tensor{list(shape)}, scale={self.scale})"


@dataclass(frozen=True, eq=False)
class Edit:
    """What happens at a cell: `value` is "source" (the cell's activation in the source run), "zero",
    "mean" (the base run's mean over positions), a tensor to set, or `wb.Add(tensor, scale)` to add."""

    cell: Cell
    value: Any = "source"

    @property
    def kind(self) -> str:
        """One of KINDS: the single place an edit's kind is decided."""
        v = self.value
        if isinstance(v, Add):
            return "add"
        if isinstance(v, str):
            if v not in ("source", "zero", "mean"):
                raise WorkbenchError(
                    f"Unknown edit value {v!r}: use 'source', 'zero', 'mean', a tensor, or wb.Add(tensor)."
                )
            return v
        return "set"

    def tensor(self) -> torch.Tensor | None:
        """The tensor a set/add edit applies (float32, CPU, scaled for add), else None."""
        v = self.value
        if isinstance(v, Add):
            return _as_tensor(v.tensor, self.cell) * float(v.scale)
        if isinstance(v, str):
            return None
        return _as_tensor(v, self.cell)

    def __repr__(self) -> str:
        v = self.value
        shown = repr(v) if isinstance(v, str | Add) else f"tensor{list(getattr(v, 'shape', ()))}"
        return f"Edit({self.cell!r}, {shown})"


def _as_tensor(value: Any, cell: Cell) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise WorkbenchError(
                f"The value of an edit at {cell!r} must be 'source', 'zero', 'mean', a tensor or wb.Add(tensor); "
                f"got {type(value).__name__}."
            ) from None
    if t.is_complex() or t.dtype == torch.bool or t.is_meta:
        raise WorkbenchError(f"The value of an edit at {cell!r} must be real numbers, got dtype {t.dtype}.")
    t = t.to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise WorkbenchError(f"The value of an edit at {cell!r} has NaN or inf entries.")
    return t


def as_cells(
    cells: Any, name: str = "cells", example: str = "wb.Cell('head', 9, head=3)", hint: str = ""
) -> list[Cell]:
    """A user's `cells=` (or `senders=`, `receivers=`: `name`) as a list of Cells (a non-empty list, tuple or set
    of wb.Cell; a set in forward order); `example` and `hint` go into the messages."""
    if isinstance(cells, Cell):
        return [cells]
    if not isinstance(cells, list | tuple | set | frozenset):
        raise WorkbenchError(
            f"{name}= takes a list of wb.Cell, got {type(cells).__name__}: e.g. {name}=[{example}]{hint}."
        )
    out = list(cells)
    if not out:
        raise WorkbenchError(
            f"{name}= is empty: give a non-empty list of wb.Cell, e.g. {name}=[{example}]{hint}."
        )
    bad = [c for c in out if not isinstance(c, Cell)]
    if bad:
        raise WorkbenchError(
            f"{name}= takes wb.Cell values, got {type(bad[0]).__name__} {bad[0]!r:.60}: e.g. {example}{hint}."
        )
    if isinstance(cells, set | frozenset):
        out.sort(key=lambda c: (c.layer, site_record(c.site).order, c.position or -1, c.head or -1))
    return out


def one_cell(site: str, layer: Any, position: Any, head: Any) -> Cell:
    """The single-cell shorthand (`layer=`, `position=`, `head=`) as a Cell."""
    return Cell(site, layer, position, head)


def checked_edits(model: Model, edits: Any, n_tokens: int) -> list[Edit]:
    """A user's `edits=` validated: a non-empty list of wb.Edit, each cell checked and each tensor shaped."""
    if isinstance(edits, Edit):
        edits = [edits]
    if not isinstance(edits, list | tuple) or not edits:
        raise WorkbenchError(
            "edits= takes a non-empty list of wb.Edit, e.g. edits=[wb.Edit(wb.Cell('resid_pre', 6, position=3), "
            "'zero')]."
        )
    out = []
    for e in edits:
        if not isinstance(e, Edit):
            raise WorkbenchError(
                f"edits= takes wb.Edit values, got {type(e).__name__}: wrap a cell as wb.Edit(cell, value)."
            )
        if not isinstance(e.cell, Cell):
            raise WorkbenchError(f"wb.Edit's first argument must be a wb.Cell, got {type(e.cell).__name__}.")
        cell = e.cell.checked(model, n_tokens)
        edit = replace(e, cell=cell)
        _ = edit.kind  # unknown strings fail here
        t = edit.tensor()
        if t is not None:
            check_shape(model, cell, t, n_tokens)
        out.append(edit)
    return out


def slot_shape(model: Model, cell: Cell, n_tokens: int) -> tuple[int, ...]:
    """The shape of the activation an edit at `cell` replaces ([T,] width) for one run."""
    rec = site_record(cell.site)
    if rec.pattern:
        width = n_tokens
    elif rec.per_head:
        width = model.d_head
    else:
        width = model.d_model
    return (width,) if cell.position is not None else (n_tokens, width)


def check_shape(model: Model, cell: Cell, t: torch.Tensor, n_tokens: int) -> None:
    """A set/add tensor must broadcast to the cell's slot: [width] or [T, width] (one position: [width])."""
    shape = slot_shape(model, cell, n_tokens)
    ok = (
        tuple(t.shape) == shape
        or tuple(t.shape) == shape[-1:]
        or (t.dim() == 2 and t.shape[0] == 1 and t.shape[1] == shape[-1])
    )
    if not ok:
        raise WorkbenchError(
            f"The tensor of an edit at {cell!r} has shape {tuple(t.shape)}; it must be {shape[-1:]} "
            + (f"or {shape} " if len(shape) == 2 else "")
            + f"(site {cell.site!r} is {shape[-1]} wide"
            + (" per head" if site_record(cell.site).per_head else "")
            + ")."
        )


def lowered(edit: Edit, row: int) -> tuple[int, int | None, int | None, str, torch.Tensor | None]:
    """The plain tuple trace bodies receive: (row, position, head, kind, tensor)."""
    return (row, edit.cell.position, edit.cell.head, edit.kind, edit.tensor())


def check_int_field(value: Any, what: str) -> int:
    return as_int(value, what, error=SiteError)
