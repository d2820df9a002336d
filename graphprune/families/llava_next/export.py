"""The LLaVA-NeXT export family (FastV, arXiv 2403.06764): any-resolution vision, embedding, decoder graphs.

``vision.onnx`` runs the CLIP tower and projector on every crop (``pixel_values [crops, 3, H, W]``) and
gathers the image tokens' features from them with ``pack_index [image_tokens]``, which the host forms
from the image sizes (``anyres``: base crop, unpadded grid, the ``image_newline`` after every grid row,
as ``pack_image_features`` lays them out). ``embed.onnx`` places them at the image tokens; the decoder
graphs come from ``decoder_graphs``. Images differ in token count, so the budget is ``max_visual_tokens``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...export.anyres import crop_counts, crop_index, most_crops, pack_index
from ...export.decoder_graphs import FeatureEmbedding, embed_graph, example_decoders, fastv_details, token_budget
from ...export.family import DECODER_KEYS, as_numpy
from ...export.fastv_family import DEMO_LAYERS, FastVFamily
from ...export.graph_export import GraphExport
from ...runtime import optimize
from ..llava.export import TowerFeatures

VISUAL_INPUTS = ("pixel_values", "image_sizes")  # what OrtGenerator takes besides input_ids and attention_mask


class PackedFeatures(nn.Module):
    """``(pixel_values [crops, 3, H, W], pack_index [tokens]) -> [tokens, hidden]``: the tower and projector on
    every crop, then the rows that ``pack_index`` names (row ``crops x patches`` is ``image_newline``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        default_strategy = model.config.vision_feature_select_strategy == "default"
        self.crops = TowerFeatures(model, model.model.vision_tower, drop_class_token=default_strategy)
        self.image_newline = model.model.image_newline

    def forward(self, pixel_values, pack_index):
        rows = self.crops(pixel_values).flatten(0, 1)
        return torch.cat([rows, self.image_newline[None].to(rows.dtype)])[pack_index]


def anyres_layout(model: nn.Module) -> dict:
    """What the host needs to form ``pack_index``: the crop side in pixels, patches per crop side, the grid
    pinpoints; a ``ValueError`` for a tower whose crops do not give ``patch_grid²`` features each."""
    config, vision = model.config, model.config.vision_config
    if config.vision_feature_select_strategy != "default":
        raise ValueError(
            "graphprune exports LLaVA-NeXT with vision_feature_select_strategy='default' only (transformers packs "
            f"crops of patch_grid² features); got {config.vision_feature_select_strategy!r}"
        )
    return {
        "image_size": vision.image_size,
        "patch_grid": vision.image_size // vision.patch_size,
        "image_grid_pinpoints": [list(pinpoint) for pinpoint in config.image_grid_pinpoints],
    }


def packed_inputs(layout: dict, pixel_values, image_sizes) -> tuple:
    """``vision.onnx``'s inputs, ``(pixel_values [crops, 3, H, W], pack_index)``, for the processor's
    ``pixel_values`` (an array or a tensor) and ``image_sizes [images, 2]``."""
    pinpoints, side, image_sizes = layout["image_grid_pinpoints"], layout["image_size"], as_numpy(image_sizes, np.int64)
    if image_sizes.ndim != 2 or image_sizes.shape[1] != 2:
        raise ValueError(f"image_sizes must be [images, 2] (height, width); got shape {image_sizes.shape}")
    crops = crop_index(tuple(pixel_values.shape), crop_counts(image_sizes, pinpoints, side))
    stacked = pixel_values.reshape(-1, *pixel_values.shape[-3:])[crops]
    return stacked, pack_index(image_sizes, pinpoints, side, layout["patch_grid"])


class LlavaNextExport(FastVFamily):
    """LLaVA-NeXT (FastV): ``vision`` (crops, packed on the host's index), ``embed``, ``prefill``, ``decode``;
    images differ in token count, so the budget is ``max_visual_tokens`` per sample."""

    name, title, demo_names = "llava-next", "LLaVA-NeXT", ("llava-next",)
    graphs = ("vision", "embed", "prefill", "decode")
    budget = "max_visual_tokens"
    model_keys = (*DECODER_KEYS, "image_token_id", "image_size", "patch_grid", "image_grid_pinpoints", "most_crops")
    budget_keys = ("max_visual", "top_k")

    @classmethod
    def export_graphs(cls, model: nn.Module, state, example_inputs: dict, max_visual_tokens: int | None, prune: bool):
        input_ids, attention_mask = example_inputs["input_ids"], example_inputs["attention_mask"]
        pixel_values, image_sizes = example_inputs.get("pixel_values"), example_inputs.get("image_sizes")
        token_id = model.config.image_token_id
        if pixel_values is None or image_sizes is None or not bool((input_ids == token_id).any()):
            raise ValueError(
                "example_inputs must hold at least one image (pixel_values, image_sizes and image tokens in input_ids)"
            )
        layout = anyres_layout(model)
        max_visual = token_budget(input_ids, (token_id,), max_visual_tokens)
        vision, embed = PackedFeatures(model).eval(), FeatureEmbedding(model, (token_id,))
        crops, index = packed_inputs(layout, pixel_values, image_sizes)
        args = (crops, torch.from_numpy(index).to(input_ids.device))
        with torch.no_grad():
            features = vision(*args)
        decoders, top_k = example_decoders(
            model, state, embed, (input_ids, attention_mask, (features,)), max_visual, prune
        )
        graphs = [
            GraphExport(
                "vision",
                vision,
                args,
                ("pixel_values", "pack_index"),
                ("image_features",),
                {"pixel_values": {0: "crops"}, "pack_index": {0: "image_tokens"}},
            ),
            embed_graph(embed, input_ids, {"image_features": features}),
            *decoders,
        ]
        budget = {"max_visual": max_visual, "top_k": top_k}
        crops = most_crops(layout["image_grid_pinpoints"], layout["image_size"])
        return graphs, fastv_details(model, state, prune, budget, **layout, most_crops=crops)

    @classmethod
    def host_inputs(cls, runner, input_ids, mask, images: dict) -> tuple[dict, dict]:
        """Embeddings with every image's packed features placed (one vision run for all crops of the batch),
        visual mask and slots; nothing fixed."""
        cls.refuse_extra(images, VISUAL_INPUTS)
        cls.check_budget(runner.manifest, input_ids)
        pixel_values, image_sizes = images.get("pixel_values"), images.get("image_sizes")
        if (pixel_values is None) != (image_sizes is None):
            raise ValueError("pass pixel_values and image_sizes together, as the processor makes them")
        rows = np.zeros((0, runner.manifest.model["hidden_size"]), runner.dtype)
        if pixel_values is not None:
            pixels, index = packed_inputs(runner.manifest.model, as_numpy(pixel_values), image_sizes)
            rows = runner.run("vision", {"pixel_values": pixels.astype(runner.dtype), "pack_index": index})
            rows = rows["image_features"]
        features = {"image_features": cls.placeable(runner.manifest, input_ids, "image", rows, "image_sizes")}
        return cls.fastv_inputs(runner, input_ids, mask, features), {}

    @classmethod
    def trt_axes(cls, manifest, max_batch: int, max_text: int, max_new_tokens: int) -> dict:
        """opt is one image that fills the visual budget; an image is at least one crop's patches (its base
        crop), so a batch holds at most ``max_visual / patch_grid²`` images per sample."""
        model, max_visual = manifest.model, manifest.visual_budget["max_visual"]
        patches = model["patch_grid"] ** 2
        most_images = max(1, max_batch * max_visual // patches)
        return cls.text_axes(manifest, max_batch, max_text, max_new_tokens, max_visual) | {
            "crops": (2, model["most_crops"], most_images * model["most_crops"]),
            "image_tokens": (0, max_visual, max_batch * max_visual),
        }

    @classmethod
    def recipe_notes(cls, manifest) -> tuple[str, str, str]:
        pruning, _, cache = super().recipe_notes(manifest)
        visual = (
            f"at most {manifest.visual_budget['max_visual']} image tokens per sample (any-resolution images: "
            "`vision.onnx` takes every crop and a `pack_index` that the host forms from `image_sizes`, as "
            "`graphprune/export/anyres.py` does)"
        )
        return pruning, visual, cache

    @classmethod
    def demo(cls, method, name: str):
        from .testing import llava_next_inputs, tiny_llava_next

        model = optimize(tiny_llava_next(num_layers=DEMO_LAYERS), method)
        return model, llava_next_inputs(model, [(3, [(16, 32)], 4), (2, [(32, 32), (20, 12)], 3)])
