"""Trimmed Llama (arXiv 2504.00557), in plain eager PyTorch on an unmodified Mllama model.

Ranking reads the first cross-attention layer's probabilities (a forward hook), computed in float32
from its own query and key (``RANKING_ATTENTION``; the other layers run HF's eager attention), and
selects in plain Python. *Mask mode* then runs the unmodified model (its own
``forward`` and ``generate``) with the later cross-attention layers' mask hiding the dropped
features. For every text row this equals computing keys and values for the kept features only, and
it shares no code with the gather-based pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..methods import CrossAttentionTrim, n_keep
from .fastv import RANKING_ATTENTION, eager_attention


@dataclass
class CrossAttentionTrimReference:
    kept: list[torch.Tensor]  # per sample: sorted kept feature indices
    scores: torch.Tensor  # [B, H, F]: per-head mean probability over the valid rows
    valid: torch.Tensor  # [B, F]: features some valid row may attend


def _top(scores: list[float], candidates: list[int], count: int) -> set[int]:
    return set(sorted(candidates, key=lambda j: (-scores[j], j))[:count])


@torch.no_grad()
def cross_attention_trim_reference(model, method: CrossAttentionTrim, **inputs) -> CrossAttentionTrimReference:
    """The features that ``method`` keeps for ``inputs`` (as the model's processor makes them)."""
    text_model = model.model.language_model
    first = min(text_model.config.cross_attention_layers)
    seen = {}

    def read_decoder_inputs(module, args, kwargs):
        seen.update(kwargs)

    def rank_in_float32(module, args):
        text_model.config._attn_implementation = RANKING_ATTENTION

    def read_probabilities(module, args, output):
        seen["probabilities"] = output[1]
        text_model.config._attn_implementation = "eager"

    cross_attention = text_model.layers[first].cross_attn
    hooks = [
        text_model.register_forward_pre_hook(read_decoder_inputs, with_kwargs=True),
        cross_attention.register_forward_pre_hook(rank_in_float32),
        cross_attention.register_forward_hook(read_probabilities),
    ]
    try:
        with eager_attention(text_model.config):
            model(**inputs, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    probabilities = seen["probabilities"]  # [B, H, T, F], float32
    cross_mask = seen["cross_attention_mask"][:, 0]  # [B, T, F]
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones(cross_mask.shape[:2], dtype=torch.long)
    rows = (seen["full_text_row_masked_out_mask"][:, 0, :, 0] == 1) & attention_mask.bool()
    may_attend = cross_mask != torch.finfo(cross_mask.dtype).min
    batch, n_heads = probabilities.shape[:2]
    kept, scores, valid = [], torch.zeros(batch, n_heads, cross_mask.shape[-1]), torch.zeros_like(may_attend[:, 0])
    for b in range(batch):
        valid_rows = rows[b].nonzero().flatten()
        valid[b] = may_attend[b, valid_rows].any(dim=0)
        scores[b] = probabilities[b][:, valid_rows].mean(dim=1) if len(valid_rows) else 0.0
        candidates = valid[b].nonzero().flatten().tolist()
        count = n_keep(method.keep, len(candidates))
        if method.select == "head_union":
            chosen = set().union(*(_top(scores[b, h].tolist(), candidates, count) for h in range(n_heads)))
        else:
            chosen = _top(scores[b].mean(dim=0).tolist(), candidates, count)
        kept.append(torch.tensor(sorted(chosen), dtype=torch.long))
    return CrossAttentionTrimReference(kept, scores, valid)


@contextlib.contextmanager
def trimmed_mask_mode(model, kept: list[torch.Tensor]):
    """While active, the unmodified model's cross-attention layers after the first see only ``kept``
    features: the others are hidden by their mask, in prefill and in every decode step."""
    text_model = model.model.language_model
    first, *later = sorted(text_model.config.cross_attention_layers)

    def hide_dropped(module, args, kwargs):
        mask = kwargs["cross_attention_mask"]
        dropped = torch.ones(mask.shape[0], mask.shape[-1], dtype=torch.bool, device=mask.device)
        for b, features in enumerate(kept):
            dropped[b, features] = False
        kwargs["cross_attention_mask"] = mask.masked_fill(dropped[:, None, None, :], torch.finfo(mask.dtype).min)
        return args, kwargs

    hooks = [text_model.layers[i].register_forward_pre_hook(hide_dropped, with_kwargs=True) for i in later]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
