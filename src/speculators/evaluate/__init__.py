"""Offline acceptance measurement of a trained draft against its verifier (`speculators eval`)."""

from speculators.evaluate.run import EvalResult, run_eval

__all__ = ["EvalResult", "run_eval"]
