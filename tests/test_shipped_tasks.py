"""The in-context tasks shipped for function vectors (`wb.datasets.task`), checked against the embedded model
they are written for (SmolLM2-135M): 50+ pairs, every answer one token in context, no answer equal to its
input, the model's 10-shot accuracy (does it do the task in context?) and its zero-shot accuracy (the
baseline a function vector has to beat)."""

from __future__ import annotations

import json
from importlib import resources

import pytest

import workbench as wb
from workbench.data import Dataset
from workbench.data.predict import predictions

pytestmark = pytest.mark.embedded

# The model's 10-shot top-1 accuracy, task.accuracy(model, n_shots=10, n=50, seed=0), measured: antonyms 0.82,
# country_capital 0.80, uppercase 0.90, past_tense 0.98, english_french 0.00 (the 135M model does not translate
# in context: it copies the English word or starts it), singular_plural 1.00, capitalize 0.96.
ICL_FLOOR = {
    "antonyms": 0.75,
    "country_capital": 0.72,
    "uppercase": 0.84,
    "past_tense": 0.94,
    "singular_plural": 0.94,
    "capitalize": 0.9,
}
ICL_CEILING = {"english_french": 0.1}  # kept as the task the model cannot do (no function vector claims)


def _json(name: str) -> dict:
    return json.loads(
        resources.files("workbench.data").joinpath(f"tasks/{name}.json").read_text(encoding="utf-8")
    )


@pytest.fixture(scope="session")
def model():
    return wb.load()


def test_every_task_is_shipped_and_well_formed():
    assert set(wb.datasets.TASKS) == set(ICL_FLOOR) | set(ICL_CEILING)
    for name in wb.datasets.TASKS:
        assert resources.files("workbench.data").joinpath(f"tasks/{name}.json").is_file()
        data = _json(name)
        task = wb.datasets.task(name)
        assert data["name"] == task.name == name and data["source"] and task.description
        assert task.template == "Q: {x}\nA: {y}\n\n"
        assert len(task) >= 50, name
        inputs = [x for x, _ in task.pairs]
        assert len(set(inputs)) == len(inputs), f"{name}: an input twice"
        assert all(x != y for x, y in task.pairs), f"{name}: an answer equal to its input"
        assert all(x == x.strip() and y == y.strip() and x and y for x, y in task.pairs)


def test_answers_are_single_tokens_in_context(model):
    for name in wb.datasets.TASKS:
        task = wb.datasets.task(name)
        ids = task.answer_ids(
            model
        )  # raises, naming the pairs, unless every answer is one token after its query
        assert len(ids) == len(task)
        for (_, y), i in zip(task.pairs, ids, strict=True):
            assert model.token_id(" " + y) == i
        ds = task.dataset(10, 5, seed=0)
        for clean, corrupt in zip(ds.clean, ds.corrupt or [], strict=True):  # shuffled labels keep the length
            assert model.to_tokens(clean).shape == model.to_tokens(corrupt).shape


@pytest.mark.parametrize("name", wb.datasets.TASKS)
def test_the_model_does_the_task_in_context_but_not_zero_shot(model, name):
    task = wb.datasets.task(name)
    acc = task.accuracy(model, n_shots=10, n=50, seed=0)
    if name in ICL_FLOOR:
        assert acc >= ICL_FLOOR[name], (name, acc)
    else:
        assert acc <= ICL_CEILING[name], (name, acc)
    # zero shot (the query alone) the model does not answer: measured 0.00 on every task but country_capital
    # (0.04: it mostly repeats the country)
    zero = task.zero_shot()
    zero_acc = sum(
        p.correct for p in predictions(model, Dataset(clean=zero.clean, target=zero.target))
    ) / len(zero)
    assert zero_acc <= 0.08, (name, zero_acc)
