"""Evaluate methods on folders of images: metrics, reports, resumable, sharded with accelerate."""

from invsolve.evaluation.runner import evaluate_folder
from invsolve.evaluation.settings import EvaluationSettings

__all__ = ["EvaluationSettings", "evaluate_folder"]
