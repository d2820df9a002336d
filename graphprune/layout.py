"""What a captured decoder graph holds where: the layout the adapters give and the passes read, and the names
graphprune gives graph inputs and metadata (a leaf: capture, passes and decoders all read it)."""

from __future__ import annotations

from dataclasses import dataclass

LAYOUT_KEY = "graphprune_layout"  # a captured graph's ``gm.meta`` key holding its DecoderLayout
KEY_MASK = "graphprune_key_mask"  # the key-mask decode graph's mask input (``capture.key_mask_decode``)
KEY_MASK_DTYPE = "graphprune_key_mask_dtype"  # that graph's ``gm.meta`` key: the mask's form, bool or a float dtype


@dataclass(frozen=True)
class DecoderLayout:
    """Where things are inside a captured decoder graph; passes read it from ``gm.meta``.

    Module paths are as they appear in the nodes' ``nn_module_stack``, relative to the captured
    step module (whose decoder attribute is ``decoder``).
    """

    layers: str  # e.g. "decoder.layers": layer i is "decoder.layers.{i}"
    attention: str  # attention submodule of a layer, e.g. "self_attn"
    query_proj: str  # e.g. "q_proj"
    key_proj: str  # e.g. "k_proj"
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float  # softmax scale of the attention the method ranks by (self- or cross-attention)
    position_rows: int = 0  # 0: position ids are [B, N]; R: one row per RoPE axis, [R, B, N] (Qwen2-VL's M-RoPE: 3)
    cross_attention_layers: tuple[int, ...] = ()  # indices of cross-attention layers (Mllama), in order
    cross_attention: str = "cross_attn"  # cross-attention submodule of those layers
    # D: layers 0 .. D-1 each add a per-position input [B, N, d] to their output (Qwen3-VL's DeepStack features,
    # zero at text positions); the prefill graph takes them as inputs deepstack_0 .. deepstack_{D-1}
    deepstack_layers: int = 0
    # Gemma 3: the decoder takes graphprune's per-layer-kind 4-D masks (``graphprune/masks.py``), built in the graph;
    # ``image_blocks``: image tokens attend their image both ways (prefill input ``token_type_ids [B, N]``);
    # ``sliding_window``: the window of the decoder's sliding layers, on original indices
    image_blocks: bool = False
    sliding_window: int | None = None

    @property
    def layer_masks(self) -> bool:
        return self.image_blocks or self.sliding_window is not None

    @property
    def self_attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if i not in self.cross_attention_layers)
