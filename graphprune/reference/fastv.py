"""FastV (arXiv 2403.06764), in plain eager PyTorch on an unmodified model.

*Mask mode*: every layer runs on all N positions; layers ``>= k`` get a mask that hides the dropped
visual keys. For the kept positions this equals physical pruning, and it shares no code with the
gather-based pass. Ranking uses layer ``k - 1``'s attention probabilities from its own query and key,
computed in float32 (``ranking_attention``: HF's eager attention with float32 logits and softmax).

Works for any VLM whose decoder (where its adapter says: ``model.model.language_model``, Idefics3's
``model.model.text_model``) has Llama-style layers (LLaVA, LLaVA-NeXT, LLaVA-OneVision, Video-LLaVA, Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, InternVL, Idefics3, SmolVLM): the decoder's input embeddings, position ids (M-RoPE rows
included) and DeepStack features are read from one call of the unmodified model, so each family's own code
forms them; visual positions are those holding the config's image or video token id.
DeepStack features are added after their layers at every visual position, dropped ones included: in
mask mode a dropped position is hidden from the kept ones, so only the kept positions' features matter.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, DynamicCache

from ..methods import FastV, n_keep
from ..models import adapter_for
from ..runtime import STATE_ATTR


@dataclass
class FastVReference:
    kept: list[torch.Tensor]  # per sample: sorted kept visual positions
    scores: torch.Tensor  # [B, N]
    logits: torch.Tensor  # [B, N, V]; meaningful at kept positions
    key_visible: torch.Tensor  # [B, N]: what layers >= k may attend to (real and kept)
    visual: torch.Tensor  # [B, N]: visual positions
    position_ids: torch.Tensor  # [B, N], or [3, B, N] for M-RoPE: the decoder's positions


@contextlib.contextmanager
def eager_attention(config):
    """HF attention modules read ``config._attn_implementation`` at call time; eager returns the weights."""
    saved = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = saved


RANKING_ATTENTION = "graphprune_reference_float32"


def _float32_probabilities(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """HF's eager attention with the logits and softmax in float32, returning float32 probabilities.

    In float32 it computes what eager computes; in float16/bfloat16 the ranking is not rounded to the
    model's dtype (whose ties would decide the ranking).
    """
    groups = query.shape[1] // key.shape[1]
    keys, values = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    logits = torch.matmul(query.float(), keys.float().transpose(2, 3)) * scaling
    if attention_mask is not None:
        logits = logits + attention_mask.float()
    probabilities = logits.softmax(dim=-1)
    output = torch.matmul(probabilities.to(query.dtype), values).transpose(1, 2).contiguous()
    return output, probabilities


AttentionInterface.register(RANKING_ATTENTION, _float32_probabilities)


@contextlib.contextmanager
def ranking_attention(config):
    """While active, attention modules of ``config`` return float32 probabilities (``_float32_probabilities``)."""
    saved = config._attn_implementation
    config._attn_implementation = RANKING_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = saved


def input_embeddings(model, input_ids, pixel_values):
    """LLaVA's decoder input: token embeddings with the projected image features at the image tokens."""
    embeds = model.get_input_embeddings()(input_ids)
    if pixel_values is None:
        return embeds
    config = model.config
    features = model.model.get_image_features(
        pixel_values=pixel_values,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    ).pooler_output
    features = torch.cat(list(features), dim=0).to(embeds.dtype)
    return embeds.masked_scatter((input_ids == config.image_token_id)[..., None], features)


def _additive_mask(key_visible: torch.Tensor, query_positions: torch.Tensor, dtype) -> torch.Tensor:
    """``[B, 1, Q, K]``: query q may see key j iff ``key_visible[b, j]`` and ``j <= query_positions[q]``."""
    keys = torch.arange(key_visible.shape[1], device=key_visible.device)
    allowed = key_visible[:, None, None, :] & (keys[None, None, None, :] <= query_positions[None, None, :, None])
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _select(scores: torch.Tensor, visual: torch.Tensor, last: list[int], keep: float) -> list[torch.Tensor]:
    """Per sample, ``n_keep`` visual positions: ``last[b]`` (the last real position) when it is visual, then the
    best-scoring others, ties to the earlier position."""
    kept = []
    for b in range(scores.shape[0]):
        positions = visual[b].nonzero().flatten().tolist()
        forced = [last[b]] if last[b] in positions else []
        others = sorted((j for j in positions if j not in forced), key=lambda j: (-float(scores[b, j]), j))
        count = n_keep(keep, len(positions)) - len(forced)
        kept.append(torch.tensor(sorted(forced + others[:count]), dtype=torch.long))
    return kept


def _add_deepstack(hidden: torch.Tensor, deepstack: list, layer_idx: int) -> torch.Tensor:
    """``hidden`` plus layer ``layer_idx``'s DeepStack features at their visual positions (if it has any)."""
    if layer_idx >= len(deepstack):
        return hidden
    positions, features = deepstack[layer_idx]
    hidden = hidden.clone()
    hidden[positions] += features.to(hidden.dtype)
    return hidden


class _DecoderCalled(Exception):
    def __init__(self, kwargs):
        super().__init__("the decoder was called")
        self.kwargs = kwargs


def _stop_at_decoder(module, args, kwargs):
    raise _DecoderCalled(kwargs)


@torch.no_grad()
def decoder_inputs(
    model, generation: bool, decoder: torch.nn.Module | None = None, **inputs
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """``(inputs_embeds, position_ids, deepstack)`` as the unmodified model gives them to ``decoder`` (default: where
    its adapter says);
    ``deepstack[i]`` (Qwen3-VL) is ``(visual_pos_masks, features)``, what is added after layer i.

    Read by a pre-hook on the decoder that stops the call there: in ``model(**inputs)``, or with
    ``generation=True`` in the prefill of ``model.generate(**inputs)`` (HF forms positions differently for the
    two: ``arange`` in a forward, ``attention_mask.cumsum(-1) - 1`` in generate). Positions the decoder would
    default itself are filled in (``arange``); HF generate's leading text row of M-RoPE positions, which the
    decoder reads only for packed sequences without an attention mask, is dropped.
    """
    if hasattr(model, STATE_ATTR):
        raise ValueError("the reference runs on an unmodified model; call graphprune.restore(model) first")
    decoder = decoder if decoder is not None else adapter_for(model).decoder(model)
    hook = decoder.register_forward_pre_hook(_stop_at_decoder, with_kwargs=True)
    try:
        if generation:
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
        else:
            model(**inputs)
        raise AssertionError("the model never called its decoder")
    except _DecoderCalled as call:
        embeds, positions = call.kwargs["inputs_embeds"], call.kwargs.get("position_ids")
        features = call.kwargs.get("deepstack_visual_embeds") or []
        deepstack = [(call.kwargs["visual_pos_masks"], added) for added in features]
    finally:
        hook.remove()
    batch, seq_len = embeds.shape[:2]
    if positions is None:
        positions = torch.arange(seq_len)[None].expand(batch, seq_len)
    elif positions.dim() == 3 and positions.shape[0] == 4:
        positions = positions[1:]
    return embeds, positions, deepstack


def visual_positions(model, input_ids: torch.Tensor) -> torch.Tensor:
    """``[B, N]``: positions holding the config's image or video token id."""
    token_ids = [getattr(model.config, name, None) for name in ("image_token_id", "video_token_id")]
    return torch.isin(input_ids, torch.tensor([token for token in token_ids if token is not None]))


@torch.no_grad()
def ranked(probs: torch.Tensor, real: torch.Tensor, visual: torch.Tensor, method: FastV) -> tuple:
    """``(scores [B, N], kept per sample, key_visible [B, N])`` from layer ``k - 1``'s attention ``probs [B, H, N, N]``:
    the head mean (float32) of the last real row or of the mean over real rows, the kept visual positions (the last
    real one if visual, then the top others), and the keys layers ``>= k`` see (real text and kept visual
    positions)."""
    probs, batch = probs.float().mean(dim=1), probs.shape[0]
    last = [int(real[b].nonzero().max()) if real[b].any() else -1 for b in range(batch)]
    if method.query == "last":
        scores = probs[torch.arange(batch), torch.tensor(last)]
    else:
        scores = torch.stack([probs[b][real[b]].mean(dim=0) for b in range(batch)])
    kept = _select(scores, visual, last, method.keep)
    key_visible = real & ~visual
    for b in range(batch):
        key_visible[b, kept[b]] = real[b, kept[b]]
    return scores, kept, key_visible


@dataclass
class MaskModePrefill:
    """One mask-mode prefill of an unmodified decoder: its inputs, and the hidden states after the layers run so far.

    ``run`` advances it layer by layer, each layer attending the keys ``key_visible`` allows (causally), as HF's
    eager attention computes; every method's reference ranks between two ``run`` calls."""

    model: torch.nn.Module
    lm: torch.nn.Module  # the decoder
    hidden: torch.Tensor  # [B, N, D]: entering layer ``done``
    position_ids: torch.Tensor  # [B, N], or [3, B, N] for M-RoPE
    rope: tuple
    deepstack: list
    real: torch.Tensor  # [B, N] bool: not padding
    visual: torch.Tensor  # [B, N] bool
    cache: DynamicCache | None
    done: int = 0  # layers run so far

    def mask(self, key_visible: torch.Tensor) -> torch.Tensor:
        """The additive ``[B, 1, N, N]`` mask of every query over the keys ``key_visible`` holds."""
        return _additive_mask(key_visible, torch.arange(self.hidden.shape[1]), self.hidden.dtype)

    def run(self, until: int, key_visible: torch.Tensor) -> None:
        """Layers ``done .. until - 1``, their keys restricted to ``key_visible`` (and causal)."""
        mask = self.mask(key_visible)
        with eager_attention(self.lm.config):
            for layer_idx in range(self.done, until):
                self.hidden = self.lm.layers[layer_idx](
                    self.hidden, attention_mask=mask, position_embeddings=self.rope, past_key_values=self.cache
                )
                self.hidden = _add_deepstack(self.hidden, self.deepstack, layer_idx)
        self.done = until

    def result(self, kept: list[torch.Tensor], scores: torch.Tensor, key_visible: torch.Tensor) -> FastVReference:
        """The remaining layers on ``key_visible``; the logits and what was kept."""
        self.run(len(self.lm.layers), key_visible)
        logits = self.model.lm_head(self.lm.norm(self.hidden))
        return FastVReference(kept, scores, logits, key_visible, self.visual, self.position_ids)


def mask_mode_prefill(model, method, input_ids, attention_mask, generation: bool, cache, inputs) -> MaskModePrefill:
    """A ``MaskModePrefill`` before its first layer; ``inputs`` are the model's other inputs (``pixel_values``,
    ``image_grid_thw``, ...), positions those of a forward, or with ``generation=True`` of ``generate``'s prefill."""
    lm = adapter_for(model).decoder(model)
    method.check_layers(len(lm.layers))
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    hidden, position_ids, deepstack = decoder_inputs(
        model, generation, input_ids=input_ids, attention_mask=attention_mask, **inputs
    )
    rope = lm.rotary_emb(hidden, position_ids=position_ids)
    visual = visual_positions(model, input_ids)
    return MaskModePrefill(model, lm, hidden, position_ids, rope, deepstack, attention_mask.bool(), visual, cache)


def fastv_reference(
    model, method: FastV, input_ids, attention_mask=None, *, generation=False, cache=None, **inputs
) -> FastVReference:
    """One FastV prefill of an unmodified model, in mask mode (fills ``cache`` if given); ``inputs`` and positions
    as ``mask_mode_prefill`` takes them."""
    prefill = mask_mode_prefill(model, method, input_ids, attention_mask, generation, cache, inputs)
    prefill.run(method.k - 1, prefill.real)
    layer = prefill.lm.layers[method.k - 1]
    with ranking_attention(prefill.lm.config):
        _, probs = layer.self_attn(
            hidden_states=layer.input_layernorm(prefill.hidden),
            position_embeddings=prefill.rope,
            attention_mask=prefill.mask(prefill.real),
        )
    prefill.run(method.k, prefill.real)
    scores, kept, key_visible = ranked(probs, prefill.real, prefill.visual, method)
    return prefill.result(kept, scores, key_visible)


@torch.no_grad()
def fastv_reference_generate(
    model, method: FastV, input_ids, attention_mask=None, max_new_tokens=8, sample=False, prefill=None, **inputs
):
    """FastV generation in mask mode, positions as HF ``generate`` makes them; returns prompt + new ids.

    Each new token's position ids are the previous ones plus 1 (every row, for M-RoPE), as HF
    ``generate`` advances them. Greedy, or with ``sample=True`` plain multinomial sampling from the
    softmax (HF's ``do_sample`` with ``top_k=0``, ``top_p=1``, ``temperature=1``), drawing from
    torch's global generator as HF does. ``prefill`` (default ``fastv_reference``) makes the mask-mode prefill of
    another method that prunes the same way (``reference.dart``).
    """
    lm = adapter_for(model).decoder(model)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    cache = DynamicCache(config=lm.config)
    prefill = (prefill or fastv_reference)(
        model, method, input_ids, attention_mask, generation=True, cache=cache, **inputs
    )
    ids, logits = input_ids, prefill.logits[:, -1]
    real, key_visible = attention_mask.bool(), prefill.key_visible
    next_position = prefill.position_ids[..., -1:] + 1
    for _ in range(max_new_tokens):
        if sample:
            token = torch.multinomial(logits.float().softmax(dim=-1), num_samples=1)
        else:
            token = logits.argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
        if ids.shape[1] == input_ids.shape[1] + max_new_tokens:
            break
        real = torch.cat([real, torch.ones_like(token, dtype=torch.bool)], dim=1)
        key_visible = torch.cat([key_visible, torch.ones_like(token, dtype=torch.bool)], dim=1)
        query = torch.tensor([real.shape[1] - 1])
        hidden = lm.get_input_embeddings()(token)
        rope = lm.rotary_emb(hidden, position_ids=next_position)
        with eager_attention(lm.config):
            for layer_idx, layer in enumerate(lm.layers):
                visible = real if layer_idx < method.k else key_visible
                mask = _additive_mask(visible, query, hidden.dtype)
                hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, past_key_values=cache)
        logits = model.lm_head(lm.norm(hidden))[:, -1]
        next_position = next_position + 1
    return ids
