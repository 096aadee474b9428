"""Interactive notebook views (anywidget): a click patches, ablates or projects, via `workbench.ops`."""

from .attention import AttentionView
from .base import WorkbenchWidget, pack, unpack
from .lens import LensView
from .patch import PatchView
from .workbench import Workbench

__all__ = ["AttentionView", "LensView", "PatchView", "Workbench", "WorkbenchWidget", "pack", "unpack"]
