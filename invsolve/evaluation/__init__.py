"""Evaluate methods on folders of images: metrics, reports, resumable, sharded with accelerate."""

from invsolve.evaluation.runner import EvaluationSettings, evaluate_folder

__all__ = ["EvaluationSettings", "evaluate_folder"]
