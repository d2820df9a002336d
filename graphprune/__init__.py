"""graphprune: visual-token pruning for vision-language models as torch.fx graph passes.

Usage::

    import graphprune as gp
    model = gp.optimize(model, gp.FastV(k=2, keep=0.5))
    ids = model.generate(**inputs, max_new_tokens=32)
    print(gp.explain(model, **inputs))
    gp.restore(model)

    with gp.optimized(model, gp.FastV(k=2, keep=0.5)):  # restored after the block
        ids = model.generate(**inputs, max_new_tokens=32)
"""

from . import export
from ._version import __version__ as __version__
from .explain import Report, explain
from .fidelity import sweep
from .flops import flops
from .methods import DART, CrossAttentionTrim, FastV, PDrop
from .models import UnsupportedModelError, supported_classes
from .passes import PassError
from .runtime import last_record, optimize, optimized, restore

__all__ = [
    "CrossAttentionTrim",
    "DART",
    "FastV",
    "PDrop",
    "PassError",
    "Report",
    "UnsupportedModelError",
    "explain",
    "export",
    "flops",
    "last_record",
    "optimize",
    "optimized",
    "restore",
    "supported_classes",
    "sweep",
]
