"""What the entry points do, built from their Hydra config: train (fit, then test), evaluate a
checkpoint, export it, predict with it and analyse a run; the Trainer and the reports they share
live in ``trainer`` and ``reporting``."""

from dssd.tasks.analysis import analyze
from dssd.tasks.evaluation import evaluate
from dssd.tasks.exporting import export_checkpoint
from dssd.tasks.prediction import predict
from dssd.tasks.training import train

__all__ = ["analyze", "evaluate", "export_checkpoint", "predict", "train"]
