"""``graphprune.sweep``: how often a pruned model says what the unpruned one says, at what FLOPs, on your inputs."""

from .run import MethodResult, SweepResult, sweep
from .samples import Sample, load_samples

__all__ = ["MethodResult", "Sample", "SweepResult", "load_samples", "sweep"]
