"""What a model family is, as one declarative record (``Family``), and how its lazy references are resolved.

A family's folder (``graphprune/families/<name>/``) holds its adapter, tiny builders, picture layout and, where it
has them, its export class and vLLM models; its ``__init__`` holds only its ``FAMILY`` record, which names those
by ``"module:attribute"`` strings, so reading the records imports none of them (nor ONNX, matplotlib or vLLM).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, eq=False)
class Family:
    """One model family (compared and hashed by identity): every registry of graphprune (adapters, export
    families, picture layouts, vLLM architectures, the test matrix, demos) is read from these records."""

    name: str  # the adapter's name: what manifests, reports and ``export_family`` say
    model_classes: tuple[str, ...]  # the transformers class names it accepts
    methods: tuple[type, ...]  # the pruning methods that fit it (``graphprune.methods``)
    adapter: str  # "module:Class" of its ``models.base.ModelAdapter``
    testing: str  # its module of tiny builders and sample inputs (``__all__``) and ``CONTRACT`` test cases
    plot_layout: str  # "module:function": ``(model, inputs) -> list[plot.SampleLayout] | None``
    export: str | None = None  # "module:Class" of its ``export.family.ExportFamily``; None: not exportable
    export_refusal: str = ""  # why ``gp.export`` cannot export it yet, where it has a reason to give
    vllm: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # HF arch -> (vLLM name, "module:Class")
    vllm_refused: Mapping[str, str] = field(default_factory=dict)  # HF arch vLLM serves -> why the plugin refuses
    checkpoint: str | None = None  # its module of hub-layout savers (``save_<family>``, ``__all__``; tests, vLLM)

    def __post_init__(self):
        references = [self.adapter, self.plot_layout, *(target for _, target in self.vllm.values())]
        for reference in references + ([self.export] if self.export else []):
            if reference.count(":") != 1:
                raise ValueError(f"graphprune family {self.name!r}: {reference!r} is not 'module:attribute'")


def resolve(reference: str):
    """The attribute that ``"module:attribute"`` names, its module imported on first use."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)
