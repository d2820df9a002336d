"""DART (arXiv 2502.11494), in plain eager PyTorch on an unmodified model, in mask mode (as ``reference.fastv``).

Written from the rule in ``graphprune/passes/dart.py``'s docstring, one sample at a time in Python and sharing no
code with the pass: pivots by sorting the L1 norms of the keys that layer ``k - 1`` caches, duplication by
``torch.nn.functional.cosine_similarity`` of the decoder's final norm applied to the hidden states entering layer
``k`` (the authors' ``norm(h)``), the kept visual positions by sorting. Layers ``>= k`` get a mask that hides the
dropped visual keys, as FastV's reference does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from ..methods import DART, n_keep
from ..models import adapter_for
from .fastv import FastVReference, fastv_reference_generate, mask_mode_prefill

PIVOT_SCORE = 2.0  # plus pivots - rank: the score the pass reports at a visual pivot


def _by_norm(positions: list[int], norms: torch.Tensor) -> list[int]:
    """``positions`` from the largest key norm down, ties to the earlier position."""
    return sorted(positions, key=lambda j: (-float(norms[j]), j))


def _select(method: DART, visual: list[int], real: list[int], norms: torch.Tensor, features: torch.Tensor):
    """One sample's kept visual positions (sorted) and ``{position: score}`` for its visual positions."""
    forced = [real[-1]] if real[-1] in visual else []
    room = n_keep(method.keep, len(visual)) - len(forced)
    visual_pivots = _by_norm([j for j in visual if j not in forced], norms)[: method.pivots]
    text = [j for j in real if j > visual[0] and j not in visual]
    pivots = visual_pivots + _by_norm(text, norms)[: method.text_pivots]
    others = [j for j in visual if j not in forced and j not in visual_pivots]
    duplication = {j: float("-inf") for j in others}
    for p in pivots:
        for j in others:
            duplication[j] = max(duplication[j], float(F.cosine_similarity(features[j], features[p], dim=0)))
    kept_pivots = visual_pivots[:room]
    chosen = sorted(others, key=lambda j: (duplication[j], j))[: room - len(kept_pivots)]
    scores = {j: PIVOT_SCORE + method.pivots - rank for rank, j in enumerate(visual_pivots)}
    scores |= {j: -duplication[j] for j in others}
    return sorted(forced + kept_pivots + chosen), scores


@torch.no_grad()
def dart_reference(
    model, method: DART, input_ids, attention_mask=None, *, generation=False, cache=None, **inputs
) -> FastVReference:
    """One DART prefill of an unmodified model, in mask mode (fills ``cache`` if given); as ``fastv_reference``."""
    cache = cache if cache is not None else DynamicCache(config=adapter_for(model).decoder(model).config)
    prefill = mask_mode_prefill(model, method, input_ids, attention_mask, generation, cache, inputs)
    prefill.run(method.k, prefill.real)
    norms = cache.layers[method.k - 1].keys.float().abs().sum(dim=(1, 3))
    features = prefill.lm.norm(prefill.hidden).float()
    real, visual = prefill.real, prefill.visual
    scores, kept = torch.zeros(real.shape), []
    key_visible = real & ~visual
    for b in range(real.shape[0]):
        positions = (visual[b] & real[b]).nonzero().flatten().tolist()
        if not positions:
            kept.append(torch.zeros(0, dtype=torch.long))
            continue
        chosen, sample_scores = _select(method, positions, real[b].nonzero().flatten().tolist(), norms[b], features[b])
        kept.append(torch.tensor(chosen, dtype=torch.long))
        key_visible[b, kept[b]] = True
        for j, score in sample_scores.items():
            scores[b, j] = score
    return prefill.result(kept, scores, key_visible)


def dart_reference_generate(
    model, method: DART, input_ids, attention_mask=None, max_new_tokens=8, sample=False, **inputs
):
    """DART generation in mask mode (``fastv_reference_generate`` with ``dart_reference``'s prefill)."""
    return fastv_reference_generate(
        model, method, input_ids, attention_mask, max_new_tokens, sample, prefill=dart_reference, **inputs
    )
