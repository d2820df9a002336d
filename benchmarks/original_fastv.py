"""FastV as the original repository runs it: the eager-attention baseline the benchmarks compare graphprune with."""

from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from graphprune.methods import n_keep
from graphprune.reference.fastv import eager_attention, input_embeddings


class OriginalFastV:
    """FastV the way the original repository runs it (LLaVA, batch 1, one image span at a known place).

    A hand-written loop over the decoder layers: layer ``k - 1`` runs with eager attention to get its
    attention weights (``output_attentions`` in the original), the last row's head-mean ranks the visual
    tokens, the top ``ceil(keep * n_visual)`` are kept by ``index_select`` on the hidden states and RoPE
    cos/sin, and layers ``>= k`` run on the shorter sequence with the causal mask of the kept positions
    (``None``, i.e. SDPA ``is_causal``, which is what HF builds for an unpadded batch of 1). Compiled per
    segment (layers < k-1 | layer k-1 + ranking + gather | the rest), static shapes.

    Calling it returns ``(logits of the last position, cache, kept positions)``; inside ``installed()``
    the model's ``generate`` runs its prefill this way and its decode steps unchanged, on the pruned cache.
    """

    def __init__(self, model, k: int, keep: float, image_start: int, n_visual: int, compile: bool):
        self.model, self.lm = model, model.model.language_model
        self.k, self.kept_visual = k, n_keep(keep, n_visual)
        self.image_start, self.image_end = image_start, image_start + n_visual
        wrap = (lambda fn: torch.compile(fn, dynamic=False)) if compile else (lambda fn: fn)
        self._head, self._prune, self._tail = wrap(self.head), wrap(self.prune), wrap(self.tail)

    def __call__(self, input_ids, pixel_values):
        cache = DynamicCache(config=self.lm.config)
        hidden, keep_index = self.decoder_prefill(input_embeddings(self.model, input_ids, pixel_values), cache)
        return self.model.lm_head(hidden[:, -1:]), cache, keep_index

    def decoder_prefill(self, hidden, cache):
        """The decoder on the prompt's embeddings: final-norm hidden states of the kept positions, and those."""
        hidden, cos, sin = self._head(hidden, cache)
        with eager_attention(self.lm.config):  # output_attentions at layer k-1 needs eager attention
            hidden, cos, sin, keep_index = self._prune(hidden, cos, sin, cache)
        return self._tail(hidden, cos, sin, cache), keep_index

    @contextlib.contextmanager
    def installed(self):
        """Within the block the decoder runs its prefill (empty cache) as above and anything else as before."""
        lm, original = self.lm, self.lm.forward
        own = lm.__dict__.get("forward")  # e.g. a torch.compile'd forward set on the instance: put back after

        def forward(*, inputs_embeds=None, past_key_values=None, **kwargs):
            if (
                inputs_embeds is None
                or inputs_embeds.shape[1] < 2
                or (past_key_values is not None and past_key_values.get_seq_length() > 0)
            ):
                return original(inputs_embeds=inputs_embeds, past_key_values=past_key_values, **kwargs)
            cache = past_key_values if past_key_values is not None else DynamicCache(config=lm.config)
            hidden, _ = self.decoder_prefill(inputs_embeds, cache)
            return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=cache)

        lm.forward = forward
        try:
            yield
        finally:
            if own is None:
                del lm.forward
            else:
                lm.forward = own

    def head(self, hidden, cache):
        """RoPE for every position and layers ``0 .. k-2`` on the full sequence."""
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        cos, sin = self.lm.rotary_emb(hidden, position_ids=positions)
        for layer in self.lm.layers[: self.k - 1]:
            hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), past_key_values=cache)
        return hidden, cos, sin

    def prune(self, hidden, cos, sin, cache):
        """Layer ``k - 1`` with its attention weights, then FastV's ranking and the gather."""
        layer, length = self.lm.layers[self.k - 1], hidden.shape[1]
        dtype, device = hidden.dtype, hidden.device
        causal = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)[None, None]
        attended, weights = layer.self_attn(
            hidden_states=layer.input_layernorm(hidden),
            position_embeddings=(cos, sin),
            attention_mask=causal,
            past_key_values=cache,
        )
        hidden = hidden + attended
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        last_row = weights.mean(dim=1)[0, -1]  # head mean, last token's row
        top = last_row[self.image_start : self.image_end].topk(self.kept_visual).indices + self.image_start
        before = torch.arange(self.image_start, device=device)
        after = torch.arange(self.image_end, length, device=device)
        keep_index = torch.cat([before, top, after]).sort().values
        return (
            hidden.index_select(1, keep_index),
            cos.index_select(1, keep_index),
            sin.index_select(1, keep_index),
            keep_index,
        )

    def tail(self, hidden, cos, sin, cache):
        """Layers ``k ..`` on the kept positions (causal among them), then the final norm."""
        for layer in self.lm.layers[self.k :]:
            hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), past_key_values=cache)
        return self.lm.norm(hidden)
