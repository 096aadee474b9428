"""Workbench ops with remote=True against a real local NDIF server: equal to the local run of the same weights.

Each user action must be one request; the API key must never appear in results, code or errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.engine.fast import disabled as fast_paths_disabled

pytestmark = pytest.mark.ndif

CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum is located in the city of"
KEY = "wb-test-key-0123456789abcdef"  # this local server has no auth; any value is sent
TOL = 1e-5


@pytest.fixture(scope="module")
def models(ndif_server):
    import nnsight

    nnsight.CONFIG.API.HOST = ndif_server.url
    nnsight.CONFIG.API.APIKEY = KEY
    nnsight.CONFIG.APP.REMOTE_LOGGING = False
    path = str(ndif_server.model_dir)
    remote = wb.load(path, remote=True)
    local = wb.load(path)
    return remote, local


@pytest.fixture
def requests(monkeypatch):
    """Counts the requests sent to NDIF."""
    from nnsight.intervention.backends.remote import RemoteBackend

    sent: list[int] = []
    real = RemoteBackend.request

    def counting(self, *args, **kwargs):
        sent.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RemoteBackend, "request", counting)
    return sent


def test_remote_model_has_no_local_weights(models) -> None:
    remote, local = models
    assert remote.remote and not local.remote
    assert next(remote.hf.parameters()).device.type == "meta"
    assert (remote.n_layers, remote.n_heads, remote.d_model) == (local.n_layers, local.n_heads, local.d_model)


def test_lens_matches_local_in_one_request(models, requests) -> None:
    remote, local = models
    r = wb.logit_lens(remote, CLEAN, tokens=[" Paris"])
    assert len(requests) == 1
    # the same computation locally (the traced lens; local models default to the trace-free fast lens)
    with fast_paths_disabled():
        lo = wb.logit_lens(local, CLEAN, tokens=[" Paris"])
    assert np.array_equal(r.top_ids, lo.top_ids)
    assert np.abs(r.top_probs - lo.top_probs).max() <= TOL
    assert np.abs(r.entropy - lo.entropy).max() <= 1e-4
    assert np.abs(r.prob(" Paris") - lo.prob(" Paris")).max() <= TOL
    assert r.top_tokens[-1][-1][0] == " Paris"
    # and the local default (other kernels, another summation order) within the suite's float32 ATOL
    fast = wb.logit_lens(local, CLEAN, tokens=[" Paris"])
    assert np.array_equal(r.top_ids, fast.top_ids)
    assert np.abs(r.top_probs - fast.top_probs).max() <= 1e-4
    assert np.abs(r.prob(" Paris") - fast.prob(" Paris")).max() <= 1e-4


def test_patch_and_sweep_match_local_one_request_each(models, requests) -> None:
    remote, local = models
    metric = wb.logit_diff(" Paris", " Rome")
    v = wb.patch(remote, CLEAN, CORRUPT, metric=metric, site="resid_pre", layer=4, position=2)
    assert len(requests) == 1
    lv = wb.patch(local, CLEAN, CORRUPT, metric=metric, site="resid_pre", layer=4, position=2)
    assert abs(float(v) - float(lv)) <= 1e-4 and abs(v.clean - lv.clean) <= 1e-4
    sweep = wb.patch_sweep(remote, CLEAN, CORRUPT, metric=metric, site="mlp_out")
    assert len(requests) == 2  # the whole 30 x 10 sweep is one request
    local_sweep = wb.patch_sweep(local, CLEAN, CORRUPT, metric=metric, site="mlp_out")
    assert sweep.values.shape == (30, 10)
    assert np.abs(sweep.values - local_sweep.values).max() <= 1e-4


def test_head_sweep_attention_attribution_ablation_match_local(models) -> None:
    remote, local = models
    metric = wb.logit_diff(" Paris", " Rome")
    a = wb.patch_sweep(remote, CLEAN, CORRUPT, metric=metric, site="head")
    b = wb.patch_sweep(local, CLEAN, CORRUPT, metric=metric, site="head")
    assert np.abs(a.values - b.values).max() <= 1e-4
    pa = wb.attention(remote, CLEAN, layers=[0, 15, 29]).patterns
    pb = wb.attention(local, CLEAN, layers=[0, 15, 29]).patterns
    assert np.abs(pa - pb).max() <= TOL
    ra = wb.attribution_patch(remote, CLEAN, CORRUPT, metric=metric, site="resid_pre").values
    rb = wb.attribution_patch(local, CLEAN, CORRUPT, metric=metric, site="resid_pre").values
    assert np.abs(ra - rb).max() <= 1e-4
    for method in ("zero", "mean"):
        x = wb.ablate(remote, CLEAN, metric=metric, site="mlp_out", layer=3, method=method)
        y = wb.ablate(local, CLEAN, metric=metric, site="mlp_out", layer=3, method=method)
        assert abs(float(x) - float(y)) <= 1e-4


def test_steering_generates_the_same_tokens(models) -> None:
    remote, local = models
    vec = torch.randn(remote.d_model, generator=torch.Generator().manual_seed(0))
    a = wb.steer(remote, CLEAN, vector=vec, layer=5, scale=4.0, max_new_tokens=4, baseline=False)
    b = wb.steer(local, CLEAN, vector=vec, layer=5, scale=4.0, max_new_tokens=4, baseline=False)
    assert a.tokens == b.tokens


def test_key_never_in_results_or_code(models) -> None:
    remote, _ = models
    v = wb.patch(
        remote, CLEAN, CORRUPT, metric=wb.logit_diff(" Paris", " Rome"), site="resid_pre", layer=1, position=2
    )
    assert KEY not in v.to_code() and KEY not in repr(v.options)


def test_bad_input_fails_before_any_request_and_model_survives(models, requests) -> None:
    remote, _ = models
    with pytest.raises(wb.SiteError):
        wb.patch(remote, CLEAN, CORRUPT, metric=wb.logit_diff(" Paris", " Rome"), site="resid_pre", layer=99)
    with pytest.raises(wb.TokenizationError):
        wb.patch_sweep(remote, CLEAN, "Short", metric=wb.logit_diff(" Paris", " Rome"))
    assert requests == []
    assert wb.logit_lens(remote, CLEAN).top_tokens[-1][-1][0] == " Paris"


def test_progress_reports_remote_status_and_cancel_abandons_the_job(models) -> None:
    import threading

    remote, _ = models
    seen: list[str] = []
    lens = wb.logit_lens(remote, CLEAN, progress=lambda f, msg: seen.append(msg))
    assert lens.top_tokens[-1][-1][0] == " Paris"
    assert any(m.startswith("remote ") for m in seen), seen
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(wb.CancelledError):
        wb.patch_sweep(
            remote, CLEAN, CORRUPT, metric=wb.logit_diff(" Paris", " Rome"), site="mlp_out", cancel=cancel
        )
    assert wb.logit_lens(remote, CLEAN).top_tokens[-1][-1][0] == " Paris"  # still usable


def test_exception_inside_the_remote_trace_is_a_readable_error(models) -> None:
    remote, _ = models

    # A lambda is shipped by its source, so it reaches the server and fails there.
    broken = lambda logits: logits[:, 0] / "not a number"  # noqa: E731

    with pytest.raises(wb.WorkbenchError) as err:
        wb.patch(remote, CLEAN, CORRUPT, metric=broken, site="resid_pre", layer=1, position=2)
    assert "remote trace failed on the server" in str(err.value)
    assert "TypeError" in str(err.value)
    assert KEY not in str(err.value)
    assert wb.logit_lens(remote, CLEAN).top_tokens[-1][-1][0] == " Paris"


def test_unreachable_server_is_a_readable_error(models, ndif_server) -> None:
    import nnsight

    remote, _ = models
    nnsight.CONFIG.API.HOST = "http://127.0.0.1:9"  # nothing listens there
    try:
        with pytest.raises(wb.WorkbenchError) as err:
            wb.logit_lens(remote, CLEAN)
        assert "could not be reached" in str(err.value) and KEY not in str(err.value)
    finally:
        nnsight.CONFIG.API.HOST = ndif_server.url
    assert wb.logit_lens(remote, CLEAN).top_tokens[-1][-1][0] == " Paris"


def test_patch_view_on_a_remote_model_shows_status_results_and_errors(models, ndif_server) -> None:
    import json

    import nnsight

    from workbench.widgets import unpack

    remote, local = models
    texts: list[str] = []
    view = wb.PatchView(remote, CLEAN, CORRUPT, target=" Paris", foil=" Rome")
    view.observe(lambda change: texts.append(change["new"]), names="progress_text")
    view.site = "mlp_out"
    view.run_sweep().wait()
    assert view.status == "done" and view.error == "", view.error
    expected = wb.patch_sweep(local, CLEAN, CORRUPT, metric=wb.logit_diff(" Paris", " Rome"), site="mlp_out")
    assert np.abs(unpack(view.sweep["values"]) - expected.values).max() <= 1e-4
    assert any(t.startswith("remote ") for t in texts), texts
    assert KEY not in json.dumps(view.get_state(), default=str)
    nnsight.CONFIG.API.HOST = "http://127.0.0.1:9"
    try:
        view.click(3, 2).wait()
        assert view.status == "error" and "could not be reached" in view.error and KEY not in view.error
    finally:
        nnsight.CONFIG.API.HOST = ndif_server.url
    view.click(3, 2).wait()
    assert view.status == "done" and view.error == "", view.error


def test_interventions_as_data_match_local_one_request_each(models, requests) -> None:
    """Issue 12 remotely: a joint patch, wb.intervene with every value kind, sweeps of the new sites and a
    pattern patch give the local numbers; each user action is one request."""
    remote, local = models
    metric = wb.logit_diff(" Paris", " Rome")
    cells = [wb.Cell("head", 9, head=3), wb.Cell("mlp_out", 20, position=5), wb.Cell("q", 12, head=0)]
    a = wb.patch(remote, CLEAN, CORRUPT, metric=metric, cells=cells)
    assert len(requests) == 1
    b = wb.patch(local, CLEAN, CORRUPT, metric=metric, cells=cells)
    assert abs(float(a) - float(b)) <= 1e-4
    vec = torch.randn(remote.d_model, generator=torch.Generator().manual_seed(1))
    edits = [
        wb.Edit(wb.Cell("resid_pre", 6), wb.Add(vec, scale=2.0)),
        wb.Edit(wb.Cell("v", 8, head=2), "zero"),
        wb.Edit(wb.Cell("resid_mid", 10, position=3), "source"),
    ]
    x = wb.intervene(remote, CORRUPT, edits=edits, metric=metric, source=CLEAN)
    assert len(requests) == 2
    y = wb.intervene(local, CORRUPT, edits=edits, metric=metric, source=CLEAN)
    assert abs(float(x) - float(y)) <= 1e-4 and list(x.top_ids) == list(y.top_ids)
    for site in ("k", "embed", "resid_mid"):
        r = wb.patch_sweep(remote, CLEAN, CORRUPT, metric=metric, site=site)
        lo = wb.patch_sweep(local, CLEAN, CORRUPT, metric=metric, site=site)
        assert r.values.shape == lo.values.shape and np.abs(r.values - lo.values).max() <= 1e-4
    assert len(requests) == 5
    p = wb.patch(remote, CLEAN, CORRUPT, metric=metric, site="pattern", layer=15, head=4)
    q = wb.patch(local, CLEAN, CORRUPT, metric=metric, site="pattern", layer=15, head=4)
    assert abs(float(p) - float(q)) <= 1e-4
    # the lens of a joint run (edits, a pattern among them, travel with the request)
    lens_edits = [wb.Edit(wb.Cell("head", 9, head=3)), wb.Edit(wb.Cell("pattern", 15, head=4))]
    la = wb.logit_lens(remote, CORRUPT, edits=lens_edits, source=CLEAN)
    with fast_paths_disabled():
        lb = wb.logit_lens(local, CORRUPT, edits=lens_edits, source=CLEAN)
    assert np.array_equal(la.top_ids, lb.top_ids) and np.abs(la.top_probs - lb.top_probs).max() <= 1e-4


def test_path_patching_matches_local(models) -> None:
    remote, local = models
    metric = wb.logit_diff(" Paris", " Rome")
    receivers = [wb.Cell("q", 20, head=3)]
    a = wb.path_patch_sweep(remote, CLEAN, CORRUPT, metric=metric, receivers=receivers)
    b = wb.path_patch_sweep(local, CLEAN, CORRUPT, metric=metric, receivers=receivers)
    assert a.values.shape == (30, 9)
    assert np.array_equal(np.isnan(a.values), np.isnan(b.values))
    assert np.nanmax(np.abs(a.values - b.values)) <= 1e-4
    senders = [wb.Cell("head", 3, head=1), wb.Cell("head", 7, head=5)]
    x = wb.path_patch(remote, CLEAN, CORRUPT, metric=metric, senders=senders, receivers="logits")
    y = wb.path_patch(local, CLEAN, CORRUPT, metric=metric, senders=senders, receivers="logits")
    assert abs(float(x) - float(y)) <= 1e-4
