"""``benchmarks/gpu_suite.py``'s SDPA-kernel check: which kernel each decoder layer ran, from ``torch.profiler``."""

from __future__ import annotations

import collections
import re

import torch

from benchmarks.harness import sync_for

SDPA_KINDS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
}


def sdpa_kernels(fn, device: torch.device, heads: int, head_dim: int, layers: int) -> dict:
    """One profiled call: per SDPA kernel kind, in how many decoder layers it ran (calls whose query is
    ``[B, heads, T, head_dim]``); layers with no SDPA call count as ``none (eager)``; and the CUDA kernels
    whose names look like attention."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        fn()
        sync_for(device)()
    kinds, other_shapes = collections.Counter(), collections.Counter()
    for event in prof.events():
        if event.name != "aten::scaled_dot_product_attention":
            continue
        query = list(event.input_shapes[0]) if event.input_shapes else []
        if len(query) != 4 or query[1] != heads or query[3] != head_dim:
            other_shapes[str(query)] += 1  # the vision tower's
            continue
        names = [child.name for child in event.cpu_children if child.name.startswith("aten::_scaled_dot_product")]
        kinds[SDPA_KINDS.get(names[0], names[0]) if names else "sdpa (no child op)"] += 1
    if sum(kinds.values()) < layers:
        kinds["none (eager)"] = layers - sum(kinds.values())
    kernels = collections.Counter()
    for entry in prof.key_averages():
        if getattr(entry, "device_type", None) == torch.autograd.DeviceType.CUDA and re.search(
            r"flash|fmha|attention|attn|cudnn|softmax", entry.key, re.IGNORECASE
        ):
            kernels[entry.key[:90]] += entry.count
    return dict(decoder_layers=dict(kinds), other_sdpa_calls=dict(other_shapes), cuda_attention_kernels=dict(kernels))
