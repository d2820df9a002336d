"""What one exported file is: a module, example arguments, and the names and dynamic axes of its inputs and outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class GraphExport:
    """One graph to write as ``{name}.onnx``.

    ``dynamic`` maps an input name to ``{axis: symbolic name}``; inputs it does not name are static.
    ``module(*args)`` is the PyTorch reference that validation compares the written file against;
    ``defined`` maps an output name to a ``[B, length]`` mask of the positions along its axis 2 that
    hold defined values (cache entries of padding positions are left out of the comparison).
    """

    name: str
    module: nn.Module
    args: tuple[torch.Tensor, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    defined: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.args):
            raise ValueError(f"graph {self.name!r}: {len(self.inputs)} input names for {len(self.args)} arguments")
        unknown = set(self.dynamic) - set(self.inputs)
        if unknown:
            raise ValueError(f"graph {self.name!r}: dynamic axes for unknown inputs {sorted(unknown)}")
        unknown = set(self.defined) - set(self.outputs)
        if unknown:
            raise ValueError(f"graph {self.name!r}: defined positions for unknown outputs {sorted(unknown)}")
