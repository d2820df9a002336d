"""PyramidDrop's decoder stand-in, report, FLOPs and registration: FastV's stand-in with one pruned cache per stage.

Each stage's layers cache only that stage's kept positions, so a decode step gives every stage its own slots
(original positions, grown by the new ones) and passes the positions the unmodified model gives new tokens.
Over HF's static cache each stage's layers hold their count first in their buffers (eager steps, as FastV's); HF's
compiled generate is refused (``static_decode``'s compiled step serves one pruned group), naming PDrop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ..flops import _text_config, kv_bytes
from ..layout import DecoderLayout
from ..methods import PDrop
from ..passes import pdrop, pdrop_decode
from ..registry import register_method
from ..report import Report
from . import static_decode
from .base import (
    CAUSAL_PREFILL,
    DECODE,
    PREFILL,
    DecoderOutput,
    PrunedCache,
    _fill,
    checked_decode_mask,
    static_layers,
)
from .fastv import HANDLER as FASTV_HANDLER
from .fastv import FastVDecoder, _decode_slots


@dataclass
class StagedCache(PrunedCache):
    """The last stage's slots (``index``, ``valid``) and, in ``earlier``, those of the stages before it."""

    earlier: list[PrunedCache] = field(default_factory=list)

    def stages(self) -> list[PrunedCache]:
        return [*self.earlier, self]


class PDropDecoder(FastVDecoder):
    """FastV's stand-in with PDrop's graphs: per-stage slots in, one pruned cache per stage, the general decode
    graph only (its one-token forms hold one pruned group)."""

    decodes_unmasked = False

    def _kept_visual(self, n_visual: torch.Tensor) -> list[torch.Tensor]:
        return self.method.stage_counts(n_visual)

    def _prefill(self, inputs: list, cache, use_cache: bool, unpadded: bool = False):
        """Run the prefill graph; with ``use_cache``, fill ``cache`` (a new ``DynamicCache`` if None) and record each
        stage's slots. Returns the output and the last stage's ``(keep_index, slot_valid, scores)``."""
        runners = self.graphs.runners()
        outputs = runners[CAUSAL_PREFILL if unpadded and runners[CAUSAL_PREFILL] is not None else PREFILL](*inputs)
        num_layers = self.layout.num_layers
        stages = outputs[1 + 2 * num_layers : -1]
        selection = (stages[-2], stages[-1], outputs[-1])
        if not use_cache:
            return DecoderOutput(last_hidden_state=outputs[0]), selection
        cache = cache if cache is not None else DynamicCache(config=self.decoder.config)
        static = static_layers(cache)
        for layer_idx in range(num_layers):
            _fill(cache, layer_idx, outputs[1 + 2 * layer_idx], outputs[2 + 2 * layer_idx])
        lengths = [outputs[1 + 2 * i].shape[2] for i in range(num_layers)] if static else None
        earlier = [PrunedCache(index, valid) for index, valid in zip(stages[:-2:2], stages[1:-2:2], strict=True)]
        self._cache_states[cache] = StagedCache(selection[0], selection[1], lengths=lengths, earlier=earlier)
        static_decode.record(cache, self.method, None, None, inputs[1], selection[1])
        return DecoderOutput(last_hidden_state=outputs[0], past_key_values=cache), selection

    def _decode_step(self, inputs_embeds, attention_mask, position_ids, cache, state: StagedCache):
        batch, new_tokens = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        past = state.length(cache, 0)  # layer 0 is never pruned: the unpruned length
        position_ids = self._graph_positions(position_ids, batch, past, new_tokens, device)
        attention_mask = checked_decode_mask(attention_mask, batch, past, new_tokens, device)
        slots = []
        for stage, layer in zip(state.stages(), self.method.layers, strict=True):
            slots += _decode_slots(stage, state.length(cache, layer), past, new_tokens)
        return self._decode(DECODE, [inputs_embeds, attention_mask, position_ids], cache, state, tuple(slots))


def _check_layout(method: PDrop, layout: DecoderLayout) -> None:
    method.check_layers(layout.num_layers)
    if layout.layer_masks:
        raise ValueError(
            "graphprune's PDrop does not fit a decoder with per-layer masks (Gemma 3's sliding window); use FastV"
        )


def _layer_flops(n: int, d: int, m: int) -> int:
    """PyramidDrop's count for one layer with n tokens: ``4nd² + 2n²d + 3ndm`` (SwiGLU: three d×m matrices)."""
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def pdrop_flops(config, method: PDrop, n_tokens: int, n_visual: int) -> tuple[int, int]:
    """``flops``' paper count for PDrop (arXiv 2410.17247, Table 7 and the stage ablation): per layer
    ``4nd² + 2n²d + 3ndm``, each stage's layers with its kept count. The paper counts the image tokens only:
    ``gp.flops(config, PDrop(), 576, 576)`` for LLaVA-1.5-7B gives its 3.82 T -> 1.78 T."""
    if not 0 <= n_visual <= n_tokens:
        raise ValueError(f"n_visual must be in [0, n_tokens]; got n_visual={n_visual}, n_tokens={n_tokens}")
    text = _text_config(config)
    d, m, num_layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    method.check_layers(num_layers)
    bounds = [0, *method.layers, num_layers]
    counts = [n_visual, *method.stage_counts(n_visual)]
    after = sum(
        (end - start) * _layer_flops(n_tokens - n_visual + count, d, m)
        for start, end, count in zip(bounds[:-1], bounds[1:], counts, strict=True)
    )
    return num_layers * _layer_flops(n_tokens, d, m), after


def _report(model, state, record, element: int) -> Report:
    """``explain``'s report of a PDrop prefill: ``kept[i]``, sample i's visual positions that survive every stage
    (those layers ``>= layers[-1]`` see); FLOPs (PDrop's paper count) and KV bytes with each stage's slots."""
    method, config = state.method, model.config
    kept, n_visual, n_tokens = [], [], []
    before = after = 0
    for b in range(record.visual_mask.shape[0]):
        slots = record.keep_index[b][record.slot_valid[b]]
        kept.append(slots[record.visual_mask[b, slots]].cpu())
        n_visual.append(int(record.visual_mask[b].sum()))
        n_tokens.append(int(record.attention_mask[b].sum()))
        sample_before, sample_after = pdrop_flops(config, method, n_tokens[b], n_visual[b])
        before, after = before + sample_before, after + sample_after
    batch, seq_len = record.visual_mask.shape
    num_layers = state.layout.num_layers
    cached = [seq_len] * num_layers
    if record.scores is not None:  # each stage's layers hold its longest sample's kept count
        real, visual = record.attention_mask.sum(dim=-1), record.visual_mask.sum(dim=-1)
        bounds = [*method.layers, num_layers]
        for start, end, count in zip(bounds[:-1], bounds[1:], method.stage_counts(visual), strict=True):
            cached[start:end] = [int((real - visual + count).max())] * (end - start)
    kv_before = kv_bytes(config, [seq_len] * num_layers, element, batch)
    return Report(
        method,
        kept,
        n_visual,
        n_tokens,
        record.scores,
        before,
        after,
        kv_before,
        kv_bytes(config, cached, element, batch),
    )


HANDLER = register_method(
    dataclasses.replace(
        FASTV_HANDLER,
        method=PDrop,
        decoder=PDropDecoder,
        prefill_pass=pdrop,
        decode_pass=pdrop_decode,
        budget_pass=None,  # no export yet: gp.export refuses it
        check_layout=_check_layout,
        report=_report,
        flops=pdrop_flops,
    )
)
