"""Small datasets shipped with Workbench, written for the embedded model (`wb.load()`, SmolLM2-135M).

- `ioi(n)`: indirect object identification prompts (Wang et al. 2022) with ABC corruption.
- `facts()`: subject -> attribute facts the embedded model gets right, with the subject marked as a span.
- `task(name)`: in-context tasks for function vectors (Todd et al. 2024) as `wb.Task`s: antonyms,
  country_capital, uppercase, past_tense, english_french, singular_plural, capitalize (`TASKS`).

The data lives in `workbench/data/*.json` (shipped in the wheel); `tests/test_shipped_data.py` checks it
against the embedded model (single-token names, equal lengths, the model's accuracy, the subject spans).
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from functools import cache
from importlib import resources
from typing import Any

from .data.dataset import Dataset
from .data.task import Task
from .errors import WorkbenchError

__all__ = ["TASKS", "facts", "ioi", "task"]

# The shipped in-context tasks (workbench/data/tasks/<name>.json), in the order notebooks show them.
TASKS = (
    "antonyms",
    "country_capital",
    "uppercase",
    "past_tense",
    "english_french",
    "singular_plural",
    "capitalize",
)


@cache
def _load(name: str) -> dict[str, Any]:
    return json.loads(resources.files("workbench.data").joinpath(name).read_text(encoding="utf-8"))


def _corrupt_template(template: str) -> str:
    """The ABC corruption: the second {B} (the repeated subject, S2) becomes a third name {C}."""
    k = template.rindex("{B}")
    return template[:k] + "{C}" + template[k + 3 :]


def ioi(n: int = 32, seed: int = 0, template: int | None = None) -> Dataset:
    """`n` IOI prompts: "Then, Mary and John went to the park. John gave a ball to" -> " Mary".

    Each example draws three different single-token names (A = the indirect object IO, B = the subject S,
    C = a third name), a place and an object. target = "{A}" (the IO), foil = "{B}" (the subject); the
    corrupt prompt is the ABC corruption of the IOI paper: the second B (S2) replaced by C, so nothing
    tells which of A and B is repeated.

    Five templates in the style of Wang et al. 2022 ("Then, ... went to the", "After ... together,",
    "When ... got a", "While ... were
    working at the", "Later, ... were at the"), all written to be exactly
    15 tokens long for the embedded model's tokenizer: every example has the same length, so the default
    `align="exact"` works on the whole dataset (columns are token positions 0..14; A, B and S2 do not sit
    at the same position in every template). `template=None` cycles through all five (example i uses
    template i % 5); `template=k` uses template k only (then every position means the same thing).

    Every example also carries token spans `{"IO": ..., "S1": ..., "S2": ...}` (the name positions of
    that example's template), so `align="roles"` gives the columns IO, S1, S2 and final across templates.
    """
    data = _load("ioi.json")
    templates = data["templates"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise WorkbenchError(f"ioi(n) needs a positive number of examples, got n={n!r}.")
    if template is not None and (
        isinstance(template, bool) or not isinstance(template, int) or not 0 <= template < len(templates)
    ):
        raise WorkbenchError(
            f"ioi(template=) is a template index 0..{len(templates) - 1} (or None for all), got {template!r}."
        )
    rng = random.Random(seed)
    chosen = [template] * n if template is not None else [i % len(templates) for i in range(n)]
    examples = []
    for k in chosen:
        a, b, c = rng.sample(data["names"], 3)
        row = {
            "A": a,
            "B": b,
            "C": c,
            "PLACE": rng.choice(data["places"]),
            "OBJECT": rng.choice(data["objects"]),
        }
        t = templates[k]["text"]
        one = Dataset.from_template(t, rows=[row], corrupt=_corrupt_template(t), target="{A}", foil="{B}")[0]
        spans = {role: tuple(span) for role, span in templates[k]["spans"].items()}
        examples.append(replace(one, spans=spans))
    return Dataset._of(examples, "ioi" if template is None else f"ioi (template {template})")


def facts(relation: str | None = None) -> Dataset:
    """Subject -> attribute facts the embedded model gets right ("The Eiffel Tower is located in the city
    of" -> " Paris"), in six relations: landmark_city, company_country, person_field, country_capital,
    country_language, city_country (`relation=` keeps one). The target is the answer's first token.

    Each fact has a counterfactual corrupt prompt: the same relation with another subject of the same
    token length (and the same subject positions) whose answer differs; the foil is that answer.
    `spans=[{"subject": (start, end)}]` marks the subject's tokens (end exclusive, without a leading
    "The"), so `align="roles"` gives the columns subject and final (the causal-tracing picture of Meng et
    al. 2022). Facts were kept only if the embedded model's clean top-1 next token is the target: the
    json (`workbench/data/facts.json`) records how many candidates were tried (233; 120 kept).
    """
    data = _load("facts.json")
    rows = data["facts"]
    if relation is not None:
        if relation not in data["relations"]:
            raise WorkbenchError(
                f"facts(relation=) is one of {', '.join(map(repr, data['relations']))}, got {relation!r}."
            )
        rows = [f for f in rows if f["relation"] == relation]
    return Dataset.from_records(
        [
            {
                "clean": f["clean"],
                "corrupt": f["corrupt"],
                "target": f["target"],
                "foil": f["foil"],
                "spans": {"subject": tuple(f["subject"])},
            }
            for f in rows
        ],
        name="facts" if relation is None else f"facts ({relation})",
    )


def task(name: str) -> Task:
    """A shipped in-context task for function vectors: (input, answer) pairs and the template
    "Q: {x}\nA: {y}\n\n" (Todd et al. 2024's default), written for the embedded model.

    Every answer is one token of the embedded model's tokenizer (with the leading space the template puts
    before it), no answer equals its input, and each task has 50 or more pairs; `tests/test_shipped_tasks.py`
    checks that, and the model's 10-shot accuracy on each (english_french is a task the 135M model does not
    do in context: it mostly copies the English word). Names: see `TASKS`; each file records where its pairs
    come from (`task.description`, and the json's "source")."""
    if not isinstance(name, str) or name not in TASKS:
        raise WorkbenchError(
            f"wb.datasets.task() knows {', '.join(map(repr, TASKS))}; got {name!r}. For your own pairs use "
            "wb.Task(pairs=[('hot', 'cold'), ...])."
        )
    data = _load(f"tasks/{name}.json")
    t = Task([tuple(p) for p in data["pairs"]], data["template"], name=data["name"])
    t.description = data["description"]
    return t
