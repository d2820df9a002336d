"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a Llama-family decoder behind a CLIP tower."""

from ...methods import DART, FastV
from ..record import Family

FAMILY = Family(
    name="llava",
    model_classes=("LlavaForConditionalGeneration",),
    methods=(FastV, DART),
    adapter=f"{__name__}.adapter:LlavaAdapter",
    testing=f"{__name__}.testing",
    checkpoint=f"{__name__}.checkpoint",
    plot_layout=f"{__name__}.layout:layouts",
    export=f"{__name__}.export:LlavaExport",
    vllm={
        "LlavaForConditionalGeneration": ("GraphpruneLlavaForConditionalGeneration", f"{__name__}.vllm:FastVLlava"),
    },
)
