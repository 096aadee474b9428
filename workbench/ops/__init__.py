"""The science: pure functions (model, inputs, options) -> result. No widget imports here."""

from typing import Any

from ..engine.edits import Add, Cell, Edit
from ..progress import with_bar
from ..result_cache import cached
from .ablation import ablate, ablate_sweep
from .attention import attention
from .attribution import attribution_patch
from .circuit_results import Circuit, Edge, Faithfulness, FaithfulnessCurve, Graph
from .circuits import edge_attribution, edge_patch, faithfulness, faithfulness_curve
from .dataset_results import DatasetLensResult
from .future_lens import FutureLensPrompt, FutureLensResult, future_lens, train_future_lens
from .generation_lens import GenerationLens, generation_lens
from .head_detectors import HeadDetectorScores, head_detectors
from .intervention import intervene
from .lens import Intervention, logit_lens
from .logit_attribution import LogitAttribution, logit_attribution
from .metrics import Metric, kl_to_clean, logit_diff, logprob, prob
from .patching import patch, patch_sweep
from .patchscope import PatchscopeResult, patchscope
from .path_patching import path_patch, path_patch_sweep
from .results import AttentionResult, LensResult, SteerResult, SteerSweepResult, SweepResult, Value
from .steering import SteerStep, steer, steer_sweep, steering_vector
from .tracing import CausalTrace, DatasetCausalTrace, causal_trace
from .tuned_lens import TunedLens, tuned_lens
from .vector_results import FunctionVector, HeadEffects, VectorEvaluation
from .vectors import evaluate_vector, function_vector, head_effects


def _public(name: str, fn: Any) -> Any:
    """An op as users call it: a progress bar when the caller passes no `progress=` (`progress.with_bar`),
    and the workshop cache when one is active (`wb.cache(path)`)."""
    return with_bar(name)(cached(name)(fn))


patch = _public("patch", patch)
patch_sweep = _public("patch_sweep", patch_sweep)
path_patch = _public("path_patch", path_patch)
path_patch_sweep = _public("path_patch_sweep", path_patch_sweep)
ablate = _public("ablate", ablate)
ablate_sweep = _public("ablate_sweep", ablate_sweep)
attribution_patch = _public("attribution_patch", attribution_patch)
logit_lens = _public("logit_lens", logit_lens)
attention = _public("attention", attention)
steer = _public("steer", steer)
steer_sweep = _public("steer_sweep", steer_sweep)
intervene = _public("intervene", intervene)
causal_trace = _public("causal_trace", causal_trace)
patchscope = _public("patchscope", patchscope)
generation_lens = _public("generation_lens", generation_lens)
tuned_lens = _public("tuned_lens", tuned_lens)
tuned_lens.load = TunedLens.load  # wb.tuned_lens.load(path), the same as wb.TunedLens.load(path)
future_lens = _public("future_lens", future_lens)
train_future_lens = _public("train_future_lens", train_future_lens)
head_effects = _public("head_effects", head_effects)
function_vector = _public("function_vector", function_vector)
evaluate_vector = _public("evaluate_vector", evaluate_vector)
edge_attribution = _public("edge_attribution", edge_attribution)
faithfulness = _public("faithfulness", faithfulness)
faithfulness_curve = _public("faithfulness_curve", faithfulness_curve)
edge_patch = _public("edge_patch", edge_patch)
head_detectors = _public("head_detectors", head_detectors)
logit_attribution = _public("logit_attribution", logit_attribution)

__all__ = [
    "Add",
    "AttentionResult",
    "CausalTrace",
    "Cell",
    "Circuit",
    "Edge",
    "Faithfulness",
    "FaithfulnessCurve",
    "Graph",
    "DatasetCausalTrace",
    "DatasetLensResult",
    "Edit",
    "FunctionVector",
    "FutureLensPrompt",
    "FutureLensResult",
    "GenerationLens",
    "HeadDetectorScores",
    "HeadEffects",
    "Intervention",
    "LensResult",
    "LogitAttribution",
    "Metric",
    "PatchscopeResult",
    "SteerResult",
    "SteerStep",
    "SteerSweepResult",
    "SweepResult",
    "TunedLens",
    "Value",
    "VectorEvaluation",
    "ablate",
    "ablate_sweep",
    "attention",
    "attribution_patch",
    "causal_trace",
    "edge_attribution",
    "edge_patch",
    "evaluate_vector",
    "faithfulness",
    "faithfulness_curve",
    "function_vector",
    "future_lens",
    "generation_lens",
    "head_detectors",
    "head_effects",
    "intervene",
    "kl_to_clean",
    "logit_attribution",
    "logit_diff",
    "logit_lens",
    "logprob",
    "patch",
    "patch_sweep",
    "path_patch",
    "path_patch_sweep",
    "patchscope",
    "prob",
    "steer",
    "steer_sweep",
    "steering_vector",
    "tuned_lens",
    "train_future_lens",
]
