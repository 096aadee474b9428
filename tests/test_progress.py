"""Progress bars for calls from Python (`workbench/progress.py`)."""

from __future__ import annotations

import io

import pytest

import workbench as wb
from tests.conftest import CLEAN, CORRUPT, FOIL, TARGET
from workbench import progress as P
from workbench.testing import tiny_model


def test_a_call_without_progress_gets_a_bar_that_reaches_the_end(monkeypatch):
    """The op's own progress reports drive the bar; it ends at 100% and is closed."""
    import tqdm.auto

    seen = []

    class Recorder(tqdm.auto.tqdm):
        def __init__(self, *a, **kw):
            kw.update(delay=0, file=io.StringIO())
            super().__init__(*a, **kw)
            seen.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    model = tiny_model("llama", seed=1)
    wb.patch_sweep(
        model, CLEAN, CORRUPT, metric=wb.logit_diff(TARGET, FOIL), site="resid_pre", by_position=False
    )
    (t,) = seen
    assert t.desc.startswith("patch_sweep (") and "runs" in t.desc and t.n == 100
    assert t.disable or t.last_print_n == 100  # drawn at the end
    assert t.fp.getvalue(), "nothing was drawn"


def test_own_progress_and_switch_off(monkeypatch):
    calls = []
    model = tiny_model("llama", seed=2)
    kw = dict(metric=wb.logit_diff(TARGET, FOIL), site="resid_pre")
    wb.patch_sweep(model, CLEAN, CORRUPT, progress=lambda f, m: calls.append(f), **kw)
    assert calls and calls[-1] == pytest.approx(1.0)

    def no_bar(_name):
        raise AssertionError("a bar was made")

    monkeypatch.setattr(P, "bar", no_bar)
    monkeypatch.setenv("WORKBENCH_PROGRESS", "0")
    wb.patch_sweep(model, CLEAN, CORRUPT, **kw)


def test_progress_false_means_no_bar_and_a_bad_value_is_named(monkeypatch):
    model = tiny_model("llama", seed=2)
    kw = dict(metric=wb.logit_diff(TARGET, FOIL), site="resid_pre")

    def no_bar(_name):
        raise AssertionError("a bar was made")

    monkeypatch.setattr(P, "bar", no_bar)
    want = wb.patch_sweep(model, CLEAN, CORRUPT, progress=lambda f, m: None, **kw)
    got = wb.patch_sweep(model, CLEAN, CORRUPT, progress=False, **kw)  # no bar, no callback
    assert (got.values == want.values).all()
    ds = wb.Dataset(clean=[CLEAN], corrupt=[CORRUPT], target=TARGET, foil=FOIL)
    assert wb.patch_sweep(model, ds, metric=wb.logit_diff(), site="resid_pre", progress=False).values.shape
    with pytest.raises(wb.WorkbenchError, match="progress= takes a callable"):
        wb.patch_sweep(model, CLEAN, CORRUPT, progress="yes", **kw)
