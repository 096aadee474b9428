"""Workbench: look inside language models from a notebook, and act on what you see."""

from .errors import (
    CancelledError,
    ModelLoadError,
    RemoteError,
    SiteError,
    TokenizationError,
    UnsupportedModelError,
    WorkbenchError,
)
from .loading import load
from .model import SITES, Model
from .ops import (
    AttentionResult,
    Intervention,
    LensResult,
    Metric,
    SteerResult,
    SweepResult,
    Value,
    ablate,
    ablate_sweep,
    attention,
    attribution_patch,
    kl_to_clean,
    logit_diff,
    logit_lens,
    logprob,
    patch,
    patch_sweep,
    prob,
    steer,
    steering_vector,
)
from .result_cache import ResultCache, cache
from .widgets import AttentionView, LensView, PatchView, Workbench  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "SITES",
    "AttentionView",
    "LensView",
    "PatchView",
    "Workbench",
    "AttentionResult",
    "CancelledError",
    "Intervention",
    "LensResult",
    "Metric",
    "Model",
    "ModelLoadError",
    "RemoteError",
    "ResultCache",
    "SiteError",
    "SteerResult",
    "SweepResult",
    "TokenizationError",
    "UnsupportedModelError",
    "Value",
    "WorkbenchError",
    "ablate",
    "ablate_sweep",
    "attention",
    "attribution_patch",
    "cache",
    "kl_to_clean",
    "load",
    "logit_diff",
    "logit_lens",
    "logprob",
    "patch",
    "patch_sweep",
    "prob",
    "steer",
    "steering_vector",
    "testing",
]
