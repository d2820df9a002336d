"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): images, crops and videos; Qwen2."""

from ...methods import DART, FastV
from ..record import Family

FAMILY = Family(
    name="llava-onevision",
    model_classes=("LlavaOnevisionForConditionalGeneration",),
    methods=(FastV, DART),
    adapter=f"{__name__}.adapter:LlavaOnevisionAdapter",
    testing=f"{__name__}.testing",
    checkpoint=f"{__name__}.checkpoint",
    plot_layout=f"{__name__}.layout:layouts",
    export=f"{__name__}.export:LlavaOnevisionExport",
    vllm={
        "LlavaOnevisionForConditionalGeneration": (
            "GraphpruneLlavaOnevisionForConditionalGeneration",
            f"{__name__}.vllm:FastVLlavaOnevision",
        ),
    },
)
