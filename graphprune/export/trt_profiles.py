"""TensorRT optimisation profiles (min/opt/max shapes) for every input of an export, from its manifest."""

from __future__ import annotations

from ..methods import n_keep
from .manifest import Manifest

Shape = tuple[int, ...]


def trt_profiles(
    manifest: Manifest, max_batch: int = 1, max_text: int = 512, max_new_tokens: int = 256
) -> dict[str, dict[str, tuple[Shape, Shape, Shape]]]:
    """``{graph: {input: (min, opt, max)}}`` for sequences of up to ``max_images`` images plus ``max_text`` tokens.

    opt is one image and a 64-token prompt, batch 1; the decode step takes one new token after at
    most ``max_new_tokens - 1`` earlier ones. Related axes are consistent at each of min, opt and
    max (``total = past + new_tokens``; the pruned lengths follow the method's keep fraction at opt).
    """
    for name, value in (("max_batch", max_batch), ("max_text", max_text), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1; got {value!r}")
    budget = manifest.visual_budget
    per_image, max_images = budget["tokens_per_image"], budget["max_images"]
    max_sequence = budget["max_visual"] + max_text
    opt_sequence = per_image + 64
    dropped = per_image - n_keep(manifest.method["keep"], per_image) if manifest.method else 0
    max_total = max_sequence + max_new_tokens
    axes = {
        "batch": (1, 1, max_batch),
        "images": (1, 1, max_batch * max_images),
        "image_tokens": (0, per_image, max_batch * budget["max_visual"]),
        "sequence": (1, opt_sequence, max_sequence),
        "pruned_sequence": (1, opt_sequence - dropped, max_sequence),
        "new_tokens": (1, 1, 1),
        "past": (1, opt_sequence, max_total - 1),
        "pruned_past": (1, opt_sequence - dropped, max_total - 1),
        "total": (2, opt_sequence + 1, max_total),
    }
    profiles = {}
    for graph, entry in manifest.graphs.items():
        profiles[graph] = {
            spec["name"]: tuple(
                tuple(axes[dim][which] if isinstance(dim, str) else dim for dim in spec["shape"]) for which in range(3)
            )
            for spec in entry["inputs"]
        }
    return profiles
