"""The ``attention_mask`` forms that the pruned paths take: any dtype, left padding (PyTorch and ONNX Runtime)."""

from __future__ import annotations

import torch


def normalized_attention_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``attention_mask`` as the captured graphs take it (int64). Like HF, which reads a 2-D mask of any
    dtype as ``mask.bool()``, a long, int, bool or float mask marks real positions with its non-zero entries."""
    if attention_mask is None or attention_mask.dtype == torch.long:
        return attention_mask
    return attention_mask.bool().long()


def right_padded(attention_mask):
    """Per sample (torch or numpy ``[B, N]`` mask), whether it has real tokens and ends with padding; no host read."""
    real = attention_mask != 0
    return real.any(-1) & ~real[:, -1]


def refuse_right_padding(attention_mask) -> None:
    """A one-line error for a batch (torch or numpy ``[B, N]`` mask) in which a sample with real tokens ends
    with padding: the pruned prefill puts every sample's last real token last, so such a batch would not
    give what the unmodified model gives. An all-padding sample is empty, not right-padded."""
    samples = [b for b, padded in enumerate(right_padded(attention_mask).tolist()) if padded]
    if samples:
        raise ValueError(
            f"graphprune does not prune right-padded batches (sample {', '.join(map(str, samples))} ends with "
            'padding); it accepts unpadded and left-padded batches: pad on the left (padding_side="left")'
        )


def padding_mask(attention_mask, past: int, new_tokens: int, check: bool = True) -> tuple[torch.Tensor | None, bool]:
    """The 2-D mask ``[B, past + new_tokens]`` (int64, or None for "all real") of a call's ``attention_mask`` and
    whether it is one: a 2-D mask as it is; a 4-D one (HF builds it for a static cache, over the cache's length)
    or HF's dict holding one (``{"full_attention": ...}``) read off its last query row, which a causal mask lets
    see every earlier real position, and with ``check`` checked (one host read) to be the causal mask of that row,
    else not one."""
    if isinstance(attention_mask, dict):
        if set(attention_mask) != {"full_attention"}:
            return None, False
        attention_mask = attention_mask["full_attention"]
    if attention_mask is None or attention_mask.dim() == 2:
        return normalized_attention_mask(attention_mask), True
    length = past + new_tokens
    if attention_mask.dim() != 4 or attention_mask.shape[1:3] != (1, new_tokens) or attention_mask.shape[-1] < length:
        return None, False
    seen = attention_mask[:, 0] if attention_mask.dtype == torch.bool else attention_mask[:, 0] == 0
    real = seen[:, -1, :length]
    if not check:
        return real.long(), True
    keys = torch.arange(seen.shape[-1], device=seen.device)
    causal = keys <= torch.arange(past, length, device=seen.device)[:, None]
    expected = causal & torch.cat([real, real.new_zeros(real.shape[0], seen.shape[-1] - length)], dim=1)[:, None]
    rows = real[:, past:, None]  # a padding query row's own keys are not read
    plain = bool(((seen == expected) | ~rows).all())
    return real.long(), plain
