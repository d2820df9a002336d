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
