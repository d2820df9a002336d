"""Decoder capture: a VLM's decoder as two FX graphs, prefill and decode step, via ``torch.export``.

Both graphs take and return plain tensors, so the passes can rewrite them and ONNX export can
trace them again:

- prefill: ``(inputs_embeds, attention_mask, position_ids) -> (hidden, key_0, value_0, ..., key_{L-1}, value_{L-1})``
- decode:  ``(inputs_embeds, attention_mask, position_ids, past_0, ..., past_{2L-1}) -> (hidden, key_0, ...)``

``attention_mask`` is the 2-D padding mask over every position seen so far; ``position_ids`` are
``[B, T]``, or ``[R, B, T]`` for a decoder with ``layout.position_rows = R`` (M-RoPE); keys and values are
post-RoPE, ``[B, H_kv, length, head_dim]``. Every node keeps ``nn_module_stack``, so a node's layer
and submodule are read from metadata, never guessed from node order. The graphs are captured
once per model and share its parameters.
"""

from __future__ import annotations

import logging

import torch
from torch import fx, nn
from torch.export import Dim
from transformers import DynamicCache

from .models import DecoderLayout

logger = logging.getLogger(__name__)

PREFILL_INPUTS = ("inputs_embeds", "attention_mask", "position_ids")
LAYOUT_KEY = "graphprune_layout"


def _flat_cache(cache: DynamicCache) -> list[torch.Tensor]:
    return [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]


class _DecoderStep(nn.Module):
    """One decoder call on a cache seeded with ``past`` (empty for prefill), returning plain tensors."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, inputs_embeds, attention_mask, position_ids, past=()):
        cache = DynamicCache(config=self.decoder.config)
        for layer_idx in range(len(past) // 2):
            cache.update(past[2 * layer_idx], past[2 * layer_idx + 1], layer_idx)
        out = self.decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return (out.last_hidden_state, *_flat_cache(cache))


def _fold_empty_concatenations(graph: fx.Graph) -> None:
    """``cat([empty, x])`` (how a fresh cache layer stores ``x``) becomes ``x``: one copy less per layer."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.cat.default:
            continue
        dim = node.args[1] if len(node.args) > 1 else 0
        kept = [arg for arg in node.args[0] if not _is_empty_along(arg, dim)]
        if len(kept) == 1 and len(node.args[0]) > 1:
            node.replace_all_uses_with(kept[0])
            graph.erase_node(node)


def _is_empty_along(node: fx.Node, dim: int) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.dim() == 1 and value.shape[0] == 0


def _plain_graph_module(exported: torch.export.ExportedProgram, layout: DecoderLayout) -> fx.GraphModule:
    """The exported program as a GraphModule with a positional signature and flat tuple output."""
    gm = exported.module()
    gm._forward_pre_hooks.clear()
    graph = gm.graph
    graph._codegen = fx.graph.CodeGen()
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    _fold_empty_concatenations(graph)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    gm.meta[LAYOUT_KEY] = layout
    return gm


def _example_prefill(decoder: nn.Module, layout: DecoderLayout, batch: int, seq_len: int, past: int = 0):
    param = next(decoder.parameters())
    hidden = decoder.config.hidden_size
    embeds = torch.randn(batch, seq_len, hidden, dtype=param.dtype, device=param.device)
    mask = torch.ones(batch, past + seq_len, dtype=torch.long, device=param.device)
    rows = (layout.position_rows,) if layout.position_rows else ()
    positions = torch.arange(past, past + seq_len, device=param.device).expand(*rows, batch, seq_len)
    return embeds, mask, positions


def _position_axes(layout: DecoderLayout, batch, seq) -> dict:
    """Dynamic axes of ``position_ids``: batch and sequence are its last two."""
    return {0: batch, 1: seq} if not layout.position_rows else {1: batch, 2: seq}


def capture_prefill(decoder: nn.Module, layout: DecoderLayout) -> fx.GraphModule:
    """The decoder's prefill (empty cache) as a GraphModule with dynamic batch and sequence length."""
    batch, seq = Dim("batch", min=1), Dim("seq", min=2)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: seq}, _position_axes(layout, batch, seq))
    with torch.no_grad():
        exported = torch.export.export(
            _DecoderStep(decoder), _example_prefill(decoder, layout, 2, 8), dynamic_shapes=shapes, strict=False
        )
    logger.info("captured the prefill graph of %s (%d layers)", type(decoder).__name__, layout.num_layers)
    return _plain_graph_module(exported, layout)


def capture_decode(decoder: nn.Module, layout: DecoderLayout) -> fx.GraphModule:
    """One decode step on an explicit cache as a GraphModule; each layer's past length is its own."""
    new_tokens, past_len = 2, 6  # 2 new tokens: a 1 would specialise that axis to 1
    embeds, mask, positions = _example_prefill(decoder, layout, 2, new_tokens, past=past_len)
    kv_shape = (2, layout.num_kv_heads, past_len, layout.head_dim)
    past = [torch.randn(kv_shape, dtype=embeds.dtype, device=embeds.device) for _ in range(2 * layout.num_layers)]
    dynamic = Dim.DYNAMIC
    shapes = ({0: dynamic, 1: dynamic}, {0: dynamic, 1: dynamic}, _position_axes(layout, dynamic, dynamic))
    shapes = (*shapes, [{0: dynamic, 2: dynamic} for _ in past])
    with torch.no_grad():
        exported = torch.export.export(
            _DecoderStep(decoder), (embeds, mask, positions, past), dynamic_shapes=shapes, strict=False
        )
    logger.info("captured the decode graph of %s", type(decoder).__name__)
    return _plain_graph_module(exported, layout)
