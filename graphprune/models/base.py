"""What graphprune needs to know about a model family: the adapter contract."""

from __future__ import annotations

import functools
import operator
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..layout import DecoderLayout

if TYPE_CHECKING:
    from ..families.record import Family


def self_attention_layout(
    decoder: nn.Module, position_rows: int = 0, attention_layer: int = 0, deepstack_layers: int = 0
) -> DecoderLayout:
    """The layout of a Llama-style decoder: ``layers[i].self_attn`` with ``q_proj`` and ``k_proj``; head size
    and scaling read from layer ``attention_layer``."""
    attention = decoder.layers[attention_layer].self_attn
    return DecoderLayout(
        layers="decoder.layers",
        attention="self_attn",
        query_proj="q_proj",
        key_proj="k_proj",
        num_layers=len(decoder.layers),
        num_heads=decoder.config.num_attention_heads,
        num_kv_heads=decoder.config.num_key_value_heads,
        head_dim=attention.head_dim,
        scaling=float(attention.scaling),
        position_rows=position_rows,
        deepstack_layers=deepstack_layers,
    )


class ModelAdapter:
    """One model family: where its decoder is, how its positions are formed, which token ids are visual. Made for
    the family's record (``graphprune/families/<name>/__init__.py``), which says its name, classes and methods."""

    def __init__(self, family: Family):
        self.family = family

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def model_classes(self) -> tuple[str, ...]:
        """The transformers class names this adapter accepts."""
        return self.family.model_classes

    @property
    def methods(self) -> tuple[type, ...]:
        """The pruning methods that fit this family."""
        return self.family.methods

    @property
    def export_refusal(self) -> str:
        """Why ``gp.export`` cannot export the family yet, where it has a reason to give."""
        return self.family.export_refusal

    def decoder(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def layout(self, model: nn.Module) -> DecoderLayout:
        raise NotImplementedError

    def stand_in(self, default: type) -> type:
        """The decoder stand-in class to use in place of the method's ``default`` (``graphprune/decoders/``)."""
        return default

    def visual_token_ids(self, model: nn.Module) -> tuple[int, ...]:
        """The placeholder ids whose positions the model fills with image or video features."""
        raise NotImplementedError

    def visual_mask(
        self, model: nn.Module, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None
    ) -> torch.Tensor | None:
        """``[B, N]`` bool, True at visual positions; None when the call holds no token ids or embeddings.

        From ``input_ids`` when given; otherwise the positions whose embedding is a placeholder's.
        """
        if input_ids is not None:  # compared with each id: no tensor of ids to copy to the device
            return functools.reduce(operator.or_, (input_ids == i for i in self.visual_token_ids(model)))
        if inputs_embeds is None:
            return None
        token_ids = torch.tensor(self.visual_token_ids(model))
        placeholders = model.get_input_embeddings()(token_ids.to(inputs_embeds.device))
        return (inputs_embeds[:, :, None, :] == placeholders).all(dim=-1).any(dim=-1)
