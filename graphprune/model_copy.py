"""Copying an optimized model: ``copy.deepcopy`` gives an independent optimized model; pickling and
``copy.copy`` are refused.

Both are hooked with instance attributes that ``optimize`` sets (``copy.deepcopy`` and ``pickle`` look up
``__deepcopy__`` and ``__reduce_ex__`` on the instance), so ``restore`` removes them with the rest.
"""

from __future__ import annotations

import copy

from torch import nn

_DROPPED = object()  # what the memo gives for each attribute optimize set: removed from the copy


def plain_deepcopy(model: nn.Module, memo: dict, replaced: dict) -> nn.Module:
    """A deep copy of ``model`` as it was before ``optimize``.

    ``replaced`` maps each ``(module, name)`` whose instance attribute ``optimize`` set to the attribute
    it replaced (``None``: it had none); in the copy those attributes are what they were before.
    """
    for module, name in replaced:
        memo[id(module.__dict__[name])] = _DROPPED
    reductor = type(model).__reduce_ex__  # the class's: the instance's refuses
    clone = copy._reconstruct(model, memo, *reductor(model, 4))
    for (module, name), before in replaced.items():
        module_copy = memo[id(module)]
        if before is None:
            del module_copy.__dict__[name]
        else:
            module_copy.__dict__[name] = copy.deepcopy(before, memo)
    return clone


def refuse_pickle(protocol):
    raise TypeError(
        "graphprune: an optimized model cannot be pickled or shallow-copied (copy.copy); use copy.deepcopy(model), "
        "or pickle it after graphprune.restore(model) and optimize it again after loading"
    )


def refuse_part_copy():
    raise TypeError(
        "graphprune: a part of an optimized model (its decoder or a module holding it) cannot be copied or pickled; "
        "copy.deepcopy the whole model, or copy the part after graphprune.restore(model)"
    )
