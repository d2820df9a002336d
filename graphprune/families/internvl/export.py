"""The InternVL export family (InternVL3, FastV, arXiv 2403.06764): tile tower, embedding, decoder graphs.

``vision.onnx`` is InternVL's ``get_image_features`` (InternViT, pixel shuffle, projector): ``pixel_values
[tiles, 3, H, W] -> [tiles, tokens_per_tile, hidden]``, every tile of every image as the processor makes them.
``embed.onnx`` places the features at image tokens in order; the budget is ``max_visual_tokens`` per sample,
as the tiles per image vary. The decoder graphs come from ``decoder_graphs``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...export.decoder_graphs import FeatureEmbedding, embed_graph, example_decoders, fastv_details, token_budget
from ...export.family import DECODER_KEYS
from ...export.fastv_family import DEMO_LAYERS, FastVFamily
from ...export.graph_export import GraphExport
from ...runtime import optimize


class _Tiles(nn.Module):
    """InternVL's ``get_image_features`` with the config's feature layer and select strategy."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.model
        self.image_size = model.config.vision_config.image_size[0]

    def forward(self, pixel_values):
        config = self.model.config
        return self.model.get_image_features(
            pixel_values,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        ).pooler_output


class InternVLExport(FastVFamily):
    """InternVL (FastV): ``vision``, ``embed``, ``prefill``, ``decode``; the budget is ``max_visual_tokens``."""

    name, title, demo_names = "internvl", "InternVL", ("internvl",)
    graphs = ("vision", "embed", "prefill", "decode")
    budget = "max_visual_tokens"
    towers = (("image", "vision", "pixel_values"),)
    model_keys = (*DECODER_KEYS, "image_token_id", "tokens_per_tile")
    budget_keys = ("max_visual", "top_k")

    @classmethod
    def export_graphs(cls, model: nn.Module, state, example_inputs: dict, max_visual_tokens: int | None, prune: bool):
        config = model.config
        input_ids, attention_mask = example_inputs["input_ids"], example_inputs["attention_mask"]
        pixel_values = cls.tiles(example_inputs)
        if pixel_values is None or not bool((input_ids == config.image_token_id).any()):
            raise ValueError("example_inputs must hold at least one image (pixel_values and image tokens in input_ids)")
        max_visual = token_budget(input_ids, (config.image_token_id,), max_visual_tokens)
        tiles = cls.tower(model).eval()
        embed = FeatureEmbedding(model, (config.image_token_id,))
        with torch.no_grad():
            features = tiles(pixel_values)
        example = (input_ids, attention_mask, (features.flatten(0, 1),))
        decoders, top_k = example_decoders(model, state, embed, example, max_visual, prune)
        graphs = [
            GraphExport(
                "vision", tiles, (pixel_values,), ("pixel_values",), ("image_features",), {"pixel_values": {0: "tiles"}}
            ),
            embed_graph(embed, input_ids, {"image_features": features.flatten(0, 1)}),
            *decoders,
        ]
        budget = {"max_visual": max_visual, "top_k": top_k}
        side = tiles.image_size
        return graphs, fastv_details(model, state, prune, budget, image_size=side, tokens_per_tile=features.shape[1])

    @classmethod
    def tower(cls, model: nn.Module) -> nn.Module:
        """``pixel_values [tiles, 3, H, W] -> [tiles, tokens_per_tile, hidden]``, with an ``image_size``."""
        return _Tiles(model)

    @classmethod
    def tiles(cls, inputs: dict) -> torch.Tensor | None:
        """The tiles of ``inputs`` as the tower takes them."""
        return inputs.get("pixel_values")

    @classmethod
    def trt_axes(cls, manifest, max_batch: int, max_text: int, max_new_tokens: int) -> dict:
        """opt is one tile; the tower takes up to the budget's tiles per batch."""
        max_visual, per_tile = manifest.visual_budget["max_visual"], manifest.model["tokens_per_tile"]
        return cls.text_axes(manifest, max_batch, max_text, max_new_tokens, min(per_tile, max_visual)) | {
            "tiles": (1, 1, max(1, max_batch * max_visual // per_tile)),
            "image_tokens": (0, per_tile, max_batch * max_visual),
        }

    @classmethod
    def demo(cls, method, name: str):
        from .testing import internvl_inputs, tiny_internvl

        model = optimize(tiny_internvl(num_layers=DEMO_LAYERS), method)
        return model, internvl_inputs(model, [(3, [2], 4), (2, [1, 1], 3)])
