"""Gemma 3 (``Gemma3ForConditionalGeneration``): known to graphprune, not yet pruned by it.

What FastV needs here and the capture does not give yet: the outer model builds the decoder's masks itself (a
dict of 4-D ``full_attention`` / ``sliding_attention`` masks, with each image's tokens attending each other
bidirectionally from ``token_type_ids``), while the captured prefill graph takes a 2-D padding mask; HF's
sliding-window cache layers make ``torch.export`` restrict the sequence length (a guard ``length >=
sliding_window - 1``) and keep only the last ``sliding_window - 1`` keys, which the pruned cache and decode graphs
do not model; the ranking row ignores the window of a sliding layer ``k - 1``. ``adapter_for`` refuses the class
with this reason rather than prune it wrongly (README, Known limitations, has the details).
"""

from __future__ import annotations

MODEL_CLASS = "Gemma3ForConditionalGeneration"
REFUSAL = (
    "its image tokens attend each other bidirectionally and its sliding-window layers keep a window-sized KV "
    "cache, which graphprune's captured decoder graphs do not model yet (see README, Known limitations)"
)
