"""Graph passes, one per file, each ``fn(gm, method) -> gm`` on a graph from ``graphprune.capture``."""

from ._graph import INSERTED_PREFIX, PassError
from .cross_attention_budget import cross_attention_budget
from .cross_attention_trim import cross_attention_trim
from .cross_attention_trim_decode import cross_attention_trim_decode
from .dart import dart
from .fastv import fastv
from .fastv_budget import fastv_budget
from .fastv_decode import fastv_decode
from .pdrop import pdrop
from .pdrop_decode import pdrop_decode

__all__ = [
    "INSERTED_PREFIX",
    "PassError",
    "cross_attention_budget",
    "cross_attention_trim",
    "cross_attention_trim_decode",
    "dart",
    "fastv",
    "fastv_budget",
    "fastv_decode",
    "pdrop",
    "pdrop_decode",
]
