"""Alignment: which token positions of each example make each column of a dataset result.

- `"exact"`: every example has the same token length; column j is position j.
- `"right"`: column j of K (K = the shortest prompt) is position T_i - K + j, labelled -K..-1.
- `"roles"`: named spans. A template's fields make them (one column per single-token field, else its
  first and last token; the literal text between fields; the final token), as ROME groups positions;
  explicit `spans=` per example work too (plus the final token). A cell over a role edits all its
  positions at once.

Within one example the clean and corrupt prompts always have the same token length (positions line up).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import TokenizationError, WorkbenchError
from .dataset import Dataset, Example

ALIGNS = ("exact", "right", "roles")
FINAL = "final"


@dataclass
class Alignment:
    """The columns of a dataset result and, per example, the token positions behind each column."""

    align: str
    columns: list[str]
    positions: list[list[list[int]]]  # [example][column] -> token positions (sorted)
    clean_ids: list[torch.Tensor]  # [1, T_i] each
    corrupt_ids: list[torch.Tensor | None]
    tokens: list[list[str]]  # each example's clean token strings

    def column(self, position: Any) -> int:
        """A column given as an index (negative counts from the end) or, with roles, by name."""
        n = len(self.columns)
        if isinstance(position, str):
            if position not in self.columns:
                raise WorkbenchError(
                    f"No column {position!r}: this dataset's columns (align={self.align!r}) are {self.columns}."
                )
            return self.columns.index(position)
        if isinstance(position, bool) or not isinstance(position, int):
            raise WorkbenchError(
                f"A dataset position is a column index or a role name, got {position!r}; columns: {self.columns}."
            )
        if not -n <= position < n:
            raise WorkbenchError(
                f"Column {position} does not exist: this dataset has {n} columns (align={self.align!r}: "
                f"{self.columns}); count from 0, or from the end with -1."
            )
        return position % n


def _describe(tokens: list[str]) -> str:
    return "[" + ", ".join(repr(t) for t in tokens) + "]"


def check_align(align: Any) -> str:
    if align not in ALIGNS:
        raise WorkbenchError(f"align= must be one of {', '.join(map(repr, ALIGNS))}, got {align!r}.")
    return align


def alignment(model: Any, ds: Dataset, align: str = "exact", *, corrupt: bool = True) -> Alignment:
    """Tokenise every example and work out its columns; `corrupt=True` requires corrupt prompts."""
    align = check_align(align)
    if not isinstance(ds, Dataset):
        raise WorkbenchError(f"Expected a wb.Dataset, got {type(ds).__name__}.")
    if corrupt and ds.corrupt is None:
        raise WorkbenchError(
            "This op compares a clean and a corrupt run, but the dataset has no corrupt prompts: give "
            "corrupt=[...] (or a corrupt template) to the Dataset."
        )
    clean_ids = [model.to_tokens(e.clean, what=f"clean prompt of example {i}") for i, e in enumerate(ds)]
    corrupt_ids: list[torch.Tensor | None] = []
    for i, (e, c) in enumerate(zip(ds, clean_ids, strict=True)):
        if e.corrupt is None:
            corrupt_ids.append(None)
            continue
        k = model.to_tokens(e.corrupt, what=f"corrupt prompt of example {i}")
        if k.shape[1] != c.shape[1]:
            raise TokenizationError(
                f"Example {i}: the clean and corrupt prompts must have the same number of tokens so positions "
                f"line up, but clean has {c.shape[1]}: {_describe(model.str_tokens(c))} and corrupt has "
                f"{k.shape[1]}: {_describe(model.str_tokens(k))}. Reword one of them (e.g. a name that is the "
                "same number of tokens), or drop the example."
            )
        corrupt_ids.append(k)
    tokens = [model.str_tokens(c) for c in clean_ids]
    lengths = [c.shape[1] for c in clean_ids]
    if align == "exact":
        if len(set(lengths)) > 1:
            common = Counter(lengths).most_common(1)[0][0]
            odd = [i for i, n in enumerate(lengths) if n != common]
            listed = "; ".join(f"example {i} has {lengths[i]}: {_describe(tokens[i])}" for i in odd[:5])
            more = f" (and {len(odd) - 5} more)" if len(odd) > 5 else ""
            raise TokenizationError(
                f"align='exact' needs every example to have the same number of tokens; most have {common}, but "
                f"{listed}{more}. Use align='right' (positions counted from the end) or align='roles' (named "
                "spans: a template's fields, or spans=), or drop those examples."
            )
        cols = [[[p] for p in range(lengths[0])] for _ in lengths]
        return Alignment(align, list(map(str, range(lengths[0]))), cols, clean_ids, corrupt_ids, tokens)
    if align == "right":
        k = min(lengths)
        cols = [[[n - k + j] for j in range(k)] for n in lengths]
        return Alignment(align, [str(j - k) for j in range(k)], cols, clean_ids, corrupt_ids, tokens)
    names, positions = _roles(model, ds, clean_ids, tokens)
    return Alignment(align, names, positions, clean_ids, corrupt_ids, tokens)


def _roles(
    model: Any, ds: Dataset, clean_ids: list[torch.Tensor], tokens: list[list[str]]
) -> tuple[list[str], list[list[list[int]]]]:
    first = ds[0]
    if first.spans is not None:
        return _explicit_roles(ds, clean_ids)
    if not first.fields and not first.segments:
        raise WorkbenchError(
            "align='roles' needs role spans: build the dataset with wb.Dataset.from_template(...) (its fields "
            "become roles), or give spans=[{'subject': (start, end)}, ...] per example."
        )
    per_example = [_template_roles(model, e, i, tokens[i]) for i, e in enumerate(ds)]
    # A field occurrence is one column when it is one token in every example, else its first and last token.
    multi = {name for roles in per_example for name, pos in roles if name.startswith("{") and len(pos) > 1}
    names: list[str] = []
    rows: list[list[list[int]]] = [[] for _ in per_example]
    for j, (name, _) in enumerate(per_example[0]):
        parts = [(f"{name} first", 0), (f"{name} last", -1)] if name in multi else [(name, None)]
        for label, pick in parts:
            names.append(label)
            for i, roles in enumerate(per_example):
                pos = roles[j][1]
                rows[i].append(pos if pick is None else [pos[pick]])
    for i, row in enumerate(rows):
        for label, pos in zip(names, row, strict=True):
            if not pos:
                raise TokenizationError(
                    f"Example {i}: role {label!r} has no tokens of its own in {_describe(tokens[i])} (the tokenizer "
                    "merged it into a neighbour). Reword the template so each piece is its own token, or give "
                    "explicit spans=."
                )
    return names, rows


def _template_roles(model: Any, e: Example, i: int, toks: list[str]) -> list[tuple[str, list[int]]]:
    """(role name, token positions) of one template example, in template order, the final token last."""
    enc = model.tokenizer(e.clean, return_offsets_mapping=True)
    offsets = enc.get("offset_mapping")
    if offsets is None:
        raise WorkbenchError(
            "align='roles' from a template needs a fast tokenizer (one that reports character offsets); give "
            "explicit spans= per example instead."
        )
    n = len(offsets)
    # Occurrence names: {A}, {B}, and {B}#2 for a field's second place.
    seen: Counter[str] = Counter()
    fields = []
    for fname, s, end, *_ in e.fields:
        seen[fname] += 1
        fields.append(("{" + fname + "}" + (f"#{seen[fname]}" if seen[fname] > 1 else ""), s, end))
    # The literal pieces between fields, by character range, in order (from the clean text).
    pieces: list[tuple[str, int, int]] = []
    cursor = 0
    ordered = sorted(fields, key=lambda f: f[1])
    for name, s, end in ordered:
        if s > cursor:
            pieces.append((_literal_name(e.clean[cursor:s]), cursor, s))
        pieces.append((name, s, end))
        cursor = end
    if cursor < len(e.clean):
        pieces.append((_literal_name(e.clean[cursor:]), cursor, len(e.clean)))
    final = n - 1
    # Fields claim every token that overlaps them first (" park" belongs to {PLACE} even when its space is
    # the template's), then each literal piece the tokens that start inside it; the final token is its own.
    claimed: set[int] = set()
    found: dict[int, list[int]] = {}
    for order in (True, False):
        for j, (name, s, end) in enumerate(pieces):
            if name.startswith("{") != order:
                continue
            pos = []
            for t, (a, b) in enumerate(offsets):
                if t == final or t in claimed or a == b:
                    continue
                if (a < end and b > s) if order else (s <= a < end):
                    pos.append(t)
            claimed.update(pos)
            found[j] = pos
    roles = [(name, found[j]) for j, (name, _, _) in enumerate(pieces)]
    if pieces and not pieces[-1][0].startswith("{") and not roles[-1][1]:
        roles.pop()  # a trailing literal that is only the final token ("... a{OBJECT} to") is the final role
    roles.append((FINAL, [final]))
    if len(offsets) != len(toks):
        raise WorkbenchError(
            f"Example {i}: the tokenizer's offsets do not match its tokens; give explicit spans=."
        )
    return roles


def _literal_name(text: str) -> str:
    """A literal piece of a template as a column label: its text, trimmed, quoted."""
    label = " ".join(text.split())
    if len(label) > 18:
        label = label[:8] + "…" + label[-8:]
    return repr(label or text)


def _explicit_roles(ds: Dataset, clean_ids: list[torch.Tensor]) -> tuple[list[str], list[list[list[int]]]]:
    names = list(ds[0].spans or {})
    rows = []
    for i, (e, ids) in enumerate(zip(ds, clean_ids, strict=True)):
        spans = e.spans or {}
        if list(spans) != names:
            raise WorkbenchError(
                f"Example {i} has spans {list(spans)}, example 0 has {names}: every example needs the same "
                "span names (in the same order) for align='roles'."
            )
        n = ids.shape[1]
        row = []
        for name in names:
            s, end = spans[name]
            if end > n:
                raise WorkbenchError(
                    f"Example {i}: span {name!r} = ({s}, {end}) runs past the prompt's {n} tokens (positions "
                    f"0..{n - 1}, end exclusive)."
                )
            row.append(list(range(s, end)))
        row.append([n - 1])
        rows.append(row)
    return names + [FINAL], rows
