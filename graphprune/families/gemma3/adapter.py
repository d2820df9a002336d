"""Gemma 3 (``Gemma3ForConditionalGeneration``): FastV with Gemma 3's two attention rules kept.

Gemma 3's outer model builds its decoder's masks itself: a dict of 4-D ``full_attention`` / ``sliding_attention``
masks in which each image's tokens attend each other bidirectionally (from ``token_type_ids``) and sliding layers
see a window of ``sliding_window`` indices. graphprune's graphs build the same masks inside the captured decoder
(``graphprune/masks.py``, from the 2-D padding mask and ``token_type_ids`` of the model's call), so the FastV pass
gathers them to the kept positions on both axes (sliding distances stay on original indices), ranks with layer
``k - 1``'s own mask (window included), and its cache keeps every key of every layer: a decode step's masks hide
keys a window back by original index, as HF's window-sized sliding cache does. The decoder stand-in is
``graphprune/decoders/fastv_gemma3.py``. Attention logit soft-capping and bidirectional text are refused.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ...models.base import DecoderLayout, ModelAdapter, self_attention_layout


class Gemma3Adapter(ModelAdapter):
    """Decoder ``model.model.language_model``; 1-D positions; visual: ``image_token_id``; graphprune's masks."""

    def decoder(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def layout(self, model: nn.Module) -> DecoderLayout:
        decoder = self.decoder(model)
        config = decoder.config
        for name in ("attn_logit_softcapping", "use_bidirectional_attention"):
            if getattr(config, name, None):
                raise ValueError(
                    f"graphprune does not prune Gemma 3 with {name}={getattr(config, name)!r}: FastV's ranking and "
                    f"masks model plain causal attention logits; accepted: {name} unset"
                )
        sliding = "sliding_attention" in config.layer_types
        return dataclasses.replace(
            self_attention_layout(decoder), image_blocks=True, sliding_window=config.sliding_window if sliding else None
        )

    def visual_token_ids(self, model: nn.Module) -> tuple[int, ...]:
        return (model.config.image_token_id,)

    def stand_in(self, default: type) -> type:
        from ...decoders.fastv_gemma3 import Gemma3FastVDecoder  # on use: adapters load without the decoders

        return Gemma3FastVDecoder
