"""The Idefics3 / SmolVLM export family (FastV, arXiv 2403.06764): tile tower, embedding, decoder graphs.

``vision.onnx`` is the vision transformer and the pixel-shuffle connector (``get_image_features``):
``pixel_values [tiles, 3, H, W] -> [tiles, image_seq_len, hidden]``. The processor's ``pixel_values`` are
``[B, tiles, 3, H, W]`` with all-zero padding tiles; on the host, as HF does, they are flattened and the
padding tiles dropped. Everything else is InternVL's export (``internvl``).
"""

from __future__ import annotations

import torch
from torch import nn

from ...export.family import as_numpy
from ...export.fastv_family import DEMO_LAYERS
from ...runtime import optimize
from ..internvl.export import InternVLExport


class _Tiles(nn.Module):
    """The vision transformer and the pixel-shuffle connector, as ``get_image_features`` runs them on real tiles
    with every pixel attended (the processor's square tiles)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision, self.connector = model.model.vision_model, model.model.connector
        self.image_size = model.config.vision_config.image_size

    def forward(self, pixel_values):
        # the vision transformer's steps for whole tiles of the configured size: every patch is real, so the
        # position of patch i is i (what the embeddings' bucketing gives a full tile) and the encoder needs no
        # mask; the all-True patch mask HF builds otherwise exports as BOOL Equal nodes, which TensorRT 10 refuses
        vision = self.vision
        patches = vision.embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        positions = torch.arange(patches.shape[1], device=pixel_values.device)
        hidden = patches + vision.embeddings.position_embedding(positions)
        hidden = vision.encoder(inputs_embeds=hidden, attention_mask=None).last_hidden_state
        return self.connector(vision.post_layernorm(hidden))


def real_tiles(pixel_values, pixel_attention_mask=None):
    """``[B, tiles, 3, H, W]`` as ``[real tiles, 3, H, W]``, all-zero padding tiles dropped as HF drops them;
    a ``ValueError`` if a real tile's ``pixel_attention_mask`` hides pixels (the export attends every one)."""
    if pixel_values is None:
        return None
    flat = pixel_values.flatten(0, 1) if isinstance(pixel_values, torch.Tensor) else as_numpy(pixel_values)
    flat = flat.reshape(-1, *flat.shape[-3:])
    real = (flat != 0).reshape(len(flat), -1).any(-1)
    if pixel_attention_mask is not None and not bool(
        as_numpy(pixel_attention_mask).reshape(len(flat), -1)[as_numpy(real)].all()
    ):
        raise ValueError(
            "graphprune's Idefics3/SmolVLM export attends every pixel of a tile; got a pixel_attention_mask that hides "
            "some: pass whole tiles, as the processor makes them, or run the model in PyTorch (graphprune.optimize)"
        )
    return flat[real]


class Idefics3Export(InternVLExport):
    """Idefics3 and SmolVLM (FastV): ``vision``, ``embed``, ``prefill``, ``decode``; budget ``max_visual_tokens``."""

    name, title, demo_names = "idefics3", "Idefics3/SmolVLM", ("idefics3", "smolvlm")

    @classmethod
    def tower(cls, model: nn.Module) -> nn.Module:
        return _Tiles(model)

    @classmethod
    def tiles(cls, inputs: dict):
        return real_tiles(inputs.get("pixel_values"), inputs.get("pixel_attention_mask"))

    @classmethod
    def host_inputs(cls, runner, input_ids, mask, images: dict) -> tuple[dict, dict]:
        images = {**images, "pixel_values": cls.tiles(images)}
        images.pop("pixel_attention_mask", None)
        return super().host_inputs(runner, input_ids, mask, images)

    @classmethod
    def demo(cls, method, name: str):
        from .testing import idefics3_inputs, tiny_idefics3

        model = optimize(tiny_idefics3(version=name, num_layers=DEMO_LAYERS), method)
        return model, idefics3_inputs(model, [(3, [(2, 2)], 4), (2, [(1, 1), (1, 2)], 3)])
