"""Datasets: many prompt pairs as the unit of input (`Dataset`), their alignment into result columns
(`align`), and the small datasets shipped for the embedded model (`workbench.datasets`)."""

from .align import Alignment, alignment
from .dataset import Dataset, Example
from .task import Task

__all__ = ["Alignment", "Dataset", "Example", "Task", "alignment"]
