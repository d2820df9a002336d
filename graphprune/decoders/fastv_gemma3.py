"""FastV's decoder stand-in for Gemma 3, whose outer model hands its decoder a dict of masks it built.

The pruned graphs build those masks themselves (``graphprune/masks.py``) from the model call's 2-D
``attention_mask`` and ``token_type_ids`` (read from ``current_call``), and keep every key of every layer: a
cache they fill has plain layers in place of HF's window-sized sliding ones. The original forward, for a call
with nothing to prune or a cache graphprune did not fill, gets the model's own masks, unchanged.
"""

from __future__ import annotations

import contextvars

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..graph_cache import capturing
from .base import call_argument, static_layers
from .fastv import FastVDecoder

# the masks argument of the current decoder call (the model's dict, or a tensor when called directly)
_call_masks: contextvars.ContextVar = contextvars.ContextVar("graphprune_gemma3_masks", default=None)


class Gemma3FastVDecoder(FastVDecoder):
    """``FastVDecoder`` on the 2-D mask and token types of the model's call, with plain cache layers."""

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

    def _prefill(self, inputs, cache, use_cache, unpadded=False):
        if use_cache and not (cache is not None and static_layers(cache)):
            cache = _plain_layers(cache)
        return super()._prefill(inputs, cache, use_cache, unpadded)


def _plain_layers(cache: DynamicCache | None) -> DynamicCache:
    """``cache`` (a new one if None) with a plain layer in place of each empty sliding-window layer."""
    if cache is None:
        return DynamicCache()
    for layer_idx, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:
            cache.layers[layer_idx] = DynamicLayer()
    return cache
