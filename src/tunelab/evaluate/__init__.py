"""Evaluation: `tunelab eval` on any run (the stage owns the metrics), reports and plots."""
from .harness import evaluate, format_report, parse_data_args

__all__ = ["evaluate", "format_report", "parse_data_args"]
