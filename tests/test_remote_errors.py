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
