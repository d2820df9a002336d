"""InternVL3 (``InternVLForConditionalGeneration``): pixel-shuffled tiles; Qwen2 decoder."""

from ...methods import DART, FastV
from ..record import Family

FAMILY = Family(
    name="internvl",
    model_classes=("InternVLForConditionalGeneration",),
    methods=(FastV, DART),
    adapter=f"{__name__}.adapter:InternVLAdapter",
    testing=f"{__name__}.testing",
    checkpoint=f"{__name__}.checkpoint",
    plot_layout=f"{__name__}.layout:layouts",
    export=f"{__name__}.export:InternVLExport",
    vllm={
        "InternVLForConditionalGeneration": (
            "GraphpruneInternVLForConditionalGeneration",
            f"{__name__}.vllm:FastVInternVL",
        ),
    },
)
