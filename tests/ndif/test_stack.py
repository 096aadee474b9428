"""Plain nnsight 0.8.1 client code against a real local NDIF server (ndif 0.1.2).

No workbench code here: these pin down what the remote path of nnsight does on this
stack, so the engine can rely on it. The server has the embedded SmolLM2-135M model
(float32) deployed from a local folder; the local reference loads the same folder.
"""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = pytest.mark.ndif

PROMPT = "The Eiffel Tower is located in the city of"
OTHER = "The capital of Japan is the city of"
TOL = 1e-5
LAYER = 5
ABLATE = 10


def _hidden(x):
    return x[0] if isinstance(x, tuple) else x


def _maxdiff(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="session")
def model(ndif_server):
    """An nnsight LanguageModel on the server's model folder, set up for this server."""
    import nnsight
    import nnsight.modeling.huggingface as nnhf
    from nnsight import LanguageModel
    from transformers import AutoTokenizer

    path = str(ndif_server.model_dir)
    # The repo id is the local folder (no hub): pre-seed nnsight's repo-id cache so
    # building the model key does not ask the hub; pass the tokenizer explicitly.
    nnhf._ID_CACHE[path] = path
    nnsight.CONFIG.API.HOST = ndif_server.url
    nnsight.CONFIG.API.APIKEY = "workbench-local-test"  # any value: this server has no auth
    nnsight.CONFIG.APP.REMOTE_LOGGING = False
    tok = AutoTokenizer.from_pretrained(path)
    return LanguageModel(path, tokenizer=tok, dtype=torch.float32)


@pytest.fixture(scope="session")
def local_clean(model):
    with model.trace(PROMPT):
        hidden = model.model.layers[LAYER].output.save()  # modules in execution order (nnsight 0.8)
        logits = model.lm_head.output.save()
    return logits, _hidden(hidden)


def test_model_key_names_the_deployed_folder(model, ndif_server):
    key = model.to_model_key()
    assert key.startswith("nnsight.modeling.transformers.TransformersModel:")
    assert str(ndif_server.model_dir) in key


def test_remote_trace_equals_local(model, ndif_server, local_clean):
    t0 = time.time()
    with model.trace(PROMPT, remote=True):  # host from nnsight.CONFIG.API.HOST
        hidden = model.model.layers[LAYER].output.save()
        logits = model.lm_head.output.save()
    elapsed = time.time() - t0
    local_logits, local_hidden = local_clean
    assert logits.shape == local_logits.shape
    assert _maxdiff(logits, local_logits) <= TOL
    assert _maxdiff(_hidden(hidden), local_hidden) <= TOL
    assert model.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
    print(f"remote trace: {elapsed:.2f} s")


def test_remote_url_per_call(model, ndif_server, local_clean):
    with model.trace(PROMPT, remote=ndif_server.url):  # host given per call
        top = model.lm_head.output[0, -1].topk(5).indices.save()
    assert torch.equal(top, local_clean[0][0, -1].topk(5).indices)


def test_intervention_zero_mlp_matches_local(model, local_clean):
    def run(**kw):
        with model.trace(PROMPT, **kw):
            mlp = model.model.layers[ABLATE].mlp
            mlp.output = torch.zeros_like(mlp.output)
            logits = model.lm_head.output.save()
        return logits

    remote, local = run(remote=True), run()
    assert _maxdiff(remote, local) <= TOL
    assert _maxdiff(remote, local_clean[0]) > 1e-3  # the ablation did something


def test_multi_invoke_and_session(model):
    # Several prompts in one trace (one request, one forward pass, batched).
    with model.trace(remote=True) as tracer:
        with tracer.invoke(PROMPT):
            a = model.lm_head.output[:, -1].save()
        with tracer.invoke(OTHER):
            b = model.lm_head.output[:, -1].save()
    # A session: several traces shipped and run as one request.
    with model.session(remote=True):
        with model.trace(PROMPT):
            c = model.lm_head.output[:, -1].save()
        with model.trace(OTHER):
            d = model.lm_head.output[:, -1].save()
    with model.trace(PROMPT):
        a_ref = model.lm_head.output[:, -1].save()
    with model.trace(OTHER):
        b_ref = model.lm_head.output[:, -1].save()
    assert _maxdiff(c, a_ref) <= TOL and _maxdiff(d, b_ref) <= TOL
    # The batched run pads the shorter prompt (left padding for this tokenizer);
    # last-position logits agree with the unbatched ones to float tolerance.
    assert _maxdiff(a, a_ref) <= 1e-3 and _maxdiff(b, b_ref) <= 1e-3
    assert a.argmax() == a_ref.argmax() and b.argmax() == b_ref.argmax()


def test_request_body_over_one_mib(model):
    """A trace carrying 8 MB of tensor data is accepted (the API parses bodies past starlette's 1 MiB spool:
    tools/ndif/ndif_api.py imports anyio's asyncio backend before nnsight mounts `.save` on every object)."""
    x = torch.arange(2_000_000, dtype=torch.float32) / 2_000_000
    with model.trace(PROMPT, remote=True):
        got = (model.lm_head.output[0, -1, :3] * 0 + x.sum()).save()
    assert torch.allclose(got, x.sum().expand(3))


def test_bad_trace_body_raises_remote_error(model):
    from nnsight.intervention.backends.remote import RemoteError

    with pytest.raises(RemoteError) as info, model.trace(PROMPT, remote=True):
        h = _hidden(model.model.layers[0].output)
        (h @ torch.ones(3, 3)).save()  # shape mismatch: fails on the server
    assert "mat" in str(info.value) or "shape" in str(info.value), str(info.value)
    # The server is still usable afterwards.
    with model.trace(PROMPT, remote=True):
        ok = model.lm_head.output[0, -1].argmax().save()
    assert model.tokenizer.decode(ok) == " Paris"


def test_non_blocking_submit_and_poll(model, local_clean):
    with model.trace(PROMPT, remote=True, blocking=False) as tracer:
        # Saves travel by variable name; with blocking=False they are not pushed into
        # this frame: read them from the dict the poll returns.
        logits = model.lm_head.output.save()  # noqa: F841
    backend = tracer.backend
    assert backend.job_id, "submit should leave a job id"
    result = None
    deadline = time.time() + 120
    while result is None and time.time() < deadline:
        time.sleep(0.3)
        result = backend()  # polls GET /response/{job_id}; None until COMPLETED
    assert result is not None, f"job {backend.job_id} not done: last status {backend.status}"
    assert set(result) == {"logits"}
    assert _maxdiff(result["logits"], local_clean[0]) <= TOL


def test_generate(model):
    with model.generate(PROMPT, max_new_tokens=3, do_sample=False, remote=True) as tracer:
        ids = tracer.result.save()
    with model.generate(PROMPT, max_new_tokens=3, do_sample=False) as tracer:
        ref = tracer.result.save()
    assert torch.equal(torch.as_tensor(ids), torch.as_tensor(ref))
    assert model.tokenizer.decode(ids[0, -3:]).startswith(" Paris")


LIBRARY_OPS = """
def last(x):
    return x[:, -1]


def top_token(model, prompt, **kw):
    with model.trace(prompt, **kw):
        top = last(model.lm_head.output).argmax(-1).save()
    return top
"""


def test_trace_in_library_module_needs_register(model, tmp_path):
    """A trace living in a library function (the engine's pattern) whose module the
    server does not have: nnsight pickles its functions by reference, so the server
    fails to import it until the module is registered for pickling by value."""
    import importlib.util
    import sys

    import nnsight
    from nnsight.intervention.backends.remote import RemoteError

    name = f"wb_fake_ops_{id(tmp_path)}"
    path = tmp_path / f"{name}.py"
    path.write_text(LIBRARY_OPS)
    spec = importlib.util.spec_from_file_location(name, path)
    ops = importlib.util.module_from_spec(spec)
    sys.modules[name] = ops  # importable here, like an installed package; not on the server
    spec.loader.exec_module(ops)

    with pytest.raises(RemoteError, match="ModuleNotFoundError"):
        ops.top_token(model, PROMPT, remote=True)
    nnsight.register(ops)  # ship the module's source with each request
    top = ops.top_token(model, PROMPT, remote=True)
    assert model.tokenizer.decode(top[0]) == " Paris"
    assert torch.equal(top, ops.top_token(model, PROMPT))


def test_remote_only_model_never_loads_weights(ndif_server, local_clean):
    """What `remote=True` loading wants: a meta model (config + tokenizer only) runs
    remote traces without ever loading weights on the client."""
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoTokenizer

    path = str(ndif_server.model_dir)
    meta = TransformersModel(path, task="text-generation", tokenizer=AutoTokenizer.from_pretrained(path))
    assert not meta.dispatched
    with meta.trace(PROMPT, remote=True):
        logits = meta.lm_head.output.save()
    assert not meta.dispatched
    assert _maxdiff(logits, local_clean[0]) <= TOL


def test_large_result_goes_through_object_store(model):
    """A blocking result over Redis's pubsub cap (8 MiB soft limit here) is uploaded to
    the S3 store (moto) and downloaded by the client: ~13 MB of logits."""
    prompt = " ".join(["The Eiffel Tower is located in the city of Paris."] * 6)
    n = len(model.tokenizer(prompt)["input_ids"])
    assert n * model.config.vocab_size * 4 > 10 * 2**20
    with model.trace(prompt, remote=True):
        remote = model.lm_head.output.save()
    with model.trace(prompt):
        local = model.lm_head.output.save()
    assert _maxdiff(remote, local) <= TOL
