"""One exception family for everything a user can get wrong; each message names the fix."""

from __future__ import annotations


class WorkbenchError(ValueError):
    """Bad input or an unsupported request. The model and earlier results are untouched."""


class TokenizationError(WorkbenchError):
    """A prompt or metric token does not tokenize the way the operation needs."""


class SiteError(WorkbenchError):
    """A site, layer, head or position that the model does not have."""


class UnsupportedModelError(WorkbenchError):
    """A model family with no entry in the architecture table."""


class ModelLoadError(WorkbenchError):
    """A model could not be found or loaded (missing package, offline hub, bad path)."""


class CancelledError(WorkbenchError):
    """A long computation was cancelled by the user; nothing was changed."""


class MessageError(WorkbenchError):
    """A malformed request from a view (wrong type, out of range, unknown kind)."""


class WaitTimeoutError(WorkbenchError, TimeoutError):
    """`view.wait(timeout)` returned before the view's work finished."""


class ExportError(WorkbenchError):
    """save_png / save_svg need a front end that draws the view."""


class RemoteError(WorkbenchError):
    """A remote (NDIF) request failed; the message says why, without the API key.

    It is raised `from None`, and it reports no `__context__`: the raw transport error (which may echo the
    key) is not chained to it.
    """

    @property  # type: ignore[override]
    def __context__(self) -> None:
        return None

    @__context__.setter
    def __context__(self, value: BaseException | None) -> None:
        pass
