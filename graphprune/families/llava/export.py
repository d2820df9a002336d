"""The LLaVA export family: vision encoder + projector, token embedding, decoder prefill and decode step.

The decoder graphs (FastV, arXiv 2403.06764) come from ``decoder_graphs``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...export.decoder_graphs import FeatureEmbedding, embed_graph, example_decoders, fastv_details
from ...export.family import DECODER_KEYS
from ...export.fastv_family import DEMO_LAYERS, FastVFamily
from ...export.graph_export import GraphExport
from ...runtime import optimize


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


class LlavaExport(FastVFamily):
    """LLaVA (FastV): ``vision``, ``embed``, ``prefill``, ``decode``; the budget is ``max_images`` per sample."""

    name, title, demo_names = "llava", "LLaVA", ("llava",)
    graphs = ("vision", "embed", "prefill", "decode")
    budget = "max_images"
    towers = (("image", "vision", "pixel_values"),)
    model_keys = (*DECODER_KEYS, "image_token_id", "image_size")
    budget_keys = ("tokens_per_image", "max_images", "max_visual", "top_k")

    @classmethod
    def export_graphs(cls, model: nn.Module, state, example_inputs: dict, max_images: int | None, prune: bool):
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
        most_images = -(-visual_per_sample // tokens_per_image)
        max_images = most_images if max_images is None else max_images
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < most_images:
            raise ValueError(
                f"max_images must be an int >= {most_images} (the most images a sample of example_inputs holds); "
                f"got {max_images!r}"
            )
        max_visual = max_images * tokens_per_image
        example = (input_ids, attention_mask, (features.flatten(0, 1),))
        decoders, top_k = example_decoders(model, state, embed, example, max_visual, prune)
        graphs = [
            GraphExport(
                "vision",
                vision,
                (pixel_values,),
                ("pixel_values",),
                ("image_features",),
                {"pixel_values": {0: "images"}},
            ),
            embed_graph(embed, input_ids, {"image_features": features.flatten(0, 1)}),
            *decoders,
        ]
        budget = {
            "tokens_per_image": tokens_per_image,
            "max_images": max_images,
            "max_visual": max_visual,
            "top_k": top_k,
        }
        return graphs, fastv_details(model, state, prune, budget, image_size=model.config.vision_config.image_size)

    @classmethod
    def trt_axes(cls, manifest, max_batch: int, max_text: int, max_new_tokens: int) -> dict:
        """opt is one image; the budget is ``max_images`` images of ``tokens_per_image`` tokens."""
        budget = manifest.visual_budget
        per_image = budget["tokens_per_image"]
        return cls.text_axes(manifest, max_batch, max_text, max_new_tokens, per_image) | {
            "images": (1, 1, max_batch * budget["max_images"]),
            "image_tokens": (0, per_image, max_batch * budget["max_visual"]),
        }

    @classmethod
    def demo(cls, method, name: str):
        from .testing import llava_inputs, tiny_llava

        model = optimize(tiny_llava(num_layers=DEMO_LAYERS), method)
        return model, llava_inputs(model, [(5, 1, 4), (2, 1, 3)])
