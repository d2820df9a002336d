"""The files of a LLaVA export: vision encoder + projector, token embedding, decoder prefill and decode step.

The decoder graphs (FastV, arXiv 2403.06764) come from ``decoder_graphs``.
"""

from __future__ import annotations

import torch
from torch import nn

from .decoder_graphs import (
    NEW_TOKENS,
    FeatureEmbedding,
    decoder_graphs,
    embed_graph,
    generation_positions,
    model_details,
)
from .graph_export import GraphExport


class TowerFeatures(nn.Module):
    """A CLIP-style tower and the projector, as LLaVA's ``get_image_features``: ``pixel_values -> [n, T, hidden]``
    from the configured feature layer(s), without the class token if ``drop_class_token``."""

    def __init__(self, model: nn.Module, tower: nn.Module, drop_class_token: bool):
        super().__init__()
        self.tower, self.projector = tower, model.model.multi_modal_projector
        self.layers = model.config.vision_feature_layer
        self.drop_class_token = drop_class_token

    def forward(self, pixel_values):
        hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states
        layers = [self.layers] if isinstance(self.layers, int) else self.layers
        selected = [hidden[i][:, 1:] if self.drop_class_token else hidden[i] for i in layers]
        return self.projector(torch.cat(selected, dim=-1))


def llava(model: nn.Module, state, example_inputs: dict, max_images: int | None, prune: bool):
    """The graphs of a LLaVA export and what the manifest records about the model; see ``export.onnx``."""
    input_ids, attention_mask = example_inputs["input_ids"], example_inputs["attention_mask"]
    pixel_values = example_inputs.get("pixel_values")
    if pixel_values is None or not bool((input_ids == model.config.image_token_id).any()):
        raise ValueError("example_inputs must hold at least one image (pixel_values and image tokens in input_ids)")
    visual_per_sample = int((input_ids == model.config.image_token_id).sum(-1).max())
    default_strategy = model.config.vision_feature_select_strategy == "default"
    vision = TowerFeatures(model, model.model.vision_tower, drop_class_token=default_strategy)
    embed = FeatureEmbedding(model, (model.config.image_token_id,))
    with torch.no_grad():
        features = vision(pixel_values)
        tokens_per_image = features.shape[1]
        embeds, visual = embed(input_ids, features.flatten(0, 1))
    most_images = -(-visual_per_sample // tokens_per_image)
    max_images = most_images if max_images is None else max_images
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < most_images:
        raise ValueError(
            f"max_images must be an int >= {most_images} (the most images a sample of example_inputs holds); "
            f"got {max_images!r}"
        )
    max_visual = max_images * tokens_per_image
    text_token = (model.config.image_token_id + 1) % model.config.text_config.vocab_size
    new_ids = torch.full((input_ids.shape[0], NEW_TOKENS), text_token, device=input_ids.device)
    with torch.no_grad():
        new_embeds, _ = embed(new_ids, features.new_zeros(0, features.shape[-1]))
    decode_mask = torch.cat([attention_mask, torch.ones_like(new_ids)], dim=1)
    prompt = (embeds, attention_mask, generation_positions(attention_mask), visual)
    step = (new_embeds, generation_positions(decode_mask)[:, -NEW_TOKENS:])
    decoders, top_k = decoder_graphs(model, state, prompt, step, max_visual, prune)
    graphs = [
        GraphExport(
            "vision", vision, (pixel_values,), ("pixel_values",), ("image_features",), {"pixel_values": {0: "images"}}
        ),
        embed_graph(embed, input_ids, {"image_features": features.flatten(0, 1)}),
        *decoders,
    ]
    details = {
        "family": "llava",
        "model": model_details(model, state, image_size=model.config.vision_config.image_size),
        "visual_budget": {
            "tokens_per_image": tokens_per_image,
            "max_images": max_images,
            "max_visual": max_visual,
            "top_k": top_k,
        },
        "first_pruned_layer": state.method.k if prune else None,
    }
    return graphs, details
