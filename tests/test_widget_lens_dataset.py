"""LensView over a wb.Dataset on a tiny model: the mean map and every example's map as float32 buffers (equal to
wb.logit_lens(model, ds)), the align choice, and an example opened as its single-prompt LensView and back."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb
import workbench.testing
from workbench.widgets import LensView, unpack

from .test_widget_datasets import CORRUPT, ROWS, TEMPLATE


@pytest.fixture(scope="module")
def model():
    return workbench.testing.tiny_model("llama")


@pytest.fixture(scope="module")
def ds():
    return wb.Dataset.from_template(TEMPLATE, corrupt=CORRUPT, rows=ROWS, target="{A}", foil="{B}")


@pytest.fixture(scope="module")
def lv(model, ds):
    v = LensView(model, ds)
    v.wait()
    assert v.status == "done", v.error
    return v


def test_the_dataset_lens_is_sent_as_binary_and_equals_logit_lens(model, ds, lv):
    want = wb.logit_lens(model, ds, align="exact")
    d = lv.ds_lens
    for name in ("values", "per_example", "sem"):
        assert set(d[name]) == {"shape", "dtype", "data"} and isinstance(d[name]["data"], bytes), name
        assert d[name]["dtype"] == "float32", name
    assert d["per_example"]["shape"] == [len(ds), *want.values.shape]
    np.testing.assert_array_equal(unpack(d["values"]), want.values)
    np.testing.assert_array_equal(unpack(d["per_example"]), want.per_example)
    np.testing.assert_allclose(unpack(d["sem"]), want.sem, rtol=1e-6, equal_nan=True)
    assert d["columns"] == want.columns and d["align"] == "exact" and d["metric"] == "target probability"
    assert lv.align == "exact" and lv.example == -1 and lv.over_dataset
    assert lv.dataset["n"] == 4 and [e["clean"] for e in lv.dataset["examples"]] == ds.clean
    assert lv.dataset["aligns"] == {"exact": "", "right": "", "roles": ""}
    assert lv.last_result is lv.dataset_result and lv.data == {} and lv.prompt == ""
    assert lv.history[-1]["label"] == "lens over 4 examples (align exact)"


def test_opening_an_example_is_its_single_prompt_view_and_back(model, ds, lv):
    for i in (2, 0):
        lv.open_example(i).wait()
        assert lv.status == "done" and not lv.over_dataset, lv.error
        one = LensView(model, ds[i].clean, pinned=[ds[i].target])
        assert lv.prompt == ds[i].clean and lv.pinned == [ds[i].target] == one.pinned
        assert lv.data.keys() == one.data.keys()
        for k, v in one.data.items():
            if isinstance(v, dict) and set(v) == {"shape", "dtype", "data"}:
                np.testing.assert_array_equal(unpack(lv.data[k]), unpack(v), err_msg=k)
            elif k == "pinned":
                for tok, arrays in v.items():
                    for name, arr in arrays.items():
                        np.testing.assert_array_equal(unpack(lv.data[k][tok][name]), unpack(arr))
            else:
                assert lv.data[k] == v, k
        # with align="exact", the pinned target's probability through the lens is that example's row of the map
        np.testing.assert_allclose(
            unpack(lv.data["pinned"][ds[i].target]["prob"]),
            unpack(lv.ds_lens["per_example"])[i],
            rtol=1e-4,
            atol=1e-6,
        )
    lv.open_example(-1)
    lv.wait()
    assert lv.over_dataset and lv.last_result is lv.dataset_result
    with pytest.raises(wb.WorkbenchError, match="Example 9 does not exist"):
        lv.open_example(9)
    assert lv.example == -1


def test_align_roles_recomputes_the_mean_map(model, ds, lv):
    lv.align = "roles"
    lv.wait()
    want = wb.logit_lens(model, ds, align="roles")
    assert lv.ds_lens["columns"] == want.columns and lv.ds_lens["align"] == "roles"
    np.testing.assert_array_equal(unpack(lv.ds_lens["per_example"]), want.per_example)
    lv.align = "exact"
    lv.wait()
    assert lv.ds_lens["align"] == "exact"


def test_align_needs_a_dataset(model):
    with pytest.raises(wb.WorkbenchError, match="align= applies to LensView over a wb.Dataset"):
        LensView(model, "Hello world", align="roles")


def test_an_align_that_fails_goes_back_to_the_map_shown(model):
    ds = wb.Dataset(["When Mary and John went", "Mary gave a drink to John and"], target=[" John", " Mary"])
    v = LensView(model, ds)
    v.wait()
    assert v.dataset["aligns"]["exact"] and v.align == "right" and v.status == "done", v.error
    columns = v.ds_lens["columns"]
    v.align = "exact"
    v.wait()
    assert v.status == "error" and "align is back to 'right'" in v.error
    assert v.align == "right" and v.ds_lens["columns"] == columns
    assert v.to_code() == v.dataset_result.to_code() and "per_example.mean(0)" in v.to_code()


def test_an_opened_example_never_shows_its_prompt_beside_a_stale_done(model, ds):
    """The front end applies each comm update as it comes: the example's prompt must come in the same update as the
    "running" status of its run (else the view showed the new prompt, the dataset's "done" and an empty grid, and
    the browser test's wait for "done" read the grid before it was drawn), and the grid with "done" after it."""
    v = LensView(model, ds)
    v.wait()
    assert v.status == "done", v.error
    updates: list[dict] = []
    v._send = lambda msg, buffers=None: updates.append(
        dict(msg.get("state", {}))
    )  # what the comm would carry
    v.example = 1  # as the view's click sets it
    v.wait()
    assert v.status == "done" and v.prompt == ds[1].clean, v.error
    first = next(i for i, u in enumerate(updates) if "prompt" in u)
    assert updates[first]["prompt"] == ds[1].clean
    assert updates[first].get("status") == "running", updates[first]
    assert "pinned" in updates[first] and "focus" in updates[first]
    grid = next(i for i, u in enumerate(updates) if "data" in u)
    done = max(i for i, u in enumerate(updates) if u.get("status") == "done")
    assert first < grid < done and len(updates[grid]["data"]["tokens"]) == len(
        model.to_str_tokens(ds[1].clean)
    )
    assert not any(u.get("status") == "done" for u in updates[first:grid]), updates
    # back, and the same example again: its kept grid is shown at once (no run: nothing says "running")
    v.example = -1
    v.wait()
    updates.clear()
    v.example = 1
    v.wait()
    assert (
        v.status == "done"
        and v.prompt == ds[1].clean
        and len(v.data["tokens"]) == len(model.to_str_tokens(ds[1].clean))
    )
    assert not any(u.get("status") == "running" for u in updates), updates
