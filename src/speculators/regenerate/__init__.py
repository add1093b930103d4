"""`speculators regenerate`: a chat data set's assistant turns rewritten as the verifier's own
replies, so that the draft learns the verifier's distribution on text the verifier writes."""

from speculators.regenerate.run import RegenerateResult, run_regenerate

__all__ = ["RegenerateResult", "run_regenerate"]
