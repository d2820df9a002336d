"""CrossAttentionTrim's decoder stand-in (Mllama's text model), its per-call record and report, and its
registration."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from ..flops import cross_attention_flops, cross_attention_trim_flops, kv_bytes
from ..layout import DecoderLayout
from ..methods import CrossAttentionTrim
from ..padding import padding_mask, refuse_right_padding, right_padded
from ..passes import cross_attention_budget, cross_attention_trim, cross_attention_trim_decode
from ..registry import MethodHandler, register_method
from ..report import Report
from . import static_decode
from .base import (
    DECODE,
    DecoderOutput,
    GraphDecoder,
    PrunedCache,
    checked_decode_mask,
    current_generation,
    full_mask,
    refuse_custom_mask,
    refuse_outputs,
    refuse_prompt_in_parts,
)

NEW_IMAGES = (
    "graphprune: new images in a call that continues a trimmed cache are not supported; "
    "start a new generation with all images in the prompt"
)


@dataclass
class TrimRecord:
    """What a cross-attention prefill saw and kept; ``explain`` reads it."""

    attention_mask: torch.Tensor  # [B, T]
    valid_features: torch.Tensor  # [B, F]: features some valid text row may attend
    keep_index: torch.Tensor  # [B, K']: feature per slot of the trimmed layers
    slot_valid: torch.Tensor  # [B, K']
    scores: torch.Tensor | None  # [B, H, F]; None when nothing was trimmed


class CrossAttentionTrimDecoder(GraphDecoder):
    """Stands in for a cross-attention decoder's ``forward`` (Mllama): trimmed prefill graph when the call
    carries vision features, the decode graph on a cache it trimmed (later cross-attention layers hold only
    the kept features), the original forward otherwise (text only, ``keep=1.0``, a cache it did not fill)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.text_layer = self.layout.self_attention_layers[0]  # caches text positions, never trimmed

    def _run(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cross_attention_states=None,
        cross_attention_mask=None,
        full_text_row_masked_out_mask=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ):
        inputs_embeds, use_cache = self._embeddings(input_ids, inputs_embeds, use_cache)
        batch, new_tokens = inputs_embeds.shape[:2]
        cache = past_key_values
        past = int(cache.get_seq_length(self.text_layer)) if cache is not None else 0
        # a generate call's steps get the masks HF builds from the prompt's, checked at the prefill
        mask, plain = padding_mask(attention_mask, past, new_tokens, check=not past or not current_generation.get())
        args = dict(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cross_attention_states=cross_attention_states,
            cross_attention_mask=cross_attention_mask,
            full_text_row_masked_out_mask=full_text_row_masked_out_mask,
            past_key_values=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        state = self._cache_states.get(cache) if past > 0 else None
        if past == 0:
            static_decode.forget(cache)
        if past > 0 and state is None:
            refuse_prompt_in_parts(self.method.keep < 1.0 and cross_attention_states is not None)
            return self._original(**args, **kwargs)
        if state is not None:
            if cross_attention_states is not None:
                raise ValueError(NEW_IMAGES)
            refuse_outputs(kwargs)
            if not plain:
                refuse_custom_mask()
            state.caught_up(past, self.layout.self_attention_layers)
            return self._decode_step(inputs_embeds, mask, position_ids, args, cache, state)
        if cross_attention_states is None:  # text only: no cross-attention layer runs, nothing is trimmed
            none = torch.zeros(batch, 0, dtype=torch.bool, device=inputs_embeds.device)
            full = full_mask(mask, batch, new_tokens, inputs_embeds.device)
            self.state.record(TrimRecord(full, none, none.long(), none, None))
            return self._original(**args, **kwargs)
        return self._prefill_step(inputs_embeds, mask, plain, args, kwargs)

    def _static_step(
        self,
        state,
        cache,
        input_ids=None,
        inputs_embeds=None,
        position_ids=None,
        attention_mask=None,
        cross_attention_states=None,
        cross_attention_mask=None,
        full_text_row_masked_out_mask=None,
        **kwargs,
    ):
        """The compiled one-token step over the whole buffers of a static cache (``static_decode``)."""
        if cross_attention_states is not None:
            raise ValueError(NEW_IMAGES)
        inputs_embeds, _ = self._embeddings(input_ids, inputs_embeds, True)
        refuse_outputs(kwargs)
        batch = inputs_embeds.shape[0]
        if position_ids is None:  # the next position, as the eager step counts it
            position_ids = state.full_length.view(1, 1)
        masks = self._cross_masks(
            cross_attention_mask, full_text_row_masked_out_mask, batch, 1, state.features, inputs_embeds
        )
        step = static_decode.cross_decode_step
        hidden = step(state, cache, inputs_embeds, position_ids.expand(batch, 1), attention_mask, masks)
        return DecoderOutput(last_hidden_state=hidden, past_key_values=cache)

    def _record_static(self, cache, static: bool, inputs: list, selection: tuple) -> None:
        step = self.graphs.runners()[DECODE] if static else None
        static_decode.record_cross(cache, self.method, self.layout, step, inputs[1], *selection[:2])

    def _cross_masks(self, cross_mask, row_mask, batch: int, new_tokens: int, features: int, like: torch.Tensor):
        """The model's masks, or the ones that mean "every row attends every feature" when absent."""
        if cross_mask is None:
            cross_mask = like.new_zeros(batch, 1, new_tokens, features)
        if row_mask is None:
            row_mask = like.new_ones(batch, 1, new_tokens, 1)
        return cross_mask, row_mask

    def _prefill_step(self, inputs_embeds, attention_mask, plain: bool, args, kwargs):
        batch, seq_len, hidden_size = inputs_embeds.shape
        device = inputs_embeds.device
        states = args["cross_attention_states"].reshape(batch, -1, hidden_size)
        mask = full_mask(attention_mask if plain else None, batch, seq_len, device)
        cross_mask, row_mask = self._cross_masks(
            args["cross_attention_mask"], args["full_text_row_masked_out_mask"], batch, seq_len, states.shape[1], states
        )
        valid = ops.valid_features(cross_mask, row_mask, mask)
        # the one host read of the prefill: whether to trim, the slots of topk, right padding
        any_valid, most_kept, right = torch.stack(
            [valid.any(), ops.keep_counts(valid, self.method.keep).max(), right_padded(mask).any()]
        ).tolist()
        if self.method.keep == 1.0 or not any_valid:  # nothing is trimmed: the unmodified model, exactly
            every = torch.arange(states.shape[1], device=device).expand(batch, -1)
            self.state.record(TrimRecord(mask, valid, every, valid, None))
            return self._original(**args, **kwargs)
        refuse_outputs(kwargs)
        if not plain:
            refuse_custom_mask()
        if right:
            refuse_right_padding(mask)
        position_ids = args["position_ids"]
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=device)[None]
        inputs = [inputs_embeds, mask, position_ids.expand(batch, seq_len), states, cross_mask, row_mask]
        if self.method.select == "topk":
            inputs.append(torch.arange(most_kept, device=device))
        out, (index, slot_valid, scores) = self._prefill(inputs, args["past_key_values"], args["use_cache"])
        self.state.record(TrimRecord(mask, valid, index, slot_valid, scores))
        return out

    def _decode_step(self, inputs_embeds, attention_mask, position_ids, args, cache, state: PrunedCache):
        batch, new_tokens = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        past = state.length(cache, self.text_layer)
        attention_mask = checked_decode_mask(attention_mask, batch, past, new_tokens, device)
        if position_ids is None:
            position_ids = torch.arange(past, past + new_tokens, device=device)[None]
        features = state.length(cache, self.layout.cross_attention_layers[0])
        masks = args["cross_attention_mask"], args["full_text_row_masked_out_mask"]
        cross_mask, row_mask = self._cross_masks(*masks, batch, new_tokens, features, inputs_embeds)
        inputs = [inputs_embeds, attention_mask, position_ids.expand(batch, new_tokens), cross_mask, row_mask]
        return self._decode(DECODE, inputs, cache, state, (state.index, state.valid))


def _check_layout(method: CrossAttentionTrim, layout: DecoderLayout) -> None:
    method.check_cross_attention_layers(layout.cross_attention_layers)


def _report(model, state, record: TrimRecord, element: int) -> Report:
    """``explain``'s report of a trimmed prefill: kept features per sample and per tile, FLOPs, KV bytes."""
    config, layout = model.config, state.layout
    batch, n_features = record.valid_features.shape
    tiles, patches = state.adapter.feature_grid(model)
    kept, n_visual, n_tokens, per_tile = [], [], [], []
    before = after = 0
    for b in range(batch):
        sample_kept = record.keep_index[b][record.slot_valid[b]].sort().values.cpu()
        kept.append(sample_kept)
        n_visual.append(int(record.valid_features[b].sum()))
        n_tokens.append(int(record.attention_mask[b].sum()))
        n_after = len(sample_kept) if record.scores is not None else n_features
        sample_before, sample_after = cross_attention_flops(config, n_tokens[b], n_features, n_after)
        before, after = before + sample_before, after + sample_after
        is_kept = torch.zeros(n_features)
        is_kept[sample_kept] = 1.0
        per_tile.append(is_kept.view(-1, tiles, patches).mean(dim=-1))
    seq_len = record.attention_mask.shape[1]
    trimmed = set(layout.cross_attention_layers[1:]) if record.scores is not None else set()
    kv_before = kv_bytes(config, _cached(layout, seq_len, n_features, n_features, trimmed), element, batch)
    kv_after = kv_bytes(
        config, _cached(layout, seq_len, n_features, record.keep_index.shape[1], trimmed), element, batch
    )
    return Report(state.method, kept, n_visual, n_tokens, record.scores, before, after, kv_before, kv_after, per_tile)


def _cached(layout: DecoderLayout, text_length: int, n_features: int, n_trimmed: int, trimmed: set[int]) -> list[int]:
    """Positions cached per layer: text length in self-attention layers, features in cross-attention ones."""
    return [
        (n_trimmed if i in trimmed else n_features) if i in layout.cross_attention_layers else text_length
        for i in range(layout.num_layers)
    ]


HANDLER = register_method(
    MethodHandler(
        method=CrossAttentionTrim,
        decoder=CrossAttentionTrimDecoder,
        prefill_pass=cross_attention_trim,
        decode_pass=cross_attention_trim_decode,
        budget_pass=cross_attention_budget,
        check_layout=_check_layout,
        report=_report,
        flops=cross_attention_trim_flops,
        unit="features",
    )
)
