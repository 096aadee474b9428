"""`wb.Dataset`: many prompt pairs, each with its own answer, as the unit of input of every op.

An example is a clean prompt, an optional corrupt prompt of the same token length, a target and a foil
token (the answer and the alternative a metric compares), and optional role spans: named token ranges
(`{"subject": (1, 4)}`, end exclusive). A template dataset also keeps, per example, the character span of
each field occurrence, from which `align="roles"` derives its columns (`workbench.data.align`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import WorkbenchError
from ..validate import check_text

Span = tuple[int, int]


@dataclass(frozen=True)
class Example:
    """One row of a Dataset: the prompts, the answer tokens and the role spans of one example."""

    clean: str
    corrupt: str | None = None
    target: str | int | None = None
    foil: str | int | None = None
    spans: Mapping[str, Span] | None = None  # token spans of the clean prompt, end exclusive
    fields: tuple[tuple[str, int, int, int, int], ...] = ()  # (name, clean start, end, corrupt start, end)
    segments: tuple[str, ...] = ()  # a template's literal text pieces (role names), in order

    def __repr__(self) -> str:
        parts = [f"clean={self.clean!r}"]
        for name in ("corrupt", "target", "foil", "spans"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={dict(value) if name == 'spans' else value!r}")
        return "Example(" + ", ".join(parts) + ")"


def _column(values: Any, n: int | None, name: str) -> list[Any] | None:
    """A column as a list (None stays None; one str/int broadcasts to n rows)."""
    if values is None:
        return None
    if isinstance(values, str | int) and not isinstance(values, bool):
        return None if n is None else [values] * n
    if hasattr(values, "tolist") and not isinstance(values, list | tuple):
        values = values.tolist()
    if not isinstance(values, Iterable):
        raise WorkbenchError(
            f"Dataset {name}= must be a list (one per example) or one token for all, got {type(values).__name__}."
        )
    return list(values)


def _check_spans(spans: Any, i: int) -> dict[str, Span]:
    if not isinstance(spans, Mapping):
        raise WorkbenchError(
            f"Example {i}: spans must be a dict of name -> (start, end) token positions (end exclusive), "
            f"e.g. {{'subject': (1, 4)}}; got {type(spans).__name__}."
        )
    out: dict[str, Span] = {}
    for name, span in spans.items():
        ok = isinstance(name, str) and isinstance(span, Sequence) and len(span) == 2
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in span)
        if not ok or not 0 <= span[0] < span[1]:
            raise WorkbenchError(
                f"Example {i}: span {name!r} = {span!r} is not a (start, end) pair of token positions with "
                "0 <= start < end (end exclusive), e.g. (1, 4) for tokens 1, 2 and 3."
            )
        out[name] = (int(span[0]), int(span[1]))
    return out


class Dataset:
    """Prompt pairs with their answers: `wb.Dataset(clean=[...], corrupt=[...], target=[...], foil=[...])`.

    `target`/`foil` are one token for all examples (" Paris") or one per example; `corrupt` is optional
    (ablation, the lens and attribution without a corrupt run need none). `len(ds)`, `ds[i]` (an Example),
    `ds[2:5]` / `ds[[0, 3]]` (a Dataset), iteration, `ds.filter(fn)`, `ds.filter_correct(model)`.
    """

    def __init__(
        self,
        clean: Sequence[str],
        corrupt: Sequence[str] | None = None,
        target: Sequence[str | int] | str | int | None = None,
        foil: Sequence[str | int] | str | int | None = None,
        *,
        spans: Sequence[Mapping[str, Span]] | None = None,
        name: str = "",
    ) -> None:
        if isinstance(clean, str):
            raise WorkbenchError(
                "Dataset clean= takes a list of prompts; for one prompt pass [prompt] (or call the op with "
                "the prompt itself)."
            )
        rows = _column(clean, None, "clean")
        if not rows:
            raise WorkbenchError(
                "The dataset is empty: give at least one clean prompt, e.g. wb.Dataset(clean=['The Eiffel "
                "Tower is in'], target=' Paris')."
            )
        n = len(rows)
        columns = {
            "corrupt": _column(corrupt, None, "corrupt") if not isinstance(corrupt, str) else None,
            "target": _column(target, n, "target"),
            "foil": _column(foil, n, "foil"),
            "spans": _column(spans, None, "spans"),
        }
        if isinstance(corrupt, str):
            raise WorkbenchError(
                "Dataset corrupt= takes a list of prompts, one per clean prompt, not one string."
            )
        wrong = {k: len(v) for k, v in columns.items() if v is not None and len(v) != n}
        if wrong:
            listed = ", ".join(f"{k} has {m}" for k, m in wrong.items())
            raise WorkbenchError(
                f"The dataset's columns have different lengths: clean has {n} rows, {listed}. Give one "
                "entry per example (or one token for all, for target/foil)."
            )
        examples = []
        for i in range(n):
            check_text(rows[i], f"clean prompt of example {i}")
            corrupt_i = columns["corrupt"][i] if columns["corrupt"] is not None else None
            if corrupt_i is not None:
                check_text(corrupt_i, f"corrupt prompt of example {i}")
            spans_i = columns["spans"][i] if columns["spans"] is not None else None
            examples.append(
                Example(
                    clean=rows[i],
                    corrupt=corrupt_i,
                    target=columns["target"][i] if columns["target"] is not None else None,
                    foil=columns["foil"][i] if columns["foil"] is not None else None,
                    spans=None if spans_i is None else _check_spans(spans_i, i),
                )
            )
        self._set(examples, name)

    def _set(self, examples: list[Example], name: str) -> None:
        self.examples: list[Example] = examples
        self.name = name
        have = {k: [getattr(e, k) is not None for e in examples] for k in ("corrupt", "target", "foil")}
        for key, flags in have.items():
            if any(flags) and not all(flags):
                missing = [i for i, f in enumerate(flags) if not f][:5]
                raise WorkbenchError(
                    f"Some examples have a {key} and some do not (missing in examples {missing}): give "
                    f"every example a {key}, or none."
                )

    @classmethod
    def _of(cls, examples: list[Example], name: str = "") -> Dataset:
        if not examples:
            raise WorkbenchError(
                "The dataset is empty (a filter or a slice kept no examples): loosen the filter."
            )
        ds = cls.__new__(cls)
        ds._set(examples, name)
        return ds

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]] | Any, *, name: str = "") -> Dataset:
        """One dict per example with keys clean (required), corrupt, target, foil, spans (a pandas
        DataFrame works too: its rows are the records)."""
        if hasattr(records, "to_dict") and hasattr(records, "columns"):
            records = records.to_dict("records")
        records = list(records)
        known = {"clean", "corrupt", "target", "foil", "spans"}
        for i, r in enumerate(records):
            if not isinstance(r, Mapping) or "clean" not in r:
                raise WorkbenchError(
                    f"Record {i} must be a dict with at least a 'clean' prompt (keys: clean, corrupt, "
                    f"target, foil, spans); got {r!r:.80}."
                )
            extra = set(r) - known
            if extra:
                raise WorkbenchError(
                    f"Record {i} has unknown keys {sorted(extra)}: the keys are clean, corrupt, target, foil, spans."
                )

        def col(key: str) -> list[Any] | None:
            values = [r.get(key) for r in records]
            return None if all(v is None for v in values) else values

        return cls(
            [r["clean"] for r in records],
            col("corrupt"),
            col("target"),
            col("foil"),
            spans=col("spans"),
            name=name,
        )

    @classmethod
    def from_template(
        cls,
        template: str,
        *,
        rows: Iterable[Mapping[str, Any]] | Any,
        corrupt: str | None = None,
        target: str | None = None,
        foil: str | None = None,
        name: str = "",
    ) -> Dataset:
        """Fill `template` ("Then,{A} and{B} went ...") with each row's fields (a list of dicts or a
        DataFrame); `corrupt` is a second template over the same rows; `target`/`foil` are templates too
        ("{A}") or fixed tokens. The fields' places are kept, so `align="roles"` knows the spans."""
        if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
            rows = rows.to_dict("records")
        rows = list(rows)
        clean_parts = _parse(template, "template")
        corrupt_parts = _parse(corrupt, "corrupt template") if corrupt is not None else None
        examples = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise WorkbenchError(f"Template row {i} must be a dict of field -> text, got {row!r:.60}.")
            clean_text, clean_fields = _fill(clean_parts, row, i, "template")
            corrupt_text, corrupt_fields = (None, None)
            if corrupt_parts is not None:
                corrupt_text, corrupt_fields = _fill(corrupt_parts, row, i, "corrupt template")
            fields = []
            for j, (fname, s, e) in enumerate(clean_fields):
                cs, ce = (s, e)
                if corrupt_fields is not None and j < len(corrupt_fields):
                    cs, ce = corrupt_fields[j][1:]
                fields.append((fname, s, e, cs, ce))
            examples.append(
                Example(
                    clean=clean_text,
                    corrupt=corrupt_text,
                    target=_fill(_parse(target, "target"), row, i, "target")[0]
                    if target is not None
                    else None,
                    foil=_fill(_parse(foil, "foil"), row, i, "foil")[0] if foil is not None else None,
                    fields=tuple(fields),
                    segments=tuple(text for text, f in clean_parts if f is None),
                )
            )
        if (
            corrupt_parts is not None
            and [f for _, f in corrupt_parts if f]
            and len([f for _, f in corrupt_parts if f]) != len([f for _, f in clean_parts if f])
        ):
            raise WorkbenchError(
                "The corrupt template must have as many fields as the clean template (in the same places), so "
                f"roles line up: {template!r} vs {corrupt!r}."
            )
        if not examples:
            raise WorkbenchError("from_template got no rows: give rows=[{field: text, ...}, ...].")
        return cls._of(examples, name)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return Dataset._of(self.examples[index], self.name)
        if isinstance(index, Sequence | range) and not isinstance(index, str) or hasattr(index, "tolist"):
            keys = index.tolist() if hasattr(index, "tolist") else list(index)
            if keys and all(isinstance(k, bool) for k in keys):
                keys = [i for i, k in enumerate(keys) if k]
            return Dataset._of([self.examples[int(k)] for k in keys], self.name)
        if isinstance(index, bool) or not isinstance(index, int):
            raise WorkbenchError(f"Index a Dataset with an int, a slice or a list of ints, got {index!r}.")
        if not -len(self) <= index < len(self):
            raise WorkbenchError(
                f"Example {index} does not exist: the dataset has {len(self)} (0..{len(self) - 1})."
            )
        return self.examples[index]

    @property
    def clean(self) -> list[str]:
        return [e.clean for e in self.examples]

    @property
    def corrupt(self) -> list[str] | None:
        return None if self.examples[0].corrupt is None else [e.corrupt for e in self.examples]  # type: ignore[misc]

    @property
    def target(self) -> list[str | int] | None:
        return None if self.examples[0].target is None else [e.target for e in self.examples]  # type: ignore[misc]

    @property
    def foil(self) -> list[str | int] | None:
        return None if self.examples[0].foil is None else [e.foil for e in self.examples]  # type: ignore[misc]

    def filter(self, keep: Callable[[Example], bool]) -> Dataset:
        """The examples for which `keep(example)` is true."""
        return Dataset._of([e for e in self.examples if keep(e)], self.name)

    def filter_correct(self, model: Any, *, batch_size: int | None = None) -> Dataset:
        """The examples whose clean prompt's top-1 next token is the target (one batched forward pass per
        chunk of examples, padded with an attention mask and position ids)."""
        from .predict import predictions

        if self.target is None:
            raise WorkbenchError(
                "filter_correct needs each example's target (the answer to check): give target= to the Dataset."
            )
        preds = predictions(model, self, batch_size=batch_size)
        keep = [i for i, p in enumerate(preds) if p.correct]
        return Dataset._of([self.examples[i] for i in keep], self.name)

    def to_frame(self) -> Any:
        """One row per example: clean, corrupt, target, foil (and spans)."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "clean": e.clean,
                    "corrupt": e.corrupt,
                    "target": e.target,
                    "foil": e.foil,
                    **({"spans": dict(e.spans)} if e.spans else {}),
                }
                for e in self.examples
            ]
        )

    def __repr__(self) -> str:
        cols = ["clean"] + [k for k in ("corrupt", "target", "foil") if getattr(self, k) is not None]
        first = self.examples[0]
        label = f" {self.name!r}" if self.name else ""
        return (
            f"Dataset{label}: {len(self)} examples ({', '.join(cols)})"
            + ("; roles from a template" if first.fields else "")
            + ("; spans " + ", ".join(first.spans) if first.spans else "")
            + f"\n  [0] {first.clean!r:.80}"
            + (f" -> {first.target!r}" if first.target is not None else "")
        )


_FIELD = string.Formatter()


def _parse(template: Any, what: str) -> list[tuple[str, str | None]]:
    """A template as (literal text, None) and ("", field name) pieces, in order."""
    if not isinstance(template, str):
        raise WorkbenchError(
            f"The {what} must be a string like 'Then,{{A}} and{{B}} went', got {template!r:.60}."
        )
    parts: list[tuple[str, str | None]] = []
    try:
        parsed = list(_FIELD.parse(template))
    except ValueError as exc:
        raise WorkbenchError(
            f"The {what} {template!r} is not a valid template ({exc}); fields look like {{A}}."
        ) from None
    for literal, fname, spec, conv in parsed:
        if literal:
            parts.append((literal, None))
        if fname is not None:
            if not re.fullmatch(r"\w+", fname) or spec or conv:
                raise WorkbenchError(
                    f"The {what} field {{{fname}}} must be a plain name like {{A}} (no format spec or attribute)."
                )
            parts.append(("", fname))
    return parts


def _fill(
    parts: list[tuple[str, str | None]], row: Mapping[str, Any], i: int, what: str
) -> tuple[str, list[tuple[str, int, int]]]:
    """The filled text and the character span of each field occurrence."""
    text, spans = "", []
    for literal, fname in parts:
        if fname is None:
            text += literal
            continue
        if fname not in row:
            raise WorkbenchError(
                f"Row {i} has no field {fname!r}, which the {what} uses: give it (the row has {sorted(row)})."
            )
        value = row[fname]
        if not isinstance(value, str):
            raise WorkbenchError(f"Row {i}: field {fname!r} must be text, got {value!r:.40}.")
        spans.append((fname, len(text), len(text) + len(value)))
        text += value
    return text, spans
