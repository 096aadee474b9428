"""How failed NDIF requests read to a user (no server needed): the hint names the fix, the key never shows."""

from __future__ import annotations

import nnsight
import pytest

import workbench as wb
from workbench.remote import explain, redact

KEY = "secret-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", KEY)


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        (  # ndif 0.1.2's words when it cannot unpickle the request
            "Your request payload could not be read (ModuleNotFoundError: No module named 'mylab'). It may be "
            "truncated or corrupted in transit, or compressed differently than the request declared.",
            "nnsight.register(module)",
        ),
        ("ConnectionRefusedError: [Errno 111] Connection refused", "could not be reached"),
        (  # FastAPI's words when the server cannot take the request body (a local ndif 0.1.2 over 1 MiB)
            "RemoteError: Failed to send request: There was an error parsing the body",
            "could not read the request body",
        ),
        ("HTTPError: 401 Client Error: Unauthorized", "rejected the API key"),
        ("Client nnsight version 0.7.0 is incompatible with this server", "nnsight version"),
        (f"TypeError: unsupported operand (key {KEY})", "remote trace failed on the server"),
    ],
)
def test_explain_names_the_fix_and_hides_the_key(message: str, hint: str) -> None:
    err = explain(RuntimeError(message))
    assert isinstance(err, wb.WorkbenchError)
    assert hint in str(err)
    assert KEY not in str(err)


def test_redact_replaces_the_configured_key() -> None:
    assert redact(f"header ndif-api-key: {KEY}") == "header ndif-api-key: <api key>"


ECHOES = [
    KEY.upper(),  # a server that upper-cases headers
    KEY.title(),
    KEY[:12] + "...",  # a prefix echo: "key secret-key-0... rejected"
    "..." + KEY[-10:],
    f"https://ndif.example/v1?api_key={KEY}&x=1",
    f"Bearer {KEY[:-1]}",  # truncated by one character
]


@pytest.mark.parametrize("echo", ECHOES)
def test_redact_hides_recased_and_partial_echoes(echo: str) -> None:
    text = redact(f"401 Unauthorized: key {echo} is not valid")
    low = text.lower()
    assert KEY.lower()[:6] not in low and KEY.lower()[-6:] not in low, text
    assert "<api key>" in text and text.startswith("401 Unauthorized: key ") and text.endswith("is not valid")


def test_redact_leaves_other_text_alone() -> None:
    text = "ConnectionRefusedError: [Errno 111] Connection refused to https://api.ndif.us"
    assert redact(text) == text


class _Remote:
    remote = True


def _raise_through_job_status(message: str) -> wb.WorkbenchError:
    from workbench.remote import job_status

    try:
        with job_status(_Remote(), None, None):
            raise RuntimeError(message + f"{KEY} {KEY.upper()}")
    except wb.WorkbenchError as err:
        return err
    raise AssertionError("job_status did not turn the failure into a WorkbenchError")


@pytest.mark.parametrize("message", ["HTTPError: 401 Unauthorized for key ", "TypeError: bad operand "])
def test_remote_error_chains_nothing_that_carries_the_key(message: str) -> None:
    import traceback

    err = _raise_through_job_status(message)
    assert KEY.lower()[:6] not in str(err).lower()
    assert err.__cause__ is None and err.__context__ is None and err.__suppress_context__
    printed = "".join(traceback.format_exception(err)).lower()
    assert KEY.lower()[:6] not in printed, printed
    # nothing reachable from the traceback's frames holds the key either
    tb = err.__traceback__
    while tb is not None:
        for name, value in tb.tb_frame.f_locals.items():
            if isinstance(value, str | BaseException):
                assert KEY.lower()[:6] not in str(value).lower(), (tb.tb_frame.f_code.co_name, name)
            if isinstance(value, BaseException) and value is not err:  # a raw error kept no frames
                assert value.__traceback__ is None, (tb.tb_frame.f_code.co_name, name)
        tb = tb.tb_next
    hidden = BaseException.__dict__["__context__"].__get__(err)  # the interpreter's own link, if any
    assert hidden is None or KEY.lower()[:6] not in repr(hidden).lower()
