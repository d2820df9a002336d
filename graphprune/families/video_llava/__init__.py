"""Video-LLaVA (``VideoLlavaForConditionalGeneration``): images and videos through one LLaVA decoder."""

from ...methods import DART, FastV
from ..record import Family

FAMILY = Family(
    name="video-llava",
    model_classes=("VideoLlavaForConditionalGeneration",),
    methods=(FastV, DART),
    adapter=f"{__name__}.adapter:VideoLlavaAdapter",
    testing=f"{__name__}.testing",
    plot_layout=f"{__name__}.layout:layouts",
    export=f"{__name__}.export:VideoLlavaExport",
)
