"""Remote models on NDIF (`wb.load(repo_id, remote=True)`)."""

from __future__ import annotations

from .errors import ModelLoadError
from .model import Model


def load_remote(repo_id: str) -> Model:
    """Not wired yet: remote execution is tracked as its own issue; say so plainly instead of failing oddly."""
    raise ModelLoadError(
        f"remote=True is not available in this version of Workbench (asked for {repo_id!r}); "
        "load the model locally (wb.load(...)) for now."
    )
