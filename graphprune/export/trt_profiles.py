"""TensorRT optimisation profiles (min/opt/max shapes) for every input of an export, from its manifest."""

from __future__ import annotations

from ..methods import n_keep
from .manifest import Manifest

Shape = tuple[int, ...]
OPT_TEXT = 64  # text tokens of the opt prompt (at most max_text)


def trt_profiles(
    manifest: Manifest, max_batch: int = 1, max_text: int = 512, max_new_tokens: int = 256
) -> dict[str, dict[str, tuple[Shape, Shape, Shape]]]:
    """``{graph: {input: (min, opt, max)}}`` for up to the visual budget plus ``max_text`` tokens.

    opt is one image (Qwen2-VL: the whole token budget) and a prompt of ``min(64, max_text)`` text
    tokens, batch 1; the decode step takes one new token after at
    most ``max_new_tokens - 1`` earlier ones. Related axes are consistent at each of min, opt and
    max (``total = past + new_tokens``; the pruned lengths follow the method's keep fraction at opt).
    """
    for name, value in (("max_batch", max_batch), ("max_text", max_text), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1; got {value!r}")
    family_axes = {"mllama": _mllama_axes, "qwen2-vl": _qwen2_vl_axes, "video-llava": _video_llava_axes}.get(
        manifest.family, _llava_axes
    )
    axes = family_axes(manifest, max_batch, max_text, max_new_tokens)
    profiles = {}
    for graph, entry in manifest.graphs.items():
        profiles[graph] = {
            spec["name"]: tuple(
                tuple(axes[dim][which] if isinstance(dim, str) else dim for dim in spec["shape"]) for which in range(3)
            )
            for spec in entry["inputs"]
        }
    return profiles


def _fastv_text_axes(manifest: Manifest, max_batch: int, max_text: int, max_new_tokens: int, opt_visual: int) -> dict:
    """The decoder axes of a FastV export: a prompt of at most the visual budget plus ``max_text`` tokens."""
    max_sequence = manifest.visual_budget["max_visual"] + max_text
    opt_sequence = opt_visual + min(OPT_TEXT, max_text)
    dropped = opt_visual - n_keep(manifest.method["keep"], opt_visual) if manifest.method else 0
    max_total = max_sequence + max_new_tokens
    return {
        "batch": (1, 1, max_batch),
        "sequence": (1, opt_sequence, max_sequence),
        "pruned_sequence": (1, opt_sequence - dropped, max_sequence),
        "new_tokens": (1, 1, 1),
        "past": (1, opt_sequence, max_total - 1),
        "pruned_past": (1, opt_sequence - dropped, max_total - 1),
        "total": (2, opt_sequence + 1, max_total),
    }


def _llava_axes(manifest: Manifest, max_batch: int, max_text: int, max_new_tokens: int) -> dict:
    """LLaVA: opt is one image; the budget is ``max_images`` images of ``tokens_per_image`` tokens."""
    budget = manifest.visual_budget
    per_image = budget["tokens_per_image"]
    return _fastv_text_axes(manifest, max_batch, max_text, max_new_tokens, per_image) | {
        "images": (1, 1, max_batch * budget["max_images"]),
        "image_tokens": (0, per_image, max_batch * budget["max_visual"]),
    }


def _qwen2_vl_axes(manifest: Manifest, max_batch: int, max_text: int, max_new_tokens: int) -> dict:
    """Qwen2-VL: opt is one image that fills the visual budget; the vision graph runs one segment
    (an image or a video frame group) of up to the whole budget's patches (Qwen2.5-VL: and merge blocks)."""
    max_visual = manifest.visual_budget["max_visual"]
    patches_per_token = manifest.model["spatial_merge_size"] ** 2
    return _fastv_text_axes(manifest, max_batch, max_text, max_new_tokens, max_visual) | {
        "patches": (patches_per_token, max_visual * patches_per_token, max_visual * patches_per_token),
        "blocks": (1, max_visual, max_visual),
        "image_tokens": (0, max_visual, max_batch * max_visual),
        "video_tokens": (0, 0, max_batch * max_visual),
    }


def _video_llava_axes(manifest: Manifest, max_batch: int, max_text: int, max_new_tokens: int) -> dict:
    """Video-LLaVA: opt is one video (or the budget, if smaller); the towers take up to the budget's
    images or videos per batch."""
    max_visual, model = manifest.visual_budget["max_visual"], manifest.model
    per_image, per_video = model["tokens_per_image"], model["tokens_per_video"]
    return _fastv_text_axes(manifest, max_batch, max_text, max_new_tokens, min(per_video, max_visual)) | {
        "images": (1, 1, max(1, max_batch * max_visual // per_image)),
        "videos": (1, 1, max(1, max_batch * max_visual // per_video)),
        "image_tokens": (0, per_image, max_batch * max_visual),
        "video_tokens": (0, per_video, max_batch * max_visual),
    }


def _mllama_axes(manifest: Manifest, max_batch: int, max_text: int, max_new_tokens: int) -> dict:
    """Mllama (CrossAttentionTrim, arXiv 2504.00557): the text axes hold text only; ``features`` is
    images x tiles x patches (padding tiles included), ``trimmed_features`` at most the top-k K."""
    budget = manifest.visual_budget
    per_image = budget["max_num_tiles"] * budget["features_per_tile"]
    trimmed = n_keep(manifest.method["keep"], per_image) if manifest.method else per_image
    return {
        "batch": (1, 1, max_batch),
        "images": (1, 1, budget["max_images"]),
        "sequence": (1, min(OPT_TEXT, max_text), max_text),
        "features": (per_image, per_image, budget["max_features"]),
        "trimmed_features": (1, trimmed, budget["top_k"] or budget["max_features"]),
        "new_tokens": (1, 1, 1),
        "past": (1, min(OPT_TEXT, max_text), max_text + max_new_tokens - 1),
        "total": (2, min(OPT_TEXT, max_text) + 1, max_text + max_new_tokens),
    }
