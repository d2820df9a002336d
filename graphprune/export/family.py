"""The export family registry: one class per exportable model family (as optimum's exporters register one
config per architecture), looked up by the model adapter's name.

A family says which graphs its export holds and how they are made, the keyword of its visual budget,
what its manifest records, the host-side inputs that ONNX Runtime needs (``OrtGenerator``), its
TensorRT axes and a demo model. Each is the ``export.py`` of its family's folder (``graphprune/families/<name>/``),
named by the family's record and imported on first use.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ..families import FAMILIES, resolve
from ..models import UnsupportedModelError

if TYPE_CHECKING:
    from torch import nn

    from .graph_export import GraphExport

DECODER_KEYS = ("num_layers", "num_kv_heads", "head_dim", "hidden_size", "vocab_size", "pad_token_id", "eos_token_id")
BUDGETS = ("max_images", "max_visual_tokens")  # the visual budget keywords of export.onnx and export.tensorrt


class ExportFamily:
    """One exportable family; subclass it, set the class attributes, implement the hooks, name it in the family's
    record (``export="graphprune.families.<name>.export:Class"``).

    ``name``: the model adapter's name (``state.adapter.name``) it exports; ``graphs``: the graphs its
    export holds; ``budget``: its visual budget keyword (one of ``BUDGETS``); ``model_keys`` and
    ``budget_keys``: what a runtime reads of the manifest's ``model`` and ``visual_budget`` entries;
    ``demo_names``: the names ``graphprune export --model`` knows it by.
    """

    name: ClassVar[str]
    graphs: ClassVar[tuple[str, ...]]
    budget: ClassVar[str]
    model_keys: ClassVar[tuple[str, ...]]
    budget_keys: ClassVar[tuple[str, ...]]
    demo_names: ClassVar[tuple[str, ...]]

    @classmethod
    def export_graphs(
        cls, model: nn.Module, state, example_inputs: dict, budget: int | None, prune: bool
    ) -> tuple[list[GraphExport], dict]:
        """The graphs of an export of ``model`` (optimised, ``state``) and what the manifest records about it."""
        raise NotImplementedError

    @classmethod
    def host_inputs(cls, runner, input_ids: np.ndarray, mask: np.ndarray, images: dict) -> tuple[dict, dict]:
        """The prefill graph's inputs for a prompt, made with ``runner.run(graph, values)`` and on the host, and
        the inputs that stay fixed while decoding; ``images``: the visual inputs as the processor makes them."""
        raise NotImplementedError

    @classmethod
    def after_step(cls, state: dict, tokens: np.ndarray, past_length: int) -> None:
        """Update the pruned export's cache bookkeeping in ``state`` after a decode step (default: it is fixed)."""

    @classmethod
    def trt_axes(cls, manifest, max_batch: int, max_text: int, max_new_tokens: int) -> dict:
        """``{axis name: (min, opt, max)}`` for every dynamic axis of the export's graphs (TensorRT profiles);
        ``manifest``: the export's ``Manifest`` (``manifest.py``, which reads this registry)."""
        raise NotImplementedError

    @classmethod
    def recipe_notes(cls, manifest) -> tuple[str, str, str]:
        """The pruning, visual budget and cache lines of the ``TENSORRT.md`` written next to the ONNX files."""
        raise NotImplementedError

    @classmethod
    def demo(cls, method, name: str) -> tuple[nn.Module, dict]:
        """A tiny random-weight model of the family (``name``: one of ``demo_names``) optimised with ``method``,
        and example inputs for it."""
        raise NotImplementedError


def checked(family: type[ExportFamily]) -> type[ExportFamily]:
    """``family``, if its budget keyword is one of ``BUDGETS``; a ``ValueError`` otherwise."""
    if family.budget not in BUDGETS:
        raise ValueError(f"graphprune export family {family.name!r}: budget must be one of {BUDGETS}")
    return family


@functools.cache
def export_families() -> dict[str, type[ExportFamily]]:
    """Every exportable family by the adapter's name: the ``export`` class of each family record that has one."""
    return {family.name: checked(resolve(family.export)) for family in FAMILIES if family.export}


def export_family(name: str, what: str) -> type[ExportFamily]:
    """The export family of the adapter named ``name``; an ``UnsupportedModelError`` that starts with ``what``
    (what cannot be exported or run, and why) and lists every exportable family."""
    families = export_families()
    if name not in families:
        raise UnsupportedModelError(f"{what}; exportable families: {', '.join(sorted(families))}")
    return families[name]


def as_numpy(value, dtype=None) -> np.ndarray | None:
    """A tensor, array or list as a numpy array (of ``dtype``, if given); None stays None."""
    if value is None:
        return None
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return array.astype(dtype) if dtype is not None else array
