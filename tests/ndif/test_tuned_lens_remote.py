"""The tuned lens on a real local NDIF server: `wb.logit_lens(remote, ..., lens=tl)` equals the local read-out
of the same weights, in two requests whose bodies never carry the translators (L-1 matrices of D x D: 38 MB
here, GBs for an 8B model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from tests.conftest import run_code
from workbench.engine.fast import disabled as fast_paths_disabled
from workbench.errors import WorkbenchError
from workbench.ops.tuned_lens import TunedLens, fingerprint

from .test_workbench_remote import models, requests  # noqa: F401  (fixtures)

pytestmark = pytest.mark.ndif

PROMPT = "The Eiffel Tower is located in the city of"
OTHER = "The Colosseum is located in the city of"
TOL = 1e-4


@pytest.fixture(scope="module")
def lens(models) -> TunedLens:  # noqa: F811
    """Non-trivial translators (the read-out must differ from the logit lens), fitted to the local copy."""
    _, local = models
    g = torch.Generator().manual_seed(0)
    n, d = local.n_layers, local.d_model
    weight = torch.randn(n - 1, d, d, generator=g) * 0.1 / d**0.5
    bias = torch.randn(n - 1, d, generator=g) * 0.1
    return TunedLens(weight, bias, fingerprint(local))


@pytest.fixture
def bodies(monkeypatch):
    """The size in bytes of every request body sent to NDIF."""
    from nnsight.intervention.backends.remote import RemoteBackend

    sizes: list[int] = []
    real = RemoteBackend._serialize

    def measured(self, tracer):
        blob = real(self, tracer)
        sizes.append(len(blob))
        return blob

    monkeypatch.setattr(RemoteBackend, "_serialize", measured)
    return sizes


def _same(r, lo, what: str) -> None:
    assert np.array_equal(r.top_ids, lo.top_ids), what
    for name in ("top_probs", "entropy", "kl"):
        diff = float(np.abs(getattr(r, name) - getattr(lo, name)).max())
        assert diff <= TOL, (what, name, diff)


def test_prompt_matches_local_in_two_requests(models, requests, bodies, lens) -> None:  # noqa: F811
    remote, local = models
    r = wb.logit_lens(remote, PROMPT, lens=lens, tokens=[" Paris"])
    assert len(requests) == 2  # the states, then their translated read-out
    translators = lens.weight.numel() * 4  # bytes of float32 translator weights
    assert len(bodies) == 2 and max(bodies) < translators / 10, (bodies, translators)
    assert r.options["lens"]["kind"] == "tuned"
    with fast_paths_disabled():  # the traced local path (the same trace body)
        lo = wb.logit_lens(local, PROMPT, lens=lens, tokens=[" Paris"])
        rome = lo.prob(" Rome"), lo.rank(" Rome")  # computed on request: here, on the same path
    _same(r, lo, "traced")
    assert np.abs(r.prob(" Paris") - lo.prob(" Paris")).max() <= TOL
    assert np.array_equal(r.rank(" Paris"), lo.rank(" Paris"))
    fast = wb.logit_lens(local, PROMPT, lens=lens, tokens=[" Paris"])  # the local default
    assert np.array_equal(r.top_ids, fast.top_ids)
    assert np.abs(r.top_probs - fast.top_probs).max() <= TOL
    # the translators did something below the last layer, and nothing at it
    plain = wb.logit_lens(local, PROMPT)
    assert np.abs(r.kl[:-1] - plain.kl[:-1]).max() > 1e-2
    assert np.abs(r.top_probs[-1] - plain.top_probs[-1]).max() <= TOL
    # a token followed later: the translated states are kept, so only the read-out runs again
    before = len(requests)
    assert np.abs(r.prob(" Rome") - rome[0]).max() <= TOL
    assert np.array_equal(r.rank(" Rome"), rome[1])
    assert len(requests) == before + 1


def test_identity_lens_is_the_remote_logit_lens(models, requests) -> None:  # noqa: F811
    remote, local = models
    ident = TunedLens.identity(local)
    t = wb.logit_lens(remote, PROMPT, lens=ident)
    p = wb.logit_lens(remote, PROMPT)
    assert len(requests) == 3  # two for the tuned read-out, one for the logit lens
    assert np.array_equal(t.top_ids, p.top_ids)
    assert np.abs(t.top_probs - p.top_probs).max() <= 1e-5
    assert np.abs(t.kl - p.kl).max() <= TOL


def test_edited_run_through_the_tuned_lens(models, requests, lens) -> None:  # noqa: F811
    remote, local = models
    edit = wb.Edit(wb.Cell("resid_pre", 4, position=2), "zero")
    r = wb.logit_lens(remote, PROMPT, edits=[edit], lens=lens)
    assert len(requests) == 2
    with fast_paths_disabled():
        lo = wb.logit_lens(local, PROMPT, edits=[edit], lens=lens)
    _same(r, lo, "edits")
    unedited = wb.logit_lens(local, PROMPT, lens=lens)
    assert np.abs(r.top_probs[5:] - unedited.top_probs[5:]).max() > 1e-3  # the edit changed later layers


def test_dataset_matches_local_in_two_requests(models, requests, bodies, lens) -> None:  # noqa: F811
    remote, local = models
    ds = wb.Dataset(clean=[PROMPT, OTHER, "The Louvre is located in the city of"], target=" Paris")
    r = wb.logit_lens(remote, ds, lens=lens, align="right")
    assert len(requests) == 2  # every example's states in one request, their read-out in the other
    assert max(bodies) < lens.weight.numel() * 4 / 10
    lo = wb.logit_lens(local, ds, lens=lens, align="right")
    assert r.values.shape == lo.values.shape and r.values.shape[0] == remote.n_layers
    assert np.abs(r.per_example - lo.per_example).max() <= TOL
    assert np.abs(r.values - lo.values).max() <= TOL
    plain = wb.logit_lens(local, ds, align="right")
    assert np.abs(r.values - plain.values).max() > 1e-3
    one = r.lens(0)  # an example opened: the prompt path, two requests more
    assert np.abs(one.prob(" Paris") - lo.lens(0).prob(" Paris")).max() <= TOL


def test_to_code_runs_on_ndif_in_two_requests(models, requests, lens) -> None:  # noqa: F811
    remote, _ = models
    r = wb.logit_lens(remote, PROMPT, lens=lens)
    code = r.to_code()
    assert "model.session(remote=True)" in code and "remote=True" in code.split("model.session")[0]
    before = len(requests)
    ids, probs = run_code(code)["result"]
    assert len(requests) == before + 2
    assert np.array_equal(np.asarray(ids), r.top_ids)
    assert np.abs(np.asarray(probs) - r.top_probs).max() <= TOL
    ds = wb.Dataset(clean=[PROMPT, OTHER], target=" Paris")
    d = wb.logit_lens(remote, ds, lens=lens, align="right")
    before = len(requests)
    got = run_code(d.to_code())["result"]
    assert len(requests) == before + 2 * len(ds)  # the generated code reads one example at a time
    assert np.abs(np.asarray(got) - d.values).max() <= TOL


def test_bad_lens_for_a_remote_model(models, requests) -> None:  # noqa: F811
    remote, local = models
    fp = dict(fingerprint(local), n_layers=local.n_layers + 1)
    other = TunedLens(torch.zeros(local.n_layers, local.d_model, local.d_model),
                      torch.zeros(local.n_layers, local.d_model), fp)  # fmt: skip
    with pytest.raises(WorkbenchError, match="trained for"):
        wb.logit_lens(remote, PROMPT, lens=other)
    with pytest.raises(WorkbenchError, match="local copy of the same weights"):
        wb.tuned_lens(remote, steps=1)
    assert requests == []
