"""Qwen3-VL and Qwen3-VL-MoE: interleaved M-RoPE and DeepStack; the Qwen-VL picture layout."""

from ...methods import DART, FastV
from ..record import Family

FAMILY = Family(
    name="qwen3-vl",
    model_classes=("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration"),
    methods=(FastV, DART),
    adapter=f"{__name__}.adapter:Qwen3VLAdapter",
    testing=f"{__name__}.testing",
    checkpoint=f"{__name__}.checkpoint",
    plot_layout="graphprune.families.qwen2_vl.layout:layouts",
    export=f"{__name__}.export:Qwen3VLExport",
    vllm={
        "Qwen3VLForConditionalGeneration": (
            "GraphpruneQwen3VLForConditionalGeneration",
            f"{__name__}.vllm:FastVQwen3VL",
        ),
        "Qwen3VLMoeForConditionalGeneration": (
            "GraphpruneQwen3VLMoeForConditionalGeneration",
            f"{__name__}.vllm:FastVQwen3VLMoe",
        ),
    },
)
