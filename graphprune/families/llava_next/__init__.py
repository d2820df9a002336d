"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): any-resolution crops, packed with newlines."""

from ...methods import DART, FastV
from ..record import Family

FAMILY = Family(
    name="llava-next",
    model_classes=("LlavaNextForConditionalGeneration",),
    methods=(FastV, DART),
    adapter=f"{__name__}.adapter:LlavaNextAdapter",
    testing=f"{__name__}.testing",
    checkpoint=f"{__name__}.checkpoint",
    plot_layout=f"{__name__}.layout:layouts",
    export=f"{__name__}.export:LlavaNextExport",
    vllm={
        "LlavaNextForConditionalGeneration": (
            "GraphpruneLlavaNextForConditionalGeneration",
            f"{__name__}.vllm:FastVLlavaNext",
        ),
    },
)
