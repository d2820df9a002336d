"""TensorRT optimisation profiles (min/opt/max shapes) for every input of an export, from its manifest."""

from __future__ import annotations

from .family import export_family
from .manifest import Manifest

Shape = tuple[int, ...]


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
    family = export_family(manifest.family, f"graphprune has no TensorRT profiles for {manifest.family!r} exports")
    axes = family.trt_axes(manifest, max_batch, max_text, max_new_tokens)
    profiles = {}
    for graph, entry in manifest.graphs.items():
        profiles[graph] = {
            spec["name"]: tuple(
                tuple(axes[dim][which] if isinstance(dim, str) else dim for dim in spec["shape"]) for which in range(3)
            )
            for spec in entry["inputs"]
        }
    return profiles
