"""wb.head_detectors against the plain-hook reference (eager patterns, target keys found by explicit loops) on
tiny GPT-2, Llama and GPT-NeoX and on the embedded model; its prompts, result type and bad input."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch

import workbench as wb
from tests import reference as ref
from tests.conftest import assert_close, run_code, tiny
from workbench.ops.head_detectors import DETECTORS, repeated_random_tokens

FAMILIES = ["gpt2", "llama", "gpt_neox"]
# ragged lengths (left padding), repeats, and one prompt with no repeated token
PROMPTS = [
    "The cat sat on the mat and the cat sat",
    "Paris is in France. Paris is in",
    "hello world",
]


def _check(scores, expected) -> None:
    assert sorted(scores.names) == sorted(expected)
    for name, (values, count) in expected.items():
        assert_close(scores[name], values, what=name)
        assert scores.counts[name] == count, name
        assert scores[name].dtype == np.float32
        assert (scores[name] >= 0).all() and (scores[name] <= 1).all()


@pytest.mark.parametrize("fam", FAMILIES)
def test_random_tokens_match_reference(fam):
    model = tiny(fam)
    scores = wb.head_detectors(model, seq_len=12, n_seqs=3, seed=1)
    rows = repeated_random_tokens(model, 12, 3, 1).tolist()
    _check(scores, ref.reference_head_detectors(model.hf, rows, DETECTORS))
    assert scores.excluded == {name: [] for name in DETECTORS}


@pytest.mark.parametrize("fam", FAMILIES)
def test_prompts_match_reference(fam):
    model = tiny(fam)
    scores = wb.head_detectors(model, PROMPTS)
    rows = [ref.tokens(model.tokenizer, p)[0].tolist() for p in PROMPTS]
    _check(scores, ref.reference_head_detectors(model.hf, rows, DETECTORS))
    # 'hello world' repeats nothing: left out of the duplicate and induction scores, and said so
    assert scores.excluded["duplicate_token"] == [2] and scores.excluded["induction"] == [2]
    assert scores.excluded["previous_token"] == []
    assert np.isnan(scores.per_prompt["induction"][2]).all()
    assert np.isfinite(scores.per_prompt["induction"][:2]).all()
    assert "left out" in repr(scores)


def test_per_prompt_and_dataset():
    model = tiny("llama")
    ds = wb.Dataset(clean=PROMPTS[:2])
    scores = wb.head_detectors(model, ds, detectors=["induction", "previous-token"])
    assert scores.names == ["induction", "previous_token"]
    for i, p in enumerate(PROMPTS[:2]):
        one = ref.reference_head_detectors(
            model.hf, [ref.tokens(model.tokenizer, p)[0].tolist()], ["induction"]
        )
        assert_close(scores.per_prompt["induction"][i], one["induction"][0], what=f"prompt {i}")


@pytest.fixture(scope="module")
def embedded():
    return wb.load()


@pytest.mark.embedded
def test_embedded_model_matches_reference(embedded):
    scores = wb.head_detectors(embedded, n_seqs=2)
    rows = repeated_random_tokens(embedded, 25, 2, 0).tolist()
    _check(scores, ref.reference_head_detectors(embedded.hf, rows, DETECTORS))


def test_repeated_random_tokens():
    model = tiny("llama")
    ids = repeated_random_tokens(model, 20, 4, seed=3)
    bos = model.tokenizer.bos_token_id
    assert ids.shape == (4, 41)
    assert (ids[:, 0] == bos).all()
    assert torch.equal(ids[:, 1:21], ids[:, 21:])
    special = set(model.tokenizer.all_special_ids)
    for row in ids[:, 1:21].tolist():
        assert len(set(row)) == 20 and not special & set(row)
    assert torch.equal(ids, repeated_random_tokens(model, 20, 4, seed=3))
    assert not torch.equal(ids, repeated_random_tokens(model, 20, 4, seed=4))


def test_result_type():
    model = tiny("gpt2")
    scores = wb.head_detectors(model, seq_len=8, n_seqs=2)
    assert set(scores) == set(DETECTORS) and len(scores) == 3 and "previous-token" in scores
    top = scores.top("induction", 3)
    flat = scores["induction"].reshape(-1)
    assert [v for _, v in top] == pytest.approx(sorted(flat, reverse=True)[:3])
    (layer, head), v = top[0]
    assert scores["induction"][layer, head] == pytest.approx(v)
    fig = scores.plot()
    assert len(fig.data) == 3
    df = scores.to_frame()
    assert len(df) == 3 * model.n_layers * model.n_heads
    row = df[(df["detector"] == "induction") & (df["layer"] == layer) & (df["head"] == head)]
    assert row["rank"].item() == 1 and row["score"].item() == pytest.approx(v)
    assert "HeadDetectorScores" in repr(scores) and "induction" in repr(scores)
    got = run_code(scores.to_code())["result"]
    for name in DETECTORS:
        assert_close(got[name], scores[name], what=f"to_code {name}")
    back = pickle.loads(pickle.dumps(scores))
    assert_close(back["induction"], scores["induction"])
    assert back.to_code() == scores.to_code()


def test_progress_and_cancel():
    model = tiny("llama")
    seen = []
    wb.head_detectors(model, seq_len=5, n_seqs=20, progress=lambda f, msg: seen.append((f, msg)))
    assert seen and seen[-1][0] == 1.0 and "20/20" in seen[-1][1]
    stop = threading.Event()
    stop.set()
    with pytest.raises(wb.CancelledError):
        wb.head_detectors(model, seq_len=5, n_seqs=2, cancel=stop)


def test_bad_input():
    model = tiny("llama")
    with pytest.raises(wb.WorkbenchError, match="Unknown head detector 'copying'.*'induction'"):
        wb.head_detectors(model, detectors=["copying"])
    with pytest.raises(wb.WorkbenchError, match="detectors= is empty"):
        wb.head_detectors(model, detectors=[])
    with pytest.raises(wb.WorkbenchError, match="prompts= is empty.*prompts=None"):
        wb.head_detectors(model, prompts=[])
    with pytest.raises(wb.WorkbenchError, match="prompts= takes a list"):
        wb.head_detectors(model, prompts=42)
    with pytest.raises(wb.WorkbenchError, match="seq_len"):
        wb.head_detectors(model, seq_len=10_000)
    scores = wb.head_detectors(model, prompts=["hello world"])
    assert scores.names == ["previous_token"] and scores.undefined == ["duplicate_token", "induction"]
    with pytest.raises(wb.WorkbenchError, match="none of them repeats a token.*prompts=None"):
        scores["induction"]
    with pytest.raises(wb.WorkbenchError, match="Unknown head detector"):
        scores.top("nope")
    only = wb.head_detectors(model, seq_len=4, n_seqs=1, detectors=["induction"])
    with pytest.raises(wb.WorkbenchError, match=r"detectors=\['previous_token'\]"):
        only["previous_token"]
    with pytest.raises(wb.WorkbenchError, match="unknown option"):
        only.plot(colour="red")
