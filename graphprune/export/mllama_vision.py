"""Mllama's vision graph (vision model + projector) and its masks graph (the processor's cross-attention
mask as the decoder takes it)."""

from __future__ import annotations

import torch
from torch import nn


class MllamaVision(nn.Module):
    """Mllama's vision model and projector: ``(pixel_values, aspect_ratio_ids, aspect_ratio_mask) -> [B, F, d]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.model

    def forward(self, pixel_values, aspect_ratio_ids, aspect_ratio_mask):
        states = self.model.vision_model(
            pixel_values=pixel_values, aspect_ratio_ids=aspect_ratio_ids, aspect_ratio_mask=aspect_ratio_mask
        ).last_hidden_state
        states = self.model.multi_modal_projector(states)
        return states.reshape(pixel_values.shape[0], -1, states.shape[-1])


class MllamaMasks(nn.Module):
    """The processor's ``cross_attention_mask [B, T, images, tiles]`` as the decoder takes it: HF's
    ``_prepare_cross_attention_mask`` (additive ``[B, 1, T, F]``, rows that see no tile all 0, and
    ``full_text_row_masked_out_mask [B, 1, T, 1]``), written without ``1.0 - tensor``, which the ONNX
    exporter cannot translate."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.patches = model.model.vision_model.num_patches
        self.dtype = model.dtype

    def forward(self, cross_attention_mask):
        batch, length = cross_attention_mask.shape[:2]
        seen = (cross_attention_mask == 1).repeat_interleave(self.patches, dim=3).view(batch, length, -1)[:, None]
        rows = seen.any(dim=-1, keepdim=True).to(self.dtype)
        hidden = torch.zeros_like(seen, dtype=self.dtype).masked_fill(~seen, torch.finfo(self.dtype).min)
        return hidden * rows, rows
