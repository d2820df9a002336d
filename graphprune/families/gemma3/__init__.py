"""Gemma 3 (``Gemma3ForConditionalGeneration``): FastV with its sliding-window and image-block masks."""

from ...methods import FastV
from ..record import Family

FAMILY = Family(
    name="gemma3",
    model_classes=("Gemma3ForConditionalGeneration",),
    methods=(FastV,),
    adapter=f"{__name__}.adapter:Gemma3Adapter",
    testing=f"{__name__}.testing",
    checkpoint=f"{__name__}.checkpoint",
    plot_layout=f"{__name__}.layout:layouts",
    export_refusal="its exported graphs would need the image blocks and sliding-window masks as inputs of their own",
    vllm_refused={
        "Gemma3ForConditionalGeneration": (
            "its sliding-window layers >= k would slide over the kept tokens' compacted KV instead of original "
            "positions, and its bidirectional image attention (vLLM's mm_prefix ranges) is not remapped to the kept "
            "image tokens; prune it with graphprune's HF path (gp.optimize)"
        ),
    },
)
