"""Training runner: loop, evaluation, metrics, checkpoint/resume, progress, divergence."""

from natgrad.train.config import RunConfig
from natgrad.train.runner import RunFolderError, RunResult, evaluate, train

__all__ = ["RunConfig", "RunFolderError", "RunResult", "evaluate", "train"]
