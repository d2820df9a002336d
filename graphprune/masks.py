"""Per-layer-kind attention masks that graphprune builds inside a captured decoder graph (Gemma 3).

A decoder whose layout has ``layer_masks`` takes a dict of additive 4-D masks, ``"full_attention"`` and
``"sliding_attention"`` ``[B, 1, T, P + T]``, in place of its 2-D padding mask; the captured step builds them from
that 2-D mask (and, in prefill, the token types) with the rules below, so they are graph nodes with a sequence
axis that the FastV pass gathers to the kept positions on both axes: both rules then hold on ORIGINAL indices.

Key ``j`` is visible to query ``q`` when ``j`` is real and ``j <= q`` or both are tokens of one image (a run of
``token_type_ids == 1``, bidirectional); a sliding layer also needs ``j > q - window``.
"""

from __future__ import annotations

import torch

FULL, SLIDING = "full_attention", "sliding_attention"


def image_runs(token_type_ids: torch.Tensor) -> torch.Tensor:
    """``[B, N]``: the number of the image run each image token is in (from 1), 0 at text tokens."""
    image = (token_type_ids == 1).long()
    starts = (image - torch.nn.functional.pad(image, (1, 0))[:, :-1]).clamp(min=0)
    return starts.cumsum(dim=1) * image


def layer_masks(
    attention_mask: torch.Tensor, new_tokens: int, window: int | None, dtype: torch.dtype, token_type_ids=None
) -> dict[str, torch.Tensor]:
    """The masks of the ``new_tokens`` last positions of ``attention_mask [B, P + T]`` (2-D, 1 at real positions)
    over all of them; ``token_type_ids [B, T]`` (prefill, ``P = 0``) adds the image blocks."""
    total = attention_mask.shape[1]
    keys = torch.arange(total, device=attention_mask.device)
    queries = keys[total - new_tokens :]
    allowed = keys[None, :] <= queries[:, None]
    if token_type_ids is not None:
        runs = image_runs(token_type_ids)
        allowed = allowed | ((runs[:, :, None] == runs[:, None, :]) & (runs[:, :, None] > 0))
    allowed = allowed & attention_mask.bool()[:, None, :]
    masks = {FULL: allowed[:, None]}
    if window is not None:
        masks[SLIDING] = (allowed & (keys[None, :] > queries[:, None] - window))[:, None]
    return {kind: _additive(mask, dtype) for kind, mask in masks.items()}


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
