"""Plotly figures, pandas frames and static export for every result type.

Every result has `.plot(**options)` (a `plotly.graph_objects.Figure`), `.to_frame(**options)` (a tidy
`pandas.DataFrame`, layouts in `frames.py`) and `.save_figure(path, **plot_options)` (PDF/SVG/PNG by
extension, offline through kaleido and the system's Chromium). Token labels use `visible_token` (the
views' whitespace markers) and all user or model text is escaped for plotly (`escape`).
"""

from __future__ import annotations

from .attention import plot_attention
from .circuits import (
    circuit_frame,
    faithfulness_curve_frame,
    faithfulness_frame,
    graph_frame,
    plot_circuit,
    plot_faithfulness,
    plot_faithfulness_curve,
    plot_graph,
)
from .dataset_lens import dataset_lens_frame, plot_dataset_lens
from .datasets import dataset_sweep_frame, dataset_value_frame, plot_dataset_sweep, plot_dataset_value
from .detectors import (
    head_detectors_frame,
    logit_attribution_frame,
    plot_head_detectors,
    plot_logit_attribution,
)
from .export import figure_bytes, find_browser, save_figure, save_result_figure
from .frames import attention_frame, lens_frame, steer_frame, steer_sweep_frame, sweep_frame, value_frame
from .future_lens import future_lens_frame, plot_future_lens
from .generation import generation_lens_frame, plot_generation_lens
from .heatmap import plot_sweep
from .lens import plot_lens
from .theme import escape, visible_token
from .tracing import (
    causal_trace_frame,
    dataset_causal_trace_frame,
    plot_causal_trace,
    plot_causal_traces,
    plot_dataset_causal_trace,
)
from .values import plot_steer, plot_steer_sweep, plot_value
from .vectors import (
    function_vector_frame,
    head_effects_frame,
    plot_function_vector,
    plot_head_effects,
    plot_vector_evaluation,
    vector_evaluation_frame,
)

__all__ = [
    "circuit_frame",
    "faithfulness_curve_frame",
    "faithfulness_frame",
    "graph_frame",
    "plot_circuit",
    "plot_faithfulness",
    "plot_faithfulness_curve",
    "plot_graph",
    "attention_frame",
    "causal_trace_frame",
    "dataset_causal_trace_frame",
    "dataset_sweep_frame",
    "dataset_value_frame",
    "dataset_lens_frame",
    "escape",
    "figure_bytes",
    "future_lens_frame",
    "generation_lens_frame",
    "find_browser",
    "function_vector_frame",
    "head_detectors_frame",
    "head_effects_frame",
    "logit_attribution_frame",
    "plot_head_detectors",
    "plot_logit_attribution",
    "plot_function_vector",
    "plot_head_effects",
    "plot_vector_evaluation",
    "vector_evaluation_frame",
    "lens_frame",
    "plot_attention",
    "plot_causal_trace",
    "plot_causal_traces",
    "plot_dataset_causal_trace",
    "plot_dataset_sweep",
    "plot_dataset_value",
    "plot_dataset_lens",
    "plot_future_lens",
    "plot_generation_lens",
    "plot_lens",
    "plot_steer",
    "plot_steer_sweep",
    "plot_sweep",
    "plot_value",
    "save_figure",
    "save_result_figure",
    "steer_frame",
    "steer_sweep_frame",
    "sweep_frame",
    "value_frame",
    "visible_token",
]
