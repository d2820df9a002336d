"""Idefics3 and SmolVLM: pixel-shuffled tiles and a global image; Llama decoder."""

from ...methods import DART, FastV
from ..record import Family

FAMILY = Family(
    name="idefics3",
    model_classes=("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration"),
    methods=(FastV, DART),
    adapter=f"{__name__}.adapter:Idefics3Adapter",
    testing=f"{__name__}.testing",
    checkpoint=f"{__name__}.checkpoint",
    plot_layout=f"{__name__}.layout:layouts",
    export=f"{__name__}.export:Idefics3Export",
    vllm={
        "Idefics3ForConditionalGeneration": (
            "GraphpruneIdefics3ForConditionalGeneration",
            f"{__name__}.vllm:FastVIdefics3",
        ),
        "SmolVLMForConditionalGeneration": (
            "GraphpruneSmolVLMForConditionalGeneration",
            f"{__name__}.vllm:FastVSmolVLM",
        ),
    },
)
