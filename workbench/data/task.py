"""`wb.Task`: an in-context learning task as (input, answer) pairs and a template (Todd et al. 2024's setting).

A Task builds, deterministically from a seed, the prompts function-vector methods need:
- n-shot prompts: `n_shots` demonstrations filled into the template, then a query with the answer left out
  ("Q: hot\\nA: cold\\n\\nQ: big\\nA: small\\n\\nQ: up\\nA:" -> " down");
- shuffled-label prompts: the same demonstrations and query with the demonstrations' answers permuted among
  them (the paper's corrupted in-context prompts: the examples no longer show the task);
- zero-shot prompts: the query alone ("Q: up\\nA:").

The answer of a query is the whitespace that ends the template before `{y}` plus y (" down" for the default
template): the tokenizer folds the space into the word, so the answer is one token and the prompt ends before
it. Every method reads one token, so every answer must be one token of the model's tokenizer
(`answer_ids(model)` checks it, in context, and names the pairs that are not).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import TokenizationError, WorkbenchError
from ..validate import as_int, check_text
from .dataset import Dataset

DEFAULT_TEMPLATE = "Q: {x}\nA: {y}\n\n"


def _check_template(template: Any) -> tuple[str, str, str]:
    """(text before {x}, text between {x} and {y}, text after {y}) of a template, or an error naming the fix."""
    if not isinstance(template, str):
        raise WorkbenchError(
            f"template= takes a string with {{x}} and {{y}}, e.g. {DEFAULT_TEMPLATE!r}; got {type(template).__name__}."
        )
    check_text(template, "template")
    if (
        template.count("{x}") != 1
        or template.count("{y}") != 1
        or template.index("{x}") > template.index("{y}")
    ):
        raise WorkbenchError(
            f"The template {template!r} must hold {{x}} (the input) once and then {{y}} (the answer) once, e.g. "
            f"{DEFAULT_TEMPLATE!r}."
        )
    before, rest = template.split("{x}")
    middle, after = rest.split("{y}")
    if not middle.strip():
        raise WorkbenchError(
            f"The template {template!r} has nothing but whitespace between {{x}} and {{y}}: the query prompt would "
            "end right after the input. Put a cue there, e.g. 'Q: {x}\\nA: {y}\\n\\n' or '{x} -> {y}\\n'."
        )
    return before, middle, after


def _check_pairs(pairs: Any) -> list[tuple[str, str]]:
    if isinstance(pairs, str | bytes | dict) or not hasattr(pairs, "__iter__"):
        raise WorkbenchError(
            "pairs= takes a list of (input, answer) string pairs, e.g. pairs=[('hot', 'cold'), ('big', 'small')]."
        )
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, str) or not isinstance(p, Sequence) or len(p) != 2:
            raise WorkbenchError(
                f"Pair {i} is {p!r:.60}: each pair is (input, answer), two strings, e.g. ('hot', 'cold')."
            )
        x, y = p
        if not isinstance(x, str) or not isinstance(y, str):
            raise WorkbenchError(
                f"Pair {i} ({x!r:.30}, {y!r:.30}) must be two strings (input, answer), e.g. ('hot', 'cold')."
            )
        check_text(x, f"input of pair {i}")
        check_text(y, f"answer of pair {i}")
        if not x.strip() or not y.strip():
            raise WorkbenchError(f"Pair {i} ({x!r}, {y!r}) has an empty input or answer: give both words.")
        out.append((x, y))
    if not out:
        raise WorkbenchError(
            "pairs= is empty: give (input, answer) pairs, e.g. pairs=[('hot', 'cold'), ...]."
        )
    return out


class Task:
    """An in-context task: `wb.Task(pairs=[("hot", "cold"), ...], template="Q: {x}\\nA: {y}\\n\\n")`.

    `template` holds `{x}` (the input) and then `{y}` (the answer); one demonstration is the template filled
    in, a query is the template cut before `{y}` (without the whitespace there, which becomes the answer's
    leading space). `len(task)`, `task[i]` (a pair), `task[2:10]` / `task[[0, 3]]` (a Task), iteration.
    Shipped tasks for the embedded model: `wb.datasets.task(name)`.
    """

    def __init__(
        self, pairs: Sequence[tuple[str, str]], template: str = DEFAULT_TEMPLATE, *, name: str = "task"
    ) -> None:
        self._before, self._middle, self._after = _check_template(template)
        self.pairs: list[tuple[str, str]] = _check_pairs(pairs)
        self.template = template
        if not isinstance(name, str) or not name.strip():
            raise WorkbenchError(f"name= takes a non-empty string, got {name!r}.")
        self.name = name
        self.description = ""

    # ------------------------------------------------------------------------ the pieces of a prompt
    def demonstration(self, x: str, y: str) -> str:
        """One filled-in example: 'Q: hot\\nA: cold\\n\\n'."""
        return self._before + x + self._middle + y + self._after

    def query(self, x: str) -> str:
        """The zero-shot prompt of input x: 'Q: hot\\nA:' (the template up to {y}, trailing whitespace cut)."""
        return self._before + x + self._middle.rstrip()

    def answer(self, y: str) -> str:
        """The answer the model should give after a query: ' cold' (the cut whitespace, then y)."""
        cut = self._middle[len(self._middle.rstrip()) :]
        return cut + y

    def prompt(self, demonstrations: Sequence[tuple[str, str]], x: str) -> str:
        """The demonstrations filled in, then the query of x."""
        return "".join(self.demonstration(a, b) for a, b in demonstrations) + self.query(x)

    # ------------------------------------------------------------------------ sampling
    def check_shots(self, n_shots: Any) -> int:
        """n_shots as an int that this task has pairs for (n_shots demonstrations + 1 query, all distinct)."""
        n_shots = as_int(n_shots, "n_shots", lo=0)
        if n_shots + 1 > len(self.pairs):
            raise WorkbenchError(
                f"Task {self.name!r} has {len(self.pairs)} pairs, but n_shots={n_shots} needs at least "
                f"{n_shots + 1} ({n_shots} demonstrations and a query, all different pairs): give the task more "
                f"pairs or ask for n_shots <= {len(self.pairs) - 1}."
            )
        return n_shots

    def draws(self, n_shots: int, n: int, seed: int = 0) -> list[tuple[list[int], int, list[int]]]:
        """`n` prompts' (demonstration pair indices, query pair index, label permutation), from `seed`.

        Prompt i draws n_shots + 1 different pairs (the last is the query) and a permutation of the
        demonstrations' labels (used by the shuffled-label prompts); the first k draws of n are the draws of
        k, so more prompts extend fewer."""
        n_shots = self.check_shots(n_shots)
        n = as_int(n, "n_prompts", lo=1)
        seed = as_int(seed, "seed")
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            idx = rng.sample(range(len(self.pairs)), n_shots + 1)
            perm = list(range(n_shots))
            rng.shuffle(perm)
            out.append((idx[:n_shots], idx[n_shots], perm))
        return out

    def prompts(self, n_shots: int = 10, n: int = 25, *, seed: int = 0, shuffled: bool = False) -> list[str]:
        """`n` n-shot prompts (`shuffled=True`: with the demonstrations' labels permuted), from `seed`."""
        ds = self.dataset(n_shots, n, seed=seed)
        return list(ds.corrupt if shuffled else ds.clean)  # type: ignore[arg-type]

    def dataset(self, n_shots: int = 10, n: int = 25, *, seed: int = 0) -> Dataset:
        """`n` examples: clean = an n-shot prompt, corrupt = the same prompt with the demonstrations' labels
        shuffled (a random permutation, as in the paper; a label may stay in place), target = the query's answer.

        Clean and corrupt have the same tokens except the moved labels, so with single-token answers they
        have the same length; any op over a Dataset takes it (e.g. `wb.patch_sweep(model, ds, metric=wb.prob(),
        site='head')`)."""
        clean, corrupt, target = [], [], []
        for demos, q, perm in self.draws(n_shots, n, seed):
            pairs = [self.pairs[j] for j in demos]
            shuffled = [(pairs[k][0], pairs[perm[k]][1]) for k in range(len(pairs))]
            x, y = self.pairs[q]
            clean.append(self.prompt(pairs, x))
            corrupt.append(self.prompt(shuffled, x))
            target.append(self.answer(y))
        return Dataset(clean=clean, corrupt=corrupt, target=target, name=f"{self.name} ({n_shots}-shot)")

    def zero_shot(self, n: int | None = None, *, seed: int = 0) -> Dataset:
        """Zero-shot prompts (the query alone) with their answers as targets: every pair in order
        (`n=None`), or `n` pairs drawn without replacement from `seed`."""
        order = list(range(len(self.pairs)))
        if n is not None:
            n = as_int(n, "n_prompts", lo=1, hi=len(self.pairs))
            order = random.Random(as_int(seed, "seed")).sample(order, n)
        return Dataset(
            clean=[self.query(self.pairs[i][0]) for i in order],
            target=[self.answer(self.pairs[i][1]) for i in order],
            name=f"{self.name} (zero-shot)",
        )

    def split(self, test: float = 0.3, *, seed: int = 0) -> tuple[Task, Task]:
        """(train, test): the pairs shuffled by `seed` and cut, a `test` fraction (or count) held out, so a
        vector extracted from the train prompts can be evaluated on queries it never saw."""
        n = len(self.pairs)
        if isinstance(test, float) and 0 < test < 1:
            k = max(1, round(n * test))
        else:
            k = as_int(test, "test", lo=1, hi=n - 1, hint=" (a fraction 0 < test < 1, or a number of pairs)")
        if not 0 < k < n:
            raise WorkbenchError(f"split(test={test!r}) leaves no pairs on one side: the task has {n} pairs.")
        order = list(range(n))
        random.Random(as_int(seed, "seed")).shuffle(order)
        held = sorted(order[:k])
        kept = sorted(order[k:])
        return self._sub(kept, "train"), self._sub(held, "test")

    def _sub(self, indices: Sequence[int], suffix: str | None = None) -> Task:
        name = self.name + (f" ({suffix})" if suffix else "")
        t = Task([self.pairs[i] for i in indices], self.template, name=name)
        t.description = self.description
        return t

    # ------------------------------------------------------------------------ the model's tokens
    def answer_ids(self, model: Any) -> list[int]:
        """Each pair's answer as one token id of `model`'s tokenizer, read as the model reads it after a
        query (the tokens of query + answer are the query's tokens and then exactly one more); an error names
        every pair that is not."""
        tok = model.tokenizer
        out, bad = [], []
        for x, y in self.pairs:
            q = self.query(x)
            ids = tok(q + self.answer(y), add_special_tokens=False).input_ids
            head = tok(q, add_special_tokens=False).input_ids
            if len(ids) == len(head) + 1 and ids[: len(head)] == head:
                out.append(int(ids[-1]))
            else:
                pieces = [tok.decode([i]) for i in ids[len(head) :]] if ids[: len(head)] == head else None
                bad.append((x, y, pieces))
        if bad:
            shown = "; ".join(
                f"({x!r}, {y!r}) -> {self.answer(y)!r}"
                + (f" = {len(p)} tokens {p}" if p is not None else " (merges with the end of the query)")
                for x, y, p in bad[:8]
            )
            more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
            raise TokenizationError(
                f"Task {self.name!r}: {len(bad)} of {len(self.pairs)} answers are not one token for this model's "
                f"tokenizer, which every function-vector method reads: {shown}{more}. Remove those pairs or pick "
                "single-token answers (task.single_token(model) keeps only the pairs that are)."
            )
        return out

    def single_token(self, model: Any) -> Task:
        """The pairs whose answers are one token for `model` (see `answer_ids`)."""
        keep = []
        for i in range(len(self.pairs)):
            try:
                self._sub([i]).answer_ids(model)
            except TokenizationError:
                continue
            keep.append(i)
        if not keep:
            raise TokenizationError(f"Task {self.name!r}: no answer is one token for this model's tokenizer.")
        return self._sub(keep)

    def accuracy(self, model: Any, n_shots: int = 10, n: int = 50, *, seed: int = 0) -> float:
        """The model's top-1 accuracy on `n` n-shot prompts (does the model do the task in context?)."""
        from .predict import predictions

        self.answer_ids(model)
        ds = self.dataset(n_shots, n, seed=seed)
        preds = predictions(model, Dataset(clean=ds.clean, target=ds.target))
        return sum(p.correct for p in preds) / len(preds)

    # ------------------------------------------------------------------------ container
    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self._sub(range(len(self.pairs))[index])
        if isinstance(index, list | tuple):
            return self._sub([as_int(i, "index", lo=-len(self), hi=len(self) - 1) % len(self) for i in index])
        return self.pairs[as_int(index, "index", lo=-len(self), hi=len(self) - 1)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and (self.pairs, self.template) == (other.pairs, other.template)

    def __hash__(self) -> int:
        return hash((tuple(self.pairs), self.template))

    def __repr__(self) -> str:
        shown = ", ".join(f"{x!r} -> {y!r}" for x, y in self.pairs[:3])
        return (
            f"Task {self.name!r}: {len(self.pairs)} pairs ({shown}{', ...' if len(self.pairs) > 3 else ''}), "
            f"template {self.template!r}"
        )
