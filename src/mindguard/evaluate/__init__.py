"""Intrinsic evaluation: turn-level binary metrics and the report written by `mindguard eval`."""

from .metrics import auroc, bootstrap_auroc_ci, fpr_at_tpr, guard_metrics, threshold_at_tpr
from .report import write_report
from .runner import TurnScores, evaluate, score_turns

__all__ = ["auroc", "bootstrap_auroc_ci", "fpr_at_tpr", "guard_metrics", "threshold_at_tpr", "write_report",
           "TurnScores", "evaluate", "score_turns"]
