"""Interactive notebook views (anywidget): a click patches, ablates or projects, via `workbench.ops`."""

from .attention import AttentionView
from .base import WorkbenchWidget, pack, unpack
from .circuit import CircuitView
from .dataset import DatasetView
from .function_vector import FunctionVectorView
from .lens import LensView
from .patch import PatchView
from .steer import SteerView
from .tracing import CausalTraceView
from .workbench import Workbench

__all__ = [
    "AttentionView",
    "CausalTraceView",
    "CircuitView",
    "DatasetView",
    "FunctionVectorView",
    "LensView",
    "PatchView",
    "SteerView",
    "Workbench",
    "WorkbenchWidget",
    "pack",
    "unpack",
]
