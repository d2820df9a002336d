"""The LLaVA-OneVision export family (FastV, arXiv 2403.06764): one vision graph for images and videos, embedding,
decoder graphs.

``vision.onnx`` runs the SigLIP tower and projector on every crop or video frame (``pixel_values [crops, 3,
H, W]``) and blends four of their rows per token (``pack_index [tokens, 4]``, ``pack_weights [tokens, 4]``),
which the host forms (``anyres``): an image's base crop, its unpadded grid shrunk bilinearly to
``anyres_max_N`` with a newline after every row (one crop and a newline for each of several images in a
prompt); a video's frames pooled bilinearly to half a side, then one newline. The host runs it once for
the images and once for the videos; ``embed.onnx`` places both, and FastV ranks them together.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from torch import nn

from ...export.anyres import blend_index, crop_counts, crop_index, most_crops, pooled_index
from ...export.decoder_graphs import FeatureEmbedding, embed_graph, example_decoders, fastv_details, token_budget
from ...export.family import DECODER_KEYS, as_numpy
from ...export.fastv_family import DEMO_LAYERS, FastVFamily
from ...export.graph_export import GraphExport
from ...runtime import optimize
from ..llava.export import TowerFeatures

VISUAL_INPUTS = ("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos")


class BlendedFeatures(nn.Module):
    """``(pixel_values [crops, 3, H, W], pack_index [tokens, 4], pack_weights [tokens, 4]) -> [tokens, hidden]``:
    the tower and projector on every crop, then per token its four rows blended as torch's bilinear
    ``interpolate`` does (left/right first, then top/bottom); row ``crops x patches`` is ``image_newline``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        default_strategy = model.config.vision_feature_select_strategy == "default"
        self.crops = TowerFeatures(model, model.model.vision_tower, drop_class_token=default_strategy)
        self.image_newline = model.model.image_newline

    def forward(self, pixel_values, pack_index, pack_weights):
        rows = self.crops(pixel_values).flatten(0, 1)
        taps = torch.cat([rows, self.image_newline[None].to(rows.dtype)])[pack_index]
        weights = pack_weights[..., None]
        top = taps[:, 0] * weights[:, 2] + taps[:, 1] * weights[:, 3]
        bottom = taps[:, 2] * weights[:, 2] + taps[:, 3] * weights[:, 3]
        return top * weights[:, 0] + bottom * weights[:, 1]


def onevision_layout(model: nn.Module) -> dict:
    """What the host needs to form the blend indices: crop side in pixels, patches per crop side, grid
    pinpoints, ``anyres_max_N``'s N; a ``ValueError`` for a ``vision_aspect_ratio`` transformers cannot read."""
    config, vision = model.config, model.config.vision_config
    if not re.fullmatch(r"anyres_max_\d+", config.vision_aspect_ratio):
        raise ValueError(
            f"graphprune exports LLaVA-OneVision with vision_aspect_ratio='anyres_max_N' (as transformers reads it); "
            f"got {config.vision_aspect_ratio!r}"
        )
    return {
        "image_size": vision.image_size,
        "patch_grid": vision.image_size // vision.patch_size,
        "image_grid_pinpoints": [list(pinpoint) for pinpoint in config.image_grid_pinpoints],
        "max_crops": int(config.vision_aspect_ratio.removeprefix("anyres_max_")),
    }


def image_inputs(layout: dict, pixel_values, image_sizes, batch_num_images) -> tuple:
    """``vision.onnx``'s inputs for the processor's images: ``(pixel_values [crops, 3, H, W], pack_index,
    pack_weights)``; a sample's only image is any-resolution, each of several one crop (``batch_num_images``;
    None: every image any-resolution, as transformers takes it)."""
    pinpoints, side, sizes = layout["image_grid_pinpoints"], layout["image_size"], as_numpy(image_sizes, np.int64)
    if sizes.ndim != 2 or sizes.shape[1] != 2:
        raise ValueError(f"image_sizes must be [images, 2] (height, width); got shape {sizes.shape}")
    per_sample = [1] * len(sizes) if batch_num_images is None else as_numpy(batch_num_images, np.int64).tolist()
    if sum(per_sample) != len(sizes):
        raise ValueError(f"batch_num_images must add up to the {len(sizes)} images of image_sizes; got {per_sample}")
    patched = [count == 1 for count in per_sample for _ in range(count)]
    crops = crop_index(tuple(pixel_values.shape), crop_counts(sizes, pinpoints, side, patched))
    stacked = pixel_values.reshape(-1, *pixel_values.shape[-3:])[crops]
    return stacked, *blend_index(sizes, patched, pinpoints, side, layout["patch_grid"], layout["max_crops"])


def video_inputs(layout: dict, pixel_values_videos) -> tuple:
    """``vision.onnx``'s inputs for ``pixel_values_videos [videos, frames, 3, H, W]``: every frame, pooled."""
    if pixel_values_videos.ndim != 5:
        raise ValueError(
            f"pixel_values_videos must be [videos, frames, 3, H, W]; got shape {tuple(pixel_values_videos.shape)}"
        )
    videos, frames = pixel_values_videos.shape[:2]
    return pixel_values_videos.reshape(-1, *pixel_values_videos.shape[-3:]), *pooled_index(
        videos, frames, layout["patch_grid"]
    )


def vision_args(inputs: tuple, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``image_inputs`` or ``video_inputs`` (pixels a tensor) as ``BlendedFeatures``' arguments, weights in
    ``dtype``."""
    pixels, index, weights = inputs
    return pixels, torch.from_numpy(index).to(device), torch.from_numpy(weights).to(device, dtype)


class LlavaOnevisionExport(FastVFamily):
    """LLaVA-OneVision (FastV): ``vision`` (crops or frames, blended on the host's index), ``embed``,
    ``prefill``, ``decode``; images and videos differ in token count, so the budget is ``max_visual_tokens``."""

    name, title, demo_names = "llava-onevision", "LLaVA-OneVision", ("llava-onevision",)
    graphs = ("vision", "embed", "prefill", "decode")
    budget = "max_visual_tokens"
    model_keys = (
        *DECODER_KEYS,
        *("image_token_id", "video_token_id", "image_size", "patch_grid", "image_grid_pinpoints", "max_crops"),
        "most_crops",
    )
    budget_keys = ("max_visual", "top_k")

    @classmethod
    def export_graphs(cls, model: nn.Module, state, example_inputs: dict, max_visual_tokens: int | None, prune: bool):
        config = model.config
        input_ids, attention_mask = example_inputs["input_ids"], example_inputs["attention_mask"]
        pixel_values, videos = example_inputs.get("pixel_values"), example_inputs.get("pixel_values_videos")
        visual_ids = (config.image_token_id, config.video_token_id)
        if (pixel_values is None and videos is None) or not bool(
            torch.isin(input_ids, torch.tensor(visual_ids, device=input_ids.device)).any()
        ):
            raise ValueError(
                "example_inputs must hold at least one image or video (pixel_values and image_sizes, or "
                "pixel_values_videos, and their tokens in input_ids)"
            )
        if pixel_values is not None and example_inputs.get("image_sizes") is None:
            raise ValueError("example_inputs must hold image_sizes with pixel_values, as the processor makes them")
        layout = onevision_layout(model)
        max_visual = token_budget(input_ids, visual_ids, max_visual_tokens)
        vision, embed = BlendedFeatures(model).eval(), FeatureEmbedding(model, visual_ids)
        examples = []
        if pixel_values is not None:
            examples.append(
                image_inputs(
                    layout, pixel_values, example_inputs.get("image_sizes"), example_inputs.get("batch_num_images")
                )
            )
        if videos is not None:
            examples.append(video_inputs(layout, videos))
        args = [vision_args(example, input_ids.device, model.dtype) for example in examples]
        with torch.no_grad():
            per_crop = vision.crops(args[0][0][:1]).shape[1]
            if per_crop != layout["patch_grid"] ** 2:
                raise ValueError(
                    "graphprune exports LLaVA-OneVision towers whose crops give patch_grid² = "
                    f"{layout['patch_grid'] ** 2} features each (no class token, or it dropped); got {per_crop}"
                )
            features = [vision(*example) for example in args]
        empty = features[0][:0]
        image_rows = features[0] if pixel_values is not None else empty
        video_rows = features[-1] if videos is not None else empty
        example = (input_ids, attention_mask, (image_rows, video_rows))
        decoders, top_k = example_decoders(model, state, embed, example, max_visual, prune)
        packed = {0: "packed_tokens"}
        graphs = [
            GraphExport(
                "vision",
                vision,
                args[0],
                ("pixel_values", "pack_index", "pack_weights"),
                ("features",),
                {"pixel_values": {0: "crops"}, "pack_index": packed, "pack_weights": packed},
            ),
            embed_graph(embed, input_ids, {"image_features": image_rows, "video_features": video_rows}),
            *decoders,
        ]
        budget = {"max_visual": max_visual, "top_k": top_k}
        crops = most_crops(layout["image_grid_pinpoints"], layout["image_size"])
        return graphs, fastv_details(model, state, prune, budget, **layout, most_crops=crops)

    @classmethod
    def host_inputs(cls, runner, input_ids, mask, images: dict) -> tuple[dict, dict]:
        """Embeddings with the images' and videos' features placed (one vision run for all the images' crops,
        one for all the videos' frames), visual mask and slots; nothing fixed."""
        cls.refuse_extra(images, VISUAL_INPUTS)
        cls.check_budget(runner.manifest, input_ids)
        layout = runner.manifest.model
        pixel_values, image_sizes = images.get("pixel_values"), images.get("image_sizes")
        if (pixel_values is None) != (image_sizes is None):
            raise ValueError("pass pixel_values and image_sizes together, as the processor makes them")
        runs = {"image": None, "video": None}
        if pixel_values is not None:
            runs["image"] = image_inputs(layout, as_numpy(pixel_values), image_sizes, images.get("batch_num_images"))
        if images.get("pixel_values_videos") is not None:
            runs["video"] = video_inputs(layout, as_numpy(images["pixel_values_videos"]))
        features = {}
        for kind, source in (("image", "image_sizes"), ("video", "pixel_values_videos")):
            rows = np.zeros((0, layout["hidden_size"]), runner.dtype)
            if runs[kind] is not None:
                pixels, index, weights = runs[kind]
                values = {"pixel_values": pixels.astype(runner.dtype), "pack_index": index}
                rows = runner.run("vision", values | {"pack_weights": weights.astype(runner.dtype)})["features"]
            features[f"{kind}_features"] = cls.placeable(runner.manifest, input_ids, kind, rows, source)
        return cls.fastv_inputs(runner, input_ids, mask, features), {}

    @classmethod
    def trt_axes(cls, manifest, max_batch: int, max_text: int, max_new_tokens: int) -> dict:
        """opt is one image that fills the visual budget; an image is at least one crop and a newline, a video
        frame ``ceil(patch_grid / 2)²`` tokens, which bounds the crops (or frames) of a batch."""
        model, max_visual = manifest.model, manifest.visual_budget["max_visual"]
        grid = model["patch_grid"]
        most_images = max(1, max_batch * max_visual // (grid * grid + 1))
        most_frames = max(1, max_batch * max_visual // math.ceil(grid / 2) ** 2)
        tokens = (0, max_visual, max_batch * max_visual)
        return cls.text_axes(manifest, max_batch, max_text, max_new_tokens, max_visual) | {
            "crops": (1, model["most_crops"], max(most_images * model["most_crops"], most_frames)),
            "packed_tokens": (1, max_visual, max_batch * max_visual),
            "image_tokens": tokens,
            "video_tokens": tokens,
        }

    @classmethod
    def recipe_notes(cls, manifest) -> tuple[str, str, str]:
        pruning, _, cache = super().recipe_notes(manifest)
        visual = (
            f"at most {manifest.visual_budget['max_visual']} visual tokens per sample (any-resolution images and "
            "pooled video frames: `vision.onnx` takes every crop or frame and a `pack_index`/`pack_weights` that "
            "the host forms from `image_sizes`, `batch_num_images` and the video shape, as "
            "`graphprune/export/anyres.py` does)"
        )
        return pruning, visual, cache

    @classmethod
    def demo(cls, method, name: str):
        from .testing import llava_onevision_inputs, tiny_llava_onevision

        model = optimize(tiny_llava_onevision(num_layers=DEMO_LAYERS), method)
        return model, llava_onevision_inputs(model, [(3, [(16, 32)], 0, 4), (2, [(32, 32), (20, 12)], 1, 3)])
