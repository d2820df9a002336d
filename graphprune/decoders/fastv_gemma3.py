"""FastV's decoder stand-in for Gemma 3, whose outer model hands its decoder a dict of masks it built.

The pruned graphs build those masks themselves (``graphprune/masks.py``) from the model call's 2-D
``attention_mask`` and ``token_type_ids`` (read from ``current_call``), and keep every key of every layer: a
cache they fill has plain layers in place of HF's window-sized sliding ones (in HF's hybrid static cache, static
layers as long as its full ones). Where HF's generate built the call's masks too (over a static cache), the 2-D
mask is its full-attention mask's last row. The original forward, for a call with nothing to prune or a cache
graphprune did not fill, gets the model's own masks, unchanged.
"""

from __future__ import annotations

import contextvars

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, StaticLayer, StaticSlidingWindowLayer

from ..graph_cache import capturing
from .base import call_argument, static_layers
from .fastv import FastVDecoder

# the masks argument of the current decoder call (the model's dict, or a tensor when called directly)
_call_masks: contextvars.ContextVar = contextvars.ContextVar("graphprune_gemma3_masks", default=None)


class Gemma3FastVDecoder(FastVDecoder):
    """``FastVDecoder`` on the 2-D mask and token types of the model's call, with plain cache layers."""

    no_compiled_step = "its sliding-window and image-block masks are built per step"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._model_forward, self._original = self._original, self._forward_with_call_masks

    def _forward_with_call_masks(self, *args, **kwargs):
        masks = _call_masks.get()
        if masks is not None and not capturing(self.decoder):  # a capture at a new dtype passes its own masks
            kwargs["attention_mask"] = masks
        return self._model_forward(*args, **kwargs)

    def _run(self, *args, attention_mask=None, **kwargs):
        token = _call_masks.set(attention_mask)
        try:
            if isinstance(attention_mask, dict):  # the model built it from its own call's 2-D mask
                attention_mask = call_argument("attention_mask")
            if isinstance(attention_mask, dict):  # HF's generate built the model's call's masks (a static cache)
                attention_mask = _generated_padding(attention_mask, kwargs.get("past_key_values"), kwargs)
            return super()._run(*args, attention_mask=attention_mask, **kwargs)
        finally:
            _call_masks.reset(token)

    def _extra_inputs(self, inputs_embeds: torch.Tensor, kwargs: dict) -> list[torch.Tensor]:
        """``token_type_ids [B, N]`` of the model's call (zeros, no image block, where it has none)."""
        shape = inputs_embeds.shape[:2]
        token_types = call_argument("token_type_ids")
        if token_types is None:
            return [torch.zeros(shape, dtype=torch.long, device=inputs_embeds.device)]
        if token_types.shape != shape:
            raise ValueError(
                f"graphprune: token_type_ids of shape {tuple(token_types.shape)} do not fit the prompt's "
                f"{tuple(shape)}; pass one type per input position"
            )
        return [token_types.to(inputs_embeds.device, torch.long)]

    def _check_cache(self, cache) -> None:
        """HF's hybrid static cache, before a pruned prefill: its empty sliding layers become static layers as long
        as its full ones (the pruned graphs need every key)."""
        full = [layer.max_cache_len for layer in cache.layers if type(layer) is StaticLayer]
        for layer_idx, layer in enumerate(cache.layers):
            if full and type(layer) is StaticSlidingWindowLayer and not layer.is_initialized:
                cache.layers[layer_idx] = StaticLayer(max_cache_len=full[0])
        super()._check_cache(cache)

    def _prefill(self, inputs, cache, use_cache, unpadded=False):
        if use_cache and not (cache is not None and static_layers(cache)):
            cache = _plain_layers(cache)
        return super()._prefill(inputs, cache, use_cache, unpadded)


def _generated_padding(masks: dict, cache, kwargs: dict) -> torch.Tensor | None:
    """The 2-D padding mask ``[B, past + new]`` that HF's generate built ``masks`` (its dict of 4-D masks over a
    static cache) from: the full-attention mask's last query row, which sees every earlier real position (None,
    every position real, where HF left the mask out)."""
    full = masks.get("full_attention")
    if full is None:
        return None
    embeds = kwargs.get("inputs_embeds")
    new_tokens = (embeds if embeds is not None else kwargs["input_ids"]).shape[1]
    past = int(cache.get_seq_length()) if cache is not None else 0
    row = full[:, 0, -1, : past + new_tokens]
    return (row if row.dtype == torch.bool else row == 0).long()


def _plain_layers(cache: DynamicCache | None) -> DynamicCache:
    """``cache`` (a new one if None) with a plain layer in place of each empty sliding-window layer."""
    if cache is None:
        return DynamicCache()
    for layer_idx, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:
            cache.layers[layer_idx] = DynamicLayer()
    return cache
