"""The science: pure functions (model, inputs, options) -> result. No widget imports here."""

from .ablation import ablate, ablate_sweep
from .attention import attention
from .attribution import attribution_patch
from .lens import Intervention, logit_lens
from .metrics import Metric, kl_to_clean, logit_diff, logprob, prob
from .patching import patch, patch_sweep
from .results import AttentionResult, LensResult, SteerResult, SweepResult, Value
from .steering import steer, steering_vector

__all__ = [
    "AttentionResult",
    "Intervention",
    "LensResult",
    "Metric",
    "SteerResult",
    "SweepResult",
    "Value",
    "ablate",
    "ablate_sweep",
    "attention",
    "attribution_patch",
    "kl_to_clean",
    "logit_diff",
    "logit_lens",
    "logprob",
    "patch",
    "patch_sweep",
    "prob",
    "steer",
    "steering_vector",
]
