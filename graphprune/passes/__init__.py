"""Graph passes, one per file, each ``fn(gm, method) -> gm`` on a graph from ``graphprune.capture``."""

from ._graph import INSERTED_PREFIX, PassError
from .fastv import fastv
from .fastv_budget import fastv_budget
from .fastv_decode import fastv_decode

__all__ = ["INSERTED_PREFIX", "PassError", "fastv", "fastv_budget", "fastv_decode"]
