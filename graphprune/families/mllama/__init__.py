"""Mllama (``MllamaForConditionalGeneration``): cross-attention to tile features; CrossAttentionTrim."""

from ...methods import CrossAttentionTrim
from ..record import Family

FAMILY = Family(
    name="mllama",
    model_classes=("MllamaForConditionalGeneration",),
    methods=(CrossAttentionTrim,),
    adapter=f"{__name__}.adapter:MllamaAdapter",
    testing=f"{__name__}.testing",
    plot_layout=f"{__name__}.layout:layouts",
    export=f"{__name__}.export:MllamaExport",
)
