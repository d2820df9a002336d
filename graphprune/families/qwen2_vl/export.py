"""The Qwen2-VL and Qwen2.5-VL export family (FastV, arXiv 2403.06764): vision encoder + merger, embedding,
decoder graphs, and the host-side inputs ONNX Runtime needs.

``vision.onnx`` runs one attention segment (``qwen2_vl_vision``); ``embed.onnx`` places image
features at image tokens and video features at video tokens. The decoder graphs (``decoder_graphs``)
take M-RoPE position ids ``[3, B, N]``, which the host computes as HF's ``get_rope_index`` does
(``mrope``); a new token continues each row from the last prompt position, as HF ``generate`` does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ...export.decoder_graphs import FeatureEmbedding, embed_graph, example_decoders, fastv_details, token_budget
from ...export.family import DECODER_KEYS, as_numpy
from ...export.fastv_family import DEMO_LAYERS, FastVFamily
from ...export.graph_export import GraphExport
from ...export.mrope import VIDEO, VIDEO_SECONDS, mrope_positions, prompt_positions, token_types, video_intervals
from ...export.qwen2_vl_vision import is_windowed, vision_graph, vision_segments
from ...runtime import optimize

VERSIONS = {"qwen2-vl": "2", "qwen2.5-vl": "2.5"}  # demo names: the tiny model's version
VISUAL_INPUTS = (  # what OrtGenerator takes besides input_ids and attention_mask
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
    "mm_token_type_ids",
)
VISION_AXES = {
    "pixel_values": "patches",
    "vision_position_ids": "patches",
    "window_index": "blocks",
    "window_ids": "patches",
}


def _video_seconds(model: nn.Module, merge: int, tokens_per_second: int) -> str:
    """The ``VIDEO_SECONDS`` rule of the model's own ``get_rope_index``, found by running it on a probe video
    (3 temporal groups, 1.6 s each) where the rules differ; a ``ValueError`` when none reproduces it."""
    grids, seconds, tokens = np.array([[3, merge, merge]]), np.array([1.6], np.float32), 3
    input_ids = torch.full((1, tokens), model.config.video_token_id)
    expected, _ = model.model.get_rope_index(
        input_ids,
        torch.full((1, tokens), VIDEO),
        None,
        torch.from_numpy(grids),
        second_per_grid_ts=torch.from_numpy(seconds),
        attention_mask=torch.ones(1, tokens, dtype=torch.long),
    )
    for rule in VIDEO_SECONDS:
        intervals = video_intervals(tokens_per_second, seconds, 1, rule)
        actual = mrope_positions(
            np.full((1, tokens), VIDEO), np.ones((1, tokens)), np.zeros((0, 3)), grids, merge, intervals
        )
        if np.array_equal(actual, expected.cpu().numpy()):
            return rule
    raise ValueError(
        "graphprune cannot reproduce this transformers version's Qwen2.5-VL get_rope_index video positions (neither "
        f"of the rules {VIDEO_SECONDS} of transformers 5.17-5.23); install transformers>=5.17,<5.24 to export"
    )


def _features(vision: nn.Module, segments, device) -> torch.Tensor:
    """The features of every image (or video) in order: one vision run per segment."""
    with torch.no_grad():
        return torch.cat(
            [vision(*(torch.as_tensor(value, device=device) for value in feeds.values())) for feeds in segments]
        )


def _at_least_two_rows(features: torch.Tensor) -> torch.Tensor:
    """Export examples need a size of 2 or more on a dynamic axis (0 and 1 are specialised); extra rows go unused."""
    return torch.cat([features, features.new_zeros(max(2 - features.shape[0], 0), *features.shape[1:])])


def vision_layout(model: nn.Module) -> dict:
    """What the host needs to cut segments and form positions: the merge size, Qwen2.5-VL's window
    (merge blocks per side), tokens per second of video and ``video_seconds``, the installed transformers'
    ``VIDEO_SECONDS`` rule (both None for Qwen2-VL)."""
    vision = model.config.vision_config
    merge, windowed = vision.spatial_merge_size, is_windowed(model)
    tokens_per_second = vision.tokens_per_second if windowed else None
    return {
        "spatial_merge_size": merge,
        "vision_window": vision.window_size // merge // vision.patch_size if windowed else None,
        "tokens_per_second": tokens_per_second,
        "video_seconds": _video_seconds(model, merge, tokens_per_second) if windowed else None,
    }


class Qwen2VLExport(FastVFamily):
    """Qwen2-VL and Qwen2.5-VL (FastV): ``vision`` (one segment a run), ``embed``, ``prefill``, ``decode``;
    images differ in token count, so the budget is ``max_visual_tokens`` per sample."""

    name, title, demo_names = "qwen2-vl", "Qwen2-VL", tuple(VERSIONS)
    graphs = ("vision", "embed", "prefill", "decode")
    budget = "max_visual_tokens"
    model_keys = (*DECODER_KEYS, "image_token_id", "video_token_id", "spatial_merge_size")
    budget_keys = ("max_visual", "top_k")
    visual_inputs, vision_axes = VISUAL_INPUTS, VISION_AXES

    @staticmethod
    def layout(model: nn.Module) -> dict:
        """What the host needs besides the manifest's model entries to run the vision graph and form positions."""
        return vision_layout(model)

    @staticmethod
    def vision(model: nn.Module) -> nn.Module:
        """The module that ``vision.onnx`` is exported from: one segment's inputs in, its features out."""
        return vision_graph(model)

    @staticmethod
    def embedding(model: nn.Module, visual_ids: tuple[int, ...]) -> FeatureEmbedding:
        return FeatureEmbedding(model, visual_ids)

    @staticmethod
    def segments(pixel_rows, grids: np.ndarray, layout: dict):
        """The vision graph's inputs for every segment, in order (``layout``: ``layout`` or the manifest's model)."""
        return vision_segments(pixel_rows, grids, layout["spatial_merge_size"], layout.get("vision_window"))

    @staticmethod
    def positions(layout: dict, types, mask, image_grids, video_grids, seconds) -> np.ndarray:
        """The prompt's M-RoPE positions ``[3, B, N]`` (``mrope``)."""
        return prompt_positions(layout, types, mask, image_grids, video_grids, seconds)

    @classmethod
    def export_graphs(cls, model: nn.Module, state, example_inputs: dict, max_visual_tokens: int | None, prune: bool):
        config = model.config
        input_ids, attention_mask = example_inputs["input_ids"], example_inputs["attention_mask"]
        image_grids, video_grids = example_inputs.get("image_grid_thw"), example_inputs.get("video_grid_thw")
        if image_grids is None and video_grids is None:
            raise ValueError(
                "example_inputs must hold at least one image or video (pixel_values and image_grid_thw, or "
                "pixel_values_videos and video_grid_thw)"
            )
        visual_ids = (config.image_token_id, config.video_token_id)
        max_visual = token_budget(input_ids, visual_ids, max_visual_tokens)
        layout, device = cls.layout(model), input_ids.device
        vision, embed = cls.vision(model), cls.embedding(model, visual_ids)
        features = {}
        for kind, pixels in (("image", "pixel_values"), ("video", "pixel_values_videos")):
            if example_inputs.get(pixels) is not None:
                grids = example_inputs[f"{kind}_grid_thw"].cpu().numpy()
                features[kind] = _features(vision, cls.segments(example_inputs[pixels], grids, layout), device)
        some = next(iter(features.values()))
        image_features, video_features = (features.get(kind, some[:0]) for kind in ("image", "video"))
        types = example_inputs.get("mm_token_type_ids")
        types = token_types(input_ids.cpu().numpy(), *visual_ids) if types is None else types.cpu().numpy()
        grids = (as_numpy(image_grids), as_numpy(video_grids), as_numpy(example_inputs.get("second_per_grid_ts")))
        positions = cls.positions(layout, types, attention_mask.cpu().numpy(), *grids)
        example = (input_ids, attention_mask, (image_features, video_features))
        positions = torch.from_numpy(positions).to(device)
        decoders, top_k = example_decoders(model, state, embed, example, max_visual, prune, positions)
        kind, pixels = ("image", "pixel_values") if image_grids is not None else ("video", "pixel_values_videos")
        first = example_inputs[f"{kind}_grid_thw"][:1].cpu().numpy()
        segment = next(cls.segments(example_inputs[pixels], first, layout))
        graphs = [
            GraphExport(
                "vision",
                vision,
                tuple(torch.as_tensor(value, device=device) for value in segment.values()),
                tuple(segment),
                ("image_features",),
                {name: {0: cls.vision_axes[name]} for name in segment},
            ),
            embed_graph(
                embed,
                input_ids,
                {
                    "image_features": _at_least_two_rows(image_features),
                    "video_features": _at_least_two_rows(video_features),
                },
            ),
            *decoders,
        ]
        details = fastv_details(
            model,
            state,
            prune,
            {"max_visual": max_visual, "top_k": top_k},
            **layout,
            pixel_features=math.prod(example_inputs[pixels].shape[1:]),
        )
        return graphs, details

    @classmethod
    def host_inputs(cls, runner, input_ids, mask, images: dict) -> tuple[dict, dict]:
        """Embeddings with the image and video features placed (one vision run per image or video frame
        group), M-RoPE positions, visual mask and slots; nothing fixed."""
        cls.refuse_extra(images, cls.visual_inputs)
        model = runner.manifest.model
        cls.check_budget(runner.manifest, input_ids)
        features, grids = {}, {}
        for kind, pixels in (("image", "pixel_values"), ("video", "pixel_values_videos")):
            grids[kind] = as_numpy(images.get(f"{kind}_grid_thw"), np.int64)
            rows = cls.segment_features(runner, kind, as_numpy(images.get(pixels)), grids[kind])
            features[f"{kind}_features"] = cls.placeable(runner.manifest, input_ids, kind, rows, f"{kind}_grid_thw")
        types = images.get("mm_token_type_ids")
        types = token_types(input_ids, model["image_token_id"], model["video_token_id"]) if types is None else types
        values = cls.fastv_inputs(runner, input_ids, mask, features)
        seconds = as_numpy(images.get("second_per_grid_ts"), np.float32)
        values["position_ids"] = cls.positions(
            model, as_numpy(types, np.int64), mask, grids["image"], grids["video"], seconds
        )
        return values, {}

    @classmethod
    def segment_features(cls, runner, kind: str, pixel_rows: np.ndarray | None, grids: np.ndarray | None) -> np.ndarray:
        """The features of every image (or video), in order: one vision run per segment."""
        model, pixels = runner.manifest.model, "pixel_values" if kind == "image" else "pixel_values_videos"
        if (pixel_rows is None) != (grids is None):
            raise ValueError(f"pass {pixels} and {kind}_grid_thw together, as the processor makes them")
        if grids is None:
            return runner.empty("embed", f"{kind}_features")
        if len(pixel_rows) != grids.prod(-1).sum():
            raise ValueError(
                f"{pixels} has {len(pixel_rows)} patch rows; {kind}_grid_thw describes {grids.prod(-1).sum()}"
            )
        segments = cls.segments(pixel_rows.astype(runner.dtype), grids, model)
        return np.concatenate([runner.run("vision", feeds)["image_features"] for feeds in segments])

    @classmethod
    def trt_axes(cls, manifest, max_batch: int, max_text: int, max_new_tokens: int) -> dict:
        """opt is one image that fills the visual budget; the vision graph runs one segment (an image or a
        video frame group) of up to the whole budget's patches (Qwen2.5-VL: and merge blocks)."""
        max_visual = manifest.visual_budget["max_visual"]
        patches_per_token = manifest.model["spatial_merge_size"] ** 2
        return cls.text_axes(manifest, max_batch, max_text, max_new_tokens, max_visual) | {
            "patches": (patches_per_token, max_visual * patches_per_token, max_visual * patches_per_token),
            "blocks": (1, max_visual, max_visual),
            "image_tokens": (0, max_visual, max_batch * max_visual),
            "video_tokens": (0, 0, max_batch * max_visual),
        }

    @classmethod
    def demo(cls, method, name: str):
        from .testing import qwen2_vl_inputs, tiny_qwen2_vl

        model = optimize(tiny_qwen2_vl(version=VERSIONS[name], num_layers=DEMO_LAYERS), method)
        return model, qwen2_vl_inputs(model, [(3, [(8, 8)], [], 4), (2, [(4, 8)], [(4, 4, 4)], 3)])
