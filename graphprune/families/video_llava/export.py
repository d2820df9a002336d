"""The Video-LLaVA export family (FastV, arXiv 2403.06764): image tower, video tower, embedding, decoder graphs.

``vision.onnx`` is the image tower and projector (``pixel_values_images [images, 3, H, W] ->
[images, patches, hidden]``, the class token dropped as ``get_image_features`` does), ``video.onnx``
the video tower and projector (``pixel_values_videos [videos, frames, 3, H, W] -> [videos,
frames·(patches + 1), hidden]``, class tokens kept as ``get_video_features`` does). ``embed.onnx``
places image features at image tokens and video features at video tokens; both count as visual
for FastV, which ranks them together. The decoder graphs come from ``decoder_graphs``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...export.decoder_graphs import FeatureEmbedding, embed_graph, example_decoders, fastv_details, token_budget
from ...export.family import DECODER_KEYS
from ...export.fastv_family import DEMO_LAYERS, FastVFamily
from ...export.graph_export import GraphExport
from ...runtime import optimize
from ..llava.export import TowerFeatures

VIDEO_FRAMES = 8  # frames per video, as Video-LLaVA's processor samples them (an example without a video)


class _Videos(nn.Module):
    """Video-LLaVA's video tower and projector, as ``get_video_features``: every frame through the tower,
    class tokens kept."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.frames = TowerFeatures(model, model.model.video_tower, drop_class_token=False)

    def forward(self, pixel_values_videos):
        videos, frames = pixel_values_videos.shape[:2]
        return self.frames(pixel_values_videos.flatten(0, 1)).unflatten(0, (videos, frames)).flatten(1, 2)


def _example_pixels(example_inputs: dict, name: str, shape: tuple[int, ...], dtype, device) -> torch.Tensor:
    """The example's pixels, or random ones of ``shape`` (two of them: 0 and 1 would specialise the axis)
    when the example has none, so that both towers are exported and validated."""
    pixels = example_inputs.get(name)
    if pixels is not None:
        return pixels
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


class VideoLlavaExport(FastVFamily):
    """Video-LLaVA (FastV): ``vision``, ``video``, ``embed``, ``prefill``, ``decode``; images and videos differ
    in token count, so the budget is ``max_visual_tokens`` per sample."""

    name, title, demo_names = "video-llava", "Video-LLaVA", ("video-llava",)
    graphs = ("vision", "video", "embed", "prefill", "decode")
    budget = "max_visual_tokens"
    towers = (("image", "vision", "pixel_values_images"), ("video", "video", "pixel_values_videos"))
    model_keys = (*DECODER_KEYS, "image_token_id", "video_token_id", "tokens_per_image", "tokens_per_video")
    budget_keys = ("max_visual", "top_k")

    @classmethod
    def export_graphs(cls, model: nn.Module, state, example_inputs: dict, max_visual_tokens: int | None, prune: bool):
        config = model.config
        input_ids, attention_mask = example_inputs["input_ids"], example_inputs["attention_mask"]
        visual_ids = (config.image_token_id, config.video_token_id)
        if not bool(torch.isin(input_ids, torch.tensor(visual_ids, device=input_ids.device)).any()):
            raise ValueError(
                "example_inputs must hold at least one image or video (pixel_values_images or pixel_values_videos, "
                "and their tokens in input_ids)"
            )
        max_visual = token_budget(input_ids, visual_ids, max_visual_tokens)
        side, dtype, device = config.vision_config.image_size, model.dtype, input_ids.device
        images = _example_pixels(example_inputs, "pixel_values_images", (2, 3, side, side), dtype, device)
        videos = _example_pixels(example_inputs, "pixel_values_videos", (2, VIDEO_FRAMES, 3, side, side), dtype, device)
        default_strategy = config.vision_feature_select_strategy == "default"
        image_tower = TowerFeatures(model, model.model.image_tower, drop_class_token=default_strategy).eval()
        video_tower = _Videos(model).eval()
        embed = FeatureEmbedding(model, visual_ids)
        with torch.no_grad():
            image_features, video_features = image_tower(images), video_tower(videos)
        used = tuple(
            features.flatten(0, 1)
            if example_inputs.get(name) is not None
            else features.new_zeros(0, features.shape[-1])
            for name, features in (("pixel_values_images", image_features), ("pixel_values_videos", video_features))
        )
        decoders, top_k = example_decoders(model, state, embed, (input_ids, attention_mask, used), max_visual, prune)
        graphs = [
            GraphExport(
                "vision",
                image_tower,
                (images,),
                ("pixel_values_images",),
                ("image_features",),
                {"pixel_values_images": {0: "images"}},
            ),
            GraphExport(
                "video",
                video_tower,
                (videos,),
                ("pixel_values_videos",),
                ("video_features",),
                {"pixel_values_videos": {0: "videos"}},
            ),
            embed_graph(
                embed,
                input_ids,
                {"image_features": image_features.flatten(0, 1), "video_features": video_features.flatten(0, 1)},
            ),
            *decoders,
        ]
        details = fastv_details(
            model,
            state,
            prune,
            {"max_visual": max_visual, "top_k": top_k},
            image_size=side,
            frames=videos.shape[1],
            tokens_per_image=image_features.shape[1],
            tokens_per_video=video_features.shape[1],
        )
        return graphs, details

    @classmethod
    def trt_axes(cls, manifest, max_batch: int, max_text: int, max_new_tokens: int) -> dict:
        """opt is one video (or the budget, if smaller); the towers take up to the budget's images or videos
        per batch."""
        max_visual, model = manifest.visual_budget["max_visual"], manifest.model
        per_image, per_video = model["tokens_per_image"], model["tokens_per_video"]
        return cls.text_axes(manifest, max_batch, max_text, max_new_tokens, min(per_video, max_visual)) | {
            "images": (1, 1, max(1, max_batch * max_visual // per_image)),
            "videos": (1, 1, max(1, max_batch * max_visual // per_video)),
            "image_tokens": (0, per_image, max_batch * max_visual),
            "video_tokens": (0, per_video, max_batch * max_visual),
        }

    @classmethod
    def demo(cls, method, name: str):
        from .testing import tiny_video_llava, video_llava_inputs

        model = optimize(tiny_video_llava(num_layers=DEMO_LAYERS), method)
        return model, video_llava_inputs(model, [(3, 1, 1, 4), (2, 0, 1, 3)])
