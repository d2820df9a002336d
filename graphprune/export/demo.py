"""``graphprune export``: export a tiny demo model (random weights) and check the files against PyTorch."""

from __future__ import annotations

from pathlib import Path

import torch

from ..methods import CrossAttentionTrim, FastV
from ..runtime import optimize
from ..testing import (
    llava_inputs,
    mllama_inputs,
    qwen2_vl_inputs,
    tiny_llava,
    tiny_mllama,
    tiny_qwen2_vl,
    tiny_video_llava,
    video_llava_inputs,
)

QWEN_VERSIONS = {"qwen2-vl": "2", "qwen2.5-vl": "2.5"}
FASTV_LAYERS = 4  # the decoder layers of the FastV families' demo models (FastV's k must be below)


def demo(
    out: str | Path, format: str, method: FastV | CrossAttentionTrim, family: str = "llava", overwrite: bool = False
) -> bool:
    """Export a tiny random-weight model optimised with ``method`` to ``out``: ``family`` (LLaVA, Video-LLaVA,
    Qwen2-VL or Qwen2.5-VL) for FastV, Mllama for CrossAttentionTrim (arXiv 2504.00557); for ONNX, True
    if ONNX Runtime's greedy tokens equal PyTorch's."""
    from . import OrtGenerator, onnx, tensorrt

    if isinstance(method, CrossAttentionTrim):
        model = optimize(tiny_mllama(), method)
        inputs = mllama_inputs(model, [(1, [4, 2], 3), (2, [2], 4)])
    elif family == "video-llava":
        model = optimize(tiny_video_llava(num_layers=FASTV_LAYERS), method)
        inputs = video_llava_inputs(model, [(3, 1, 1, 4), (2, 0, 1, 3)])
    elif family in QWEN_VERSIONS:
        model = optimize(tiny_qwen2_vl(version=QWEN_VERSIONS[family], num_layers=FASTV_LAYERS), method)
        inputs = qwen2_vl_inputs(model, [(3, [(8, 8)], [], 4), (2, [(4, 8)], [(4, 4, 4)], 3)])
    else:
        model = optimize(tiny_llava(num_layers=FASTV_LAYERS), method)
        inputs = llava_inputs(model, [(5, 1, 4), (2, 1, 3)])
    if format == "tensorrt":
        folder = tensorrt(model, out, example_inputs=inputs, overwrite=overwrite)
        print(f"wrote {folder}: {', '.join(sorted(path.name for path in folder.iterdir()))}")
        return True
    folder = onnx(model, out, example_inputs=inputs, overwrite=overwrite)
    for path in sorted(folder.iterdir()):
        print(f"  {path.name:<18} {path.stat().st_size / 1024:8.1f} KiB")
    expected = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    tokens = OrtGenerator(folder).generate(**inputs, max_new_tokens=8)
    same = torch.equal(tokens, expected)
    print(f"validated against PyTorch; ONNX Runtime greedy tokens {'equal' if same else 'DIFFER FROM'} PyTorch's")
    print(f"Jetson Orin: copy {folder} to the device and run its build_engines.sh (see TENSORRT.md there)")
    return same
