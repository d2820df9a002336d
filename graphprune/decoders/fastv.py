"""FastV's decoder stand-in, its per-call record and report, and its registration."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from ..capture import deepstack_inputs
from ..flops import fastv_flops, kv_bytes
from ..layout import DecoderLayout
from ..methods import FastV, n_keep
from ..padding import padding_mask, refuse_right_padding, right_padded
from ..passes import fastv, fastv_budget, fastv_decode
from ..registry import MethodHandler, register_method
from ..report import Report
from . import static_decode
from .base import (
    DECODE,
    KEY_MASK_DECODE,
    UNMASKED_DECODE,
    DecoderOutput,
    GraphDecoder,
    PrunedCache,
    brings_images,
    check_decode_mask,
    checked_decode_mask,
    current_call,
    current_generation,
    full_mask,
    refuse_custom_mask,
    refuse_outputs,
    refuse_prompt_in_parts,
    static_layers,
)


@dataclass
class PrefillRecord:
    """What a FastV prefill (pruned or not) saw and chose; ``explain`` reads it."""

    visual_mask: torch.Tensor  # [B, N]
    attention_mask: torch.Tensor  # [B, N]
    keep_index: torch.Tensor  # [B, S]: original position per slot
    slot_valid: torch.Tensor  # [B, S]
    scores: torch.Tensor | None  # [B, N]; None when nothing was pruned


class FastVDecoder(GraphDecoder):
    """Stands in for the decoder's ``forward``: pruned prefill graph on a fresh cache, pruned-cache decode
    graph on a cache it filled, the original forward otherwise (nothing to prune, a cache it did not fill)."""

    decodes_unmasked = True

    def _run(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ):
        inputs_embeds, use_cache = self._embeddings(input_ids, inputs_embeds, use_cache)
        batch, new_tokens = inputs_embeds.shape[:2]
        past = int(past_key_values.get_seq_length()) if past_key_values is not None else 0
        # a generate call's steps get the masks HF builds from the prompt's, checked at the prefill
        mask, plain = padding_mask(attention_mask, past, new_tokens, check=not past or not current_generation.get())
        args = dict(attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values)
        if past > 0:
            state = self._cache_states.get(past_key_values)
            refuse_prompt_in_parts(self.method.keep < 1.0 and brings_images())
            if state is None:
                return self._original(inputs_embeds=inputs_embeds, use_cache=use_cache, **args, **kwargs)
            refuse_outputs(kwargs)
            if not plain:
                refuse_custom_mask()
            state.caught_up(past)
            return self._decode_step(inputs_embeds, mask, position_ids, past_key_values, state)
        static_decode.forget(past_key_values)
        out = self._prefill_step(inputs_embeds, mask, plain, position_ids, past_key_values, use_cache, kwargs)
        if out is None:  # nothing to prune: the unmodified model, on the call's own mask
            return self._original(inputs_embeds=inputs_embeds, use_cache=use_cache, **args, **kwargs)
        return out

    def _static_step(
        self, state, cache, inputs_embeds=None, input_ids=None, position_ids=None, attention_mask=None, **kwargs
    ):
        """The compiled one-token step over the whole buffers of a static cache (``static_decode``)."""
        inputs_embeds, _ = self._embeddings(input_ids, inputs_embeds, True)
        refuse_outputs(kwargs)
        if position_ids is None:  # the next position, as the eager step counts it
            position_ids = state.full_length.view(1, 1)
        position_ids = self._graph_positions(position_ids, inputs_embeds.shape[0], 0, 1, inputs_embeds.device)
        hidden = static_decode.decode_step(state, cache, inputs_embeds, position_ids, attention_mask)
        return DecoderOutput(last_hidden_state=hidden, past_key_values=cache)

    def _prefill_step(self, inputs_embeds, attention_mask, plain: bool, position_ids, cache, use_cache, kwargs):
        """The pruned prefill's output; None where the call prunes nothing (keep=1.0, no visual token)."""
        batch, seq_len = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        mask = full_mask(attention_mask if plain else None, batch, seq_len, device)
        visual = self._visual_mask(batch, seq_len, device) & mask.bool()  # padding is not visual
        n_visual = visual.sum(dim=-1)
        # per stage (FastV: one), each sample's kept count: its real positions less the visual ones dropped
        kept = torch.stack([mask.sum(dim=-1) - n_visual + count for count in self._kept_visual(n_visual)])
        # the one host read of the prefill: what sizes the slots, and every data-dependent choice with it
        most_dropped, uniform, padded, right, *most_kept = torch.stack(
            [
                (mask.sum(dim=-1) - kept[-1]).max(),
                (kept.amin(dim=-1) == kept.amax(dim=-1)).all(),
                (mask == 0).any(),
                right_padded(mask).any(),
                *kept.amax(dim=-1),
            ]
        ).tolist()
        if most_dropped == 0:  # keep=1.0 or no visual token: the unmodified model, exactly
            every = torch.arange(seq_len, device=device).expand(batch, seq_len)
            self.state.record(PrefillRecord(visual, mask, every, torch.ones_like(visual), None))
            return None
        refuse_outputs(kwargs)
        if use_cache and cache is not None:
            static_layers(cache)  # a static cache that a pruned prefill cannot fill is refused first
        if not plain:
            refuse_custom_mask()
        if right:
            refuse_right_padding(mask)
        position_ids = self._graph_positions(position_ids, batch, 0, seq_len, device)
        slots = [torch.arange(most, device=device) for most in most_kept]
        # no padding before or after pruning: SDPA can mask causally by itself (the flash kernel on GPU)
        unpadded = not padded and uniform
        extra = self._extra_inputs(inputs_embeds, kwargs)
        out, (index, valid, scores) = self._prefill(
            [inputs_embeds, mask, position_ids, *extra, visual, *slots], cache, use_cache, unpadded
        )
        self.state.record(PrefillRecord(visual, mask, index, valid, scores))
        return out

    def _kept_visual(self, n_visual: torch.Tensor) -> list[torch.Tensor]:
        """Per pruning stage, the visual positions each sample keeps (``n_visual`` ``[B]``); FastV has one stage."""
        return [n_keep(self.method.keep, n_visual)]

    def _extra_inputs(self, inputs_embeds: torch.Tensor, kwargs: dict) -> list[torch.Tensor]:
        """The prefill graph's inputs after the position ids: the DeepStack ones (Qwen3-VL), if any."""
        return deepstack_inputs(self.layout, inputs_embeds, kwargs)

    def _visual_mask(self, batch: int, seq_len: int, device) -> torch.Tensor:
        """The call's visual mask (computed now, at prefill only), or none visual where it does not fit."""
        call = current_call.get()
        visual = call.visual_mask() if call is not None else None
        if visual is None or visual.shape != (batch, seq_len):
            return torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
        return visual.to(device)

    def _graph_positions(self, position_ids, batch, start, length, device):
        """Position ids in the captured graphs' form: ``[B, T]``, or ``[R, B, T]`` for R RoPE rows (M-RoPE).

        ``None`` means ``start .. start + length - 1``, as the decoder itself would count. For an
        M-RoPE decoder, 2-D ids are the same in every row, and one row more than R is HF generate's
        leading text row: the decoder reads it only to detect packed sequences when it has no
        attention mask, and the graphs always get one, so it is dropped.
        """
        if position_ids is None:
            position_ids = torch.arange(start, start + length, device=device)[None]
        rows = self.layout.position_rows
        if not rows:
            return position_ids.expand(batch, length)
        if position_ids.dim() == 2:
            position_ids = position_ids[None]
        elif position_ids.shape[0] == rows + 1:
            position_ids = position_ids[1:]
        return position_ids.expand(rows, batch, length)

    def _decode_step(self, inputs_embeds, attention_mask, position_ids, cache, state: PrunedCache):
        batch, new_tokens = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        past = state.length(cache, 0)  # layer 0 is never pruned: the unpruned length
        position_ids = self._graph_positions(position_ids, batch, past, new_tokens, device)
        if new_tokens == 1 and state.unpadded:
            # no padding since the prefill (generate adds none): every cached key is seen, so no mask is built
            check_decode_mask(attention_mask, past, new_tokens)
            return self._decode(UNMASKED_DECODE, [inputs_embeds, position_ids], cache, state)
        attention_mask = checked_decode_mask(attention_mask, batch, past, new_tokens, device)
        length = state.length(cache, -1)  # the last layer is pruned (k < num_layers): P'
        slots = _decode_slots(state, length, past, new_tokens)
        if new_tokens == 1 and state.generation is not None and state.generation is current_generation.get():
            # a step of the generate call that filled the cache: its mask is the prompt's grown by ones, so the
            # key masks made at its first step (and when the room grows) hold; the step passes views of them
            key_masks = self._key_masks(state, attention_mask, length)
            return self._decode(KEY_MASK_DECODE, [inputs_embeds, position_ids], cache, state, key_masks)
        return self._decode(DECODE, [inputs_embeds, attention_mask, position_ids], cache, state, slots)

    def _key_masks(self, state: PrunedCache, attention_mask, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The one-token step's key masks over ``[B, P + 1]`` and the ``length + 1`` slots of the pruned layers,
        made anew (from the step's mask, the slots' validity and ones for the room) only when the room grew."""
        room = state.valid.shape[1]
        if state.key_masks is None or state.key_masks[1].shape[1] != room:
            ahead = room - length - 1  # slots laid out for later steps, after this step's
            ones = torch.ones(attention_mask.shape[0], ahead, dtype=torch.bool, device=attention_mask.device)
            grown = torch.cat([attention_mask.bool(), ones], dim=1)
            dtype = self.key_mask_dtype()
            state.key_masks = ops.key_mask_form(grown, dtype), ops.key_mask_form(state.valid, dtype)
        full, pruned = state.key_masks
        return full[:, : attention_mask.shape[1]], pruned[:, : length + 1]


def _decode_slots(state: PrunedCache, length: int, past: int, new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``length`` slots of the pruned layers' cache, with room for the step's ``new_tokens`` after them.

    A slot after the cache holds the position that a later step caches there (slot ``length`` the step's first
    new position ``past``), so a step copies nothing; the room doubles when it runs out.
    """
    batch, room = state.index.shape
    if room < length + new_tokens:
        more = max(room, new_tokens)
        first = past + room - length
        positions = torch.arange(first, first + more, device=state.index.device).expand(batch, more)
        state.index = torch.cat([state.index, positions], dim=1)
        state.valid = torch.cat([state.valid, torch.ones_like(positions, dtype=torch.bool)], dim=1)
    return state.index[:, :length], state.valid[:, :length]


def _check_layout(method: FastV, layout: DecoderLayout) -> None:
    method.check_layers(layout.num_layers)


def _report(model, state, record: PrefillRecord, element: int) -> Report:
    """``explain``'s report of a FastV prefill: kept visual positions per sample, FLOPs, KV bytes."""
    method, config = state.method, model.config
    kept, n_visual, n_tokens = [], [], []
    before = after = 0
    for b in range(record.visual_mask.shape[0]):
        slots = record.keep_index[b][record.slot_valid[b]]
        kept.append(slots[record.visual_mask[b, slots]].cpu())
        n_visual.append(int(record.visual_mask[b].sum()))
        n_tokens.append(int(record.attention_mask[b].sum()))
        sample_before, sample_after = fastv_flops(config, method, n_tokens[b], n_visual[b])
        before, after = before + sample_before, after + sample_after
    batch, seq_len = record.visual_mask.shape
    num_layers = state.layout.num_layers
    pruned_layers = num_layers - method.k if record.scores is not None else 0
    kv_before = kv_bytes(config, [seq_len] * num_layers, element, batch)
    cached = [seq_len] * (num_layers - pruned_layers) + [record.keep_index.shape[1]] * pruned_layers
    kv_after = kv_bytes(config, cached, element, batch)
    return Report(method, kept, n_visual, n_tokens, record.scores, before, after, kv_before, kv_after)


HANDLER = register_method(
    MethodHandler(
        method=FastV,
        decoder=FastVDecoder,
        prefill_pass=fastv,
        decode_pass=fastv_decode,
        budget_pass=fastv_budget,
        check_layout=_check_layout,
        report=_report,
        flops=fastv_flops,
        unit="visual tokens",
    )
)
