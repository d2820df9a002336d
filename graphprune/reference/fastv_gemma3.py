"""FastV on Gemma 3 in mask mode, with Gemma 3's attention rules written out (not read from HF's masks).

Gemma 3's decoder layers are sliding-window (``layer_types[i] == "sliding_attention"``) or global, each with its
own RoPE. Key ``j`` is visible to query ``q`` when ``j`` is real and either ``j <= q`` or both are tokens of the
same image (a run of ``token_type_ids == 1``: bidirectional); a sliding layer also needs ``j > q - window``,
distances on the ORIGINAL positions (indices of the unpruned sequence). FastV's layers ``>= k`` further hide
the dropped visual keys. In decode, a sliding layer's cache holds only its last ``window - 1`` positions (HF's
``DynamicSlidingWindowLayer``), so a new token attends the last ``window`` positions that are visible.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..methods import FastV
from .fastv import FastVReference, decoder_inputs, eager_attention, ranked, visual_positions


def image_blocks(token_type_ids: torch.Tensor) -> torch.Tensor:
    """``[B, N]``: the image each image token belongs to (a run of ``token_type_ids == 1``), -1 elsewhere."""
    image = token_type_ids == 1
    starts = image & ~torch.cat([torch.zeros_like(image[:, :1]), image[:, :-1]], dim=1)
    return torch.where(image, starts.long().cumsum(dim=1), -1)


def allowed_keys(
    key_visible: torch.Tensor, blocks: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor, window: int | None
) -> torch.Tensor:
    """``[B, 1, Q, K]`` bool: may query position ``queries[i]`` attend key position ``keys[j]`` (Gemma 3's rules).

    ``key_visible`` and ``blocks`` are indexed by position; ``window`` None for a global layer."""
    q, j = queries[None, None, :, None], keys[None, None, None, :]
    query_block = blocks[:, queries][:, None, :, None]
    same_image = (query_block == blocks[:, keys][:, None, None, :]) & (query_block >= 0)
    allowed = key_visible[:, keys][:, None, None, :] & ((j <= q) | same_image)
    return allowed & (j > q - window) if window is not None else allowed


def _additive(allowed: torch.Tensor, dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def _window(config, layer_idx: int) -> int | None:
    return config.sliding_window if config.layer_types[layer_idx] == "sliding_attention" else None


def _logits(model, lm, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.lm_head(lm.norm(hidden))
    cap = model.config.get_text_config().final_logit_softcapping
    return logits if cap is None else torch.tanh(logits / cap) * cap


@torch.no_grad()
def fastv_gemma3_reference(
    model, method: FastV, input_ids, attention_mask, token_type_ids, *, generation=False, cache=None, **inputs
) -> FastVReference:
    """One FastV prefill of an unmodified Gemma 3 model in mask mode (fills ``cache`` if given); ``inputs`` are
    its other inputs (``pixel_values``). Positions are those of a forward, or with ``generation=True`` of
    ``generate``'s prefill."""
    lm = model.model.language_model
    config = lm.config
    method.check_layers(len(lm.layers))
    seq_len = input_ids.shape[1]
    hidden, position_ids, _ = decoder_inputs(  # Gemma 3 has no adapter (refused): its decoder named here
        model,
        generation,
        lm,
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        **inputs,
    )
    rope = {kind: lm.rotary_emb(hidden, position_ids, kind) for kind in set(config.layer_types)}
    real, blocks, rows = attention_mask.bool(), image_blocks(token_type_ids), torch.arange(seq_len)
    visual = visual_positions(model, input_ids) & real

    def masks(key_visible):
        return [
            _additive(allowed_keys(key_visible, blocks, rows, rows, _window(config, i)), hidden.dtype)
            for i in range(len(lm.layers))
        ]

    def run(layers, key_visible, hidden):
        layer_masks = masks(key_visible)
        for i in layers:
            kind = config.layer_types[i]
            hidden = lm.layers[i](
                hidden,
                attention_mask=layer_masks[i],
                position_embeddings=rope[kind],
                position_ids=position_ids,
                past_key_values=cache,
            )
        return hidden

    with eager_attention(config):
        hidden = run(range(method.k - 1), real, hidden)
        layer = lm.layers[method.k - 1]
        _, probs = layer.self_attn(
            hidden_states=layer.input_layernorm(hidden),
            position_embeddings=rope[config.layer_types[method.k - 1]],
            attention_mask=masks(real)[method.k - 1],
        )
        hidden = run([method.k - 1], real, hidden)
        scores, kept, key_visible = ranked(probs, real, visual, method)
        hidden = run(range(method.k, len(lm.layers)), key_visible, hidden)
    return FastVReference(kept, scores, _logits(model, lm, hidden), key_visible, visual, position_ids)


@torch.no_grad()
def fastv_gemma3_reference_generate(
    model, method: FastV, input_ids, attention_mask, token_type_ids, max_new_tokens=8, **inputs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy FastV generation of an unmodified Gemma 3 model in mask mode, positions as HF ``generate`` makes
    them; returns prompt + new ids, and each new token's logits ``[B, T, V]``. A sliding layer attends only
    what its window-sized cache holds."""
    lm = model.model.language_model
    config = lm.config
    cache = DynamicCache(config=config)
    prefill = fastv_gemma3_reference(
        model, method, input_ids, attention_mask, token_type_ids, generation=True, cache=cache, **inputs
    )
    ids, logits = input_ids, prefill.logits[:, -1]
    steps = [logits]
    real, key_visible, blocks = attention_mask.bool(), prefill.key_visible, image_blocks(token_type_ids)
    position = prefill.position_ids[..., -1:] + 1
    for _ in range(max_new_tokens - 1):
        token = logits.argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
        new = torch.ones_like(token, dtype=torch.bool)
        real, key_visible = torch.cat([real, new], dim=1), torch.cat([key_visible, new], dim=1)
        blocks = torch.cat([blocks, torch.full_like(token, -1)], dim=1)
        total = ids.shape[1]
        query = torch.tensor([total - 1])
        hidden = lm.get_input_embeddings()(token)
        with eager_attention(config):
            for i, layer in enumerate(lm.layers):
                window = _window(config, i)
                keys = torch.arange(max(total - window, 0) if window is not None else 0, total)
                visible = real if i < method.k else key_visible
                mask = _additive(allowed_keys(visible, blocks, query, keys, window), hidden.dtype)
                kind = config.layer_types[i]
                hidden = layer(
                    hidden,
                    attention_mask=mask,
                    position_embeddings=lm.rotary_emb(hidden, position, kind),
                    position_ids=position,
                    past_key_values=cache,
                )
        logits = _logits(model, lm, hidden)[:, -1]
        steps.append(logits)
        position = position + 1
    return torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1), torch.stack(steps, dim=1)
