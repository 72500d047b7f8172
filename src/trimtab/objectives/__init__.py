"""Training objectives: each turns a batch into a loss and per-sample diagnostics."""

from trimtab.objectives.base import Objective, ObjectiveOutput
from trimtab.objectives.registry import METHODS, get_method, list_methods

__all__ = ["METHODS", "Objective", "ObjectiveOutput", "get_method", "list_methods"]
