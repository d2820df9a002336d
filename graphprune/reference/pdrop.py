"""PyramidDrop (arXiv 2410.17247), in plain eager PyTorch on an unmodified model, in mask mode (as ``reference.fastv``).

Written from the rule in ``graphprune/passes/pdrop.py``'s docstring, one sample at a time in Python and sharing no
code with the passes: every layer runs on all N positions; the layers of stage ``s`` get a mask that shows only the
real text positions and stage ``s``'s surviving visual ones. The layer before each stage also returns its float32
attention probabilities (``ranking_attention``), from which the stage keeps, among the previous survivors, the last
real position when visual and then the highest head-mean probabilities of the ``query`` row, sorted in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..methods import PDrop, n_keep
from ..models import adapter_for
from .fastv import _add_deepstack, _additive_mask, decoder_inputs, eager_attention, ranking_attention, visual_positions


@dataclass
class PDropReference:
    kept: list[torch.Tensor]  # per sample: sorted visual positions surviving every stage
    stages: list[list[torch.Tensor]]  # per stage, per sample: the sorted visual positions it keeps
    survivors: list[list[torch.Tensor]]  # per stage, per sample: the visual positions it ranked
    rankings: list[torch.Tensor]  # per stage [B, N]: the query row's head-mean probabilities
    scores: torch.Tensor  # [B, N]: stage + probability at the positions each stage ranked (the last one's)
    logits: torch.Tensor  # [B, N, V]; meaningful at the positions that reach the last layer
    key_visible: list[torch.Tensor]  # per layer [B, N]: the keys it attends (real text and its stage's visual)
    visual: torch.Tensor  # [B, N]
    position_ids: torch.Tensor  # [B, N], or [3, B, N] for M-RoPE


def _stage(method: PDrop, probs: torch.Tensor, visible: torch.Tensor, survivors: list[list[int]]) -> tuple:
    """One stage: per sample the kept survivors (sorted) and the query row's head-mean probabilities ``[B, N]``."""
    probs = probs.float().mean(dim=1)
    kept, scores = [], torch.zeros(visible.shape)
    for b, positions in enumerate(survivors):
        rows = visible[b].nonzero().flatten().tolist()
        if not rows:
            kept.append([])
            continue
        row = probs[b, rows[-1]] if method.query == "last" else probs[b, rows].mean(dim=0)
        scores[b] = row
        forced = [rows[-1]] if rows[-1] in positions else []
        others = sorted((j for j in positions if j not in forced), key=lambda j: (-float(row[j]), j))
        kept.append(sorted(forced + others[: n_keep(method.keep, len(positions)) - len(forced)]))
    return kept, scores


@torch.no_grad()
def pdrop_reference(
    model, method: PDrop, input_ids, attention_mask=None, *, generation=False, cache=None, **inputs
) -> PDropReference:
    """One PDrop prefill of an unmodified model, in mask mode (fills ``cache`` if given); as ``fastv_reference``."""
    lm = adapter_for(model).decoder(model)
    method.check_layers(len(lm.layers))
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    hidden, position_ids, deepstack = decoder_inputs(
        model, generation, input_ids=input_ids, attention_mask=attention_mask, **inputs
    )
    rope = lm.rotary_emb(hidden, position_ids=position_ids)
    real = attention_mask.bool()
    rows = torch.arange(input_ids.shape[1])
    visual = visual_positions(model, input_ids) & real
    survivors = [visual[b].nonzero().flatten().tolist() for b in range(real.shape[0])]
    visible, per_layer, stages, ranked, rankings = real.clone(), [], [], [], []
    scores = torch.zeros(real.shape)
    with eager_attention(lm.config):
        for layer_idx, layer in enumerate(lm.layers):
            mask = _additive_mask(visible, rows, hidden.dtype)
            if layer_idx + 1 in method.layers:
                with ranking_attention(lm.config):
                    _, probs = layer.self_attn(
                        hidden_states=layer.input_layernorm(hidden), position_embeddings=rope, attention_mask=mask
                    )
            per_layer.append(visible.clone())
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, past_key_values=cache)
            hidden = _add_deepstack(hidden, deepstack, layer_idx)
            if layer_idx + 1 in method.layers:
                stage = method.layers.index(layer_idx + 1)
                ranked.append([torch.tensor(positions, dtype=torch.long) for positions in survivors])
                survivors, row = _stage(method, probs, visible, survivors)
                scores = torch.where(visible, row + stage, scores)
                rankings.append(row)
                stages.append([torch.tensor(kept, dtype=torch.long) for kept in survivors])
                visible = real & ~visual
                for b, kept in enumerate(survivors):
                    visible[b, kept] = True
    logits = model.lm_head(lm.norm(hidden))
    return PDropReference(stages[-1], stages, ranked, rankings, scores, logits, per_layer, visual, position_ids)


@torch.no_grad()
def pdrop_reference_generate(
    model, method: PDrop, input_ids, attention_mask=None, max_new_tokens=8, sample=False, **inputs
):
    """PDrop generation in mask mode, positions as HF ``generate`` makes them (each new token's are the previous
    ones plus 1); greedy, or with ``sample=True`` multinomial from the softmax (HF's ``do_sample`` with ``top_k=0``,
    ``top_p=1``, ``temperature=1``) with torch's global generator. Returns prompt + new ids."""
    lm = adapter_for(model).decoder(model)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    cache = DynamicCache(config=lm.config)
    prefill = pdrop_reference(model, method, input_ids, attention_mask, generation=True, cache=cache, **inputs)
    ids, logits, visible = input_ids, prefill.logits[:, -1], prefill.key_visible
    next_position = prefill.position_ids[..., -1:] + 1
    for _ in range(max_new_tokens):
        if sample:
            token = torch.multinomial(logits.float().softmax(dim=-1), num_samples=1)
        else:
            token = logits.argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
        if ids.shape[1] == input_ids.shape[1] + max_new_tokens:
            break
        visible = [torch.cat([keys, torch.ones_like(token, dtype=torch.bool)], dim=1) for keys in visible]
        query = torch.tensor([visible[0].shape[1] - 1])
        hidden = lm.get_input_embeddings()(token)
        rope = lm.rotary_emb(hidden, position_ids=next_position)
        with eager_attention(lm.config):
            for layer, keys in zip(lm.layers, visible, strict=True):
                mask = _additive_mask(keys, query, hidden.dtype)
                hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, past_key_values=cache)
        logits = model.lm_head(lm.norm(hidden))[:, -1]
        next_position = next_position + 1
    return ids
