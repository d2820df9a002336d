"""Qwen2-VL and Qwen2.5-VL: M-RoPE positions ``[3, B, N]``, images and videos."""

from ...methods import DART, FastV
from ..record import Family

FAMILY = Family(
    name="qwen2-vl",
    model_classes=("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
    methods=(FastV, DART),
    adapter=f"{__name__}.adapter:Qwen2VLAdapter",
    testing=f"{__name__}.testing",
    checkpoint=f"{__name__}.checkpoint",
    plot_layout=f"{__name__}.layout:layouts",
    export=f"{__name__}.export:Qwen2VLExport",
    vllm={
        "Qwen2VLForConditionalGeneration": (
            "GraphpruneQwen2VLForConditionalGeneration",
            f"{__name__}.vllm:FastVQwen2VL",
        ),
        "Qwen2_5_VLForConditionalGeneration": (
            "GraphpruneQwen2_5_VLForConditionalGeneration",
            f"{__name__}.vllm:FastVQwen2_5_VL",
        ),
    },
)
