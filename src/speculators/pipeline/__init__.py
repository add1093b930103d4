"""`speculators pipeline`: [regenerate ->] datagen -> vocab -> train -> eval under one output root,
resumable stage by stage. The stages: pipeline/stages.py; the run over them: pipeline/run.py.

    speculators pipeline                                  # the built-in CPU demo (speculators.demo)
    speculators pipeline --config pipeline.yaml --set train.epochs=5
"""

from speculators.pipeline.run import PipelineResult, PrintView, run_pipeline
from speculators.pipeline.stages import STAGES, PipelineView, Stage

__all__ = ["STAGES", "PipelineResult", "PipelineView", "PrintView", "Stage", "run_pipeline"]
