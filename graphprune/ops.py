"""Tensor functions that the passes insert into decoder graphs as ``graphprune_*`` nodes.

Each is plain torch code, so an FX graph that calls them runs eagerly, compiles under
``torch.compile`` and traces again under ``torch.export``. All index tensors are per sample:
``index[b, j]`` is the original sequence position held by slot ``j`` of sample ``b``.
"""

from __future__ import annotations

import torch

from .methods import n_keep


def running_count(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """``mask.cumsum(dim)`` as int64, summed in float32 (exact below 2**24): TensorRT's CumSum takes floats only."""
    return mask.float().cumsum(dim).long()


def clamp_int(x: torch.Tensor, low: int | None = None, high: int | None = None) -> torch.Tensor:
    """``x.clamp(low, high)`` for an integer ``x``, exported as Max and Min: TensorRT's Clip takes floats only."""
    if low is not None:
        x = torch.maximum(x, x.new_full((), low))
    return x if high is None else torch.minimum(x, x.new_full((), high))


def fastv_scores(
    query_states: torch.Tensor,
    key_states: torch.Tensor,
    attention_mask: torch.Tensor,
    scaling: float,
    query: str,
    layer_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """FastV scores ``[B, N]``: the head-mean attention probability that the query row(s) give each position.

    ``query_states`` ``[B, H, N, D]`` and ``key_states`` ``[B, H_kv, N, D]`` are the layer's own,
    after RoPE; grouped K is repeated to every query head. The mask is causal plus padding, as the
    layer's own, or the layer's own 4-D ``layer_mask [B, 1, N, N]`` (boolean or additive; Gemma 3's sliding
    window and image blocks) where given. ``query="last"`` uses the last real position's row, ``"mean"`` the
    mean over the rows of all real positions. Only those rows are computed, in float32.
    """
    batch, n_heads, seq_len, _ = query_states.shape
    keys = key_states.repeat_interleave(n_heads // key_states.shape[1], dim=1).float()
    real = attention_mask.bool()
    positions = torch.arange(seq_len, device=query_states.device)
    allowed = None if layer_mask is None else (layer_mask if layer_mask.dtype == torch.bool else layer_mask == 0)[:, 0]
    if query == "last":
        last = torch.where(real, positions, 0).amax(dim=-1)
        rows = query_states.gather(2, last.view(batch, 1, 1, 1).expand(batch, n_heads, 1, query_states.shape[-1]))
        if allowed is None:
            visible = real & (positions[None, :] <= last[:, None])
        else:
            visible = allowed.gather(1, last.view(batch, 1, 1).expand(batch, 1, seq_len))[:, 0]
        logits = (rows.float() @ keys.transpose(-1, -2)) * scaling
        logits = logits.masked_fill(~visible[:, None, None, :], float("-inf"))
        return logits.softmax(dim=-1).mean(dim=1)[:, 0]
    logits = (query_states.float() @ keys.transpose(-1, -2)) * scaling
    causal = real[:, None, :] & (positions[None, :, None] >= positions[None, None, :])
    visible = causal if allowed is None else allowed
    visible = visible | ~real[:, :, None]  # padding rows: any finite row, excluded from the mean below
    probs = logits.masked_fill(~visible[:, None], float("-inf")).softmax(dim=-1).mean(dim=1)
    real_rows = real.to(probs.dtype)
    return (probs * real_rows[:, :, None]).sum(dim=1) / real_rows.sum(dim=1, keepdim=True).clamp(min=1)


def keep_counts(visual_mask: torch.Tensor, keep: float) -> torch.Tensor:
    """``n_keep`` of each sample's visual count ``[B]``."""
    return n_keep(keep, visual_mask.sum(dim=-1))


def _counts_and_budget(candidates: torch.Tensor, keep: float, most: int | None) -> tuple[torch.Tensor, int]:
    """Per-sample kept counts ``[B]`` of the ``candidates`` mask, and the top-k's K (``best_per_sample``'s budget).

    K is the axis length; with ``most`` (the most candidates a sample may hold, for export) it is the
    constant ``max(n_keep(keep, most), 1)`` and the counts come from a constant table (no float64 in
    the exported graph); samples must then hold at most ``most`` candidates.
    """
    if most is None:
        return keep_counts(candidates, keep), candidates.shape[-1]
    table = torch.tensor([n_keep(keep, n) for n in range(most + 1)], device=candidates.device)
    return table[clamp_int(candidates.sum(dim=-1), high=most)], max(n_keep(keep, most), 1)


def best_per_sample(ranked: torch.Tensor, counts: torch.Tensor, budget: int) -> torch.Tensor:
    """The ``counts`` best entries along the last axis of ``ranked`` (invalid ones ``-inf``), ties to the lower index.

    No sort (ONNX has no stable one): a top-k of ``budget`` (>= every count) finds the cut score, a
    cumulative sum gives the ties at the cut to the lowest indices.
    """
    padded = torch.cat([ranked, ranked.new_full((*ranked.shape[:-1], budget), float("-inf"))], dim=-1)
    cut = padded.topk(budget, dim=-1).values.gather(-1, clamp_int(counts - 1, low=0))
    valid = ranked > float("-inf")
    above = valid & (ranked > cut)
    at_cut = valid & (ranked == cut)
    room = counts - above.sum(dim=-1, keepdim=True)
    return above | (at_cut & (running_count(at_cut, -1) <= room))


def fastv_select(
    scores: torch.Tensor,
    visual_mask: torch.Tensor,
    attention_mask: torch.Tensor,
    slots: torch.Tensor,
    keep: float,
    max_visual: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the kept positions and lay them out in ``len(slots)`` left-padded slots per sample.

    Kept: every real non-visual position plus ``keep_counts`` visual ones, in their original order: the
    sample's last real position when it is visual (its row gives the next token), and the best-scoring
    others (ties to the earlier position). Padding positions, which no real position may
    attend to, are dropped too, so a padded sample needs no more slots than its real tokens.
    Returns ``index [B, S]`` (original position per slot)
    and ``valid [B, S]`` (False for the padding slots at the front of shorter samples; their index
    repeats the sample's first kept position so that they hold finite values).

    No sort: ``best_per_sample`` cuts, and a scatter lays the kept positions out. The top-k's K is the sequence
    length, or, when ``max_visual`` (the most visual positions a sample may hold) is given, the
    constant ``ceil(keep * max_visual)`` that TensorRT needs (``_counts_and_budget``).
    """
    batch, seq_len = scores.shape
    real = attention_mask.bool()
    positions = torch.arange(seq_len, device=scores.device).expand(batch, seq_len)
    last = torch.where(real, positions, 0).amax(dim=-1, keepdim=True)
    forced = visual_mask & real & (positions == last)  # the last real position, when visual: always kept
    counts, budget = _counts_and_budget(visual_mask, keep, max_visual)
    ranked = torch.where(visual_mask & ~forced, scores.float(), float("-inf"))
    chosen = best_per_sample(ranked, (counts - forced.sum(dim=-1))[:, None], budget) | forced
    kept = real & (~visual_mask | chosen)
    n_slots = slots.shape[0]
    padding = n_slots - kept.sum(dim=-1, keepdim=True)
    target = torch.where(kept, running_count(kept, -1) - 1 + padding, n_slots)  # dropped ones go to a spare slot
    first = positions.masked_fill(~kept, seq_len - 1).amin(dim=-1, keepdim=True)
    index = first.expand(batch, n_slots + 1).scatter(1, target, positions)[:, :n_slots]
    return index, slots[None, :] >= padding


DART_PIVOT_SCORE = 2.0  # above every -cosine: DART's visual pivots are kept first
_COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's


def key_norms(key_states: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` float32: the L1 norm of each position's key ``[B, H_kv, N, D]`` over every key/value head."""
    return key_states.float().abs().sum(dim=(1, 3))


def dart_scores(
    hidden: torch.Tensor,
    key_states: torch.Tensor,
    norm_weight: torch.Tensor,
    visual_mask: torch.Tensor,
    attention_mask: torch.Tensor,
    pivots: int,
    text_pivots: int,
) -> torch.Tensor:
    """DART scores ``[B, N]`` (``graphprune/passes/dart.py``'s docstring, steps 2-5) from the hidden states entering
    layer ``k`` ``[B, N, d]``, layer ``k - 1``'s keys ``[B, H_kv, N, D]`` and the final norm's weight ``[d]``."""
    return dart_scores_by_norms(
        hidden, key_norms(key_states), norm_weight, visual_mask, attention_mask, pivots, text_pivots
    )


def dart_scores_by_norms(
    hidden: torch.Tensor,
    norms: torch.Tensor,
    norm_weight: torch.Tensor,
    visual_mask: torch.Tensor,
    attention_mask: torch.Tensor,
    pivots: int,
    text_pivots: int,
) -> torch.Tensor:
    """``dart_scores`` from the key norms ``[B, N]`` (``key_norms``, or their sum over tensor-parallel ranks, which
    hold a share of the key heads each); float32."""
    batch, seq_len = visual_mask.shape
    real = attention_mask.bool()
    visual = visual_mask & real
    positions = torch.arange(seq_len, device=hidden.device).expand(batch, seq_len)
    last = torch.where(real, positions, 0).amax(dim=-1, keepdim=True)
    visual_pivots = _top(norms, visual & (positions != last), pivots)
    pivot = visual_pivots
    if text_pivots:
        first = positions.masked_fill(~visual, seq_len).amin(dim=-1, keepdim=True)
        pivot = pivot | _top(norms, real & ~visual & (positions > first), text_pivots)
    # a visual pivot's rank among the sample's visual pivots (0: the largest norm; ties: the earlier)
    index, valid = _rows(visual_pivots, pivots)
    pivot_norms, pivot_positions = norms.gather(1, index)[:, None, :], index[:, None, :]
    ahead = (pivot_norms > norms[:, :, None]) | (
        (pivot_norms == norms[:, :, None]) & (pivot_positions < positions[..., None])
    )
    rank = (ahead & valid[:, None, :]).sum(dim=-1)
    # duplication: the largest cosine similarity to a pivot's features
    features = hidden.float() * norm_weight.float()
    unit = features / features.norm(dim=-1, keepdim=True).clamp(min=_COSINE_EPS)
    index, valid = _rows(pivot, pivots + text_pivots)
    pivot_units = unit.gather(1, index[:, :, None].expand(-1, -1, unit.shape[-1]))
    similarity = (unit @ pivot_units.transpose(1, 2)).masked_fill(~valid[:, None, :], float("-inf"))
    scores = torch.where(visual_pivots, DART_PIVOT_SCORE + (pivots - rank).float(), -similarity.amax(dim=-1))
    return torch.where(visual, scores, 0.0)


def _top(values: torch.Tensor, candidates: torch.Tensor, most: int) -> torch.Tensor:
    """``[B, N]`` bool: the ``most`` candidates with the largest ``values`` (all where fewer), ties to the earlier."""
    counts = candidates.new_full((candidates.shape[0], 1), most, dtype=torch.long)
    return best_per_sample(torch.where(candidates, values, float("-inf")), counts, most) & candidates


def _rows(mask: torch.Tensor, most: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions where ``mask [B, N]`` holds (at most ``most`` per sample), ascending: ``index [B, most]`` and
    ``valid [B, most]`` (False for the spare columns, whose index is 0)."""
    batch, seq_len = mask.shape
    earlier = (seq_len - torch.arange(seq_len, device=mask.device)).float().expand(batch, seq_len)  # exact < 2**24
    order = torch.cat([torch.where(mask, earlier, 0.0), earlier.new_zeros(batch, most)], dim=-1).topk(most, dim=-1)
    valid = order.values > 0
    return torch.where(valid, order.indices, 0), valid


def gather_sequence(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` (batch first) gathered along sequence axis ``dim`` with the per-sample ``index [B, S]``."""
    shape = [index.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = index.shape[1]
    expanded = list(x.shape)
    expanded[0], expanded[dim] = index.shape[0], index.shape[1]
    return x.gather(dim, index.view(shape).expand(expanded))


def _hide(mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """``mask`` (boolean or additive) with the keys where ``hidden`` is True masked out.

    Boolean masks use logical ops, not ``masked_fill``: ONNX Runtime has no boolean ``Where``.
    """
    if mask.dtype == torch.bool:
        return mask & ~hidden
    return mask.masked_fill(hidden, torch.finfo(mask.dtype).min)


def _show(mask: torch.Tensor, shown: torch.Tensor) -> torch.Tensor:
    """``mask`` (boolean or additive) with the keys where ``shown`` is True visible."""
    if mask.dtype == torch.bool:
        return mask | shown
    return mask.masked_fill(shown, 0.0)


def gather_attention_mask(mask: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """A ``[B, 1, N, N]`` prefill mask (boolean or additive) restricted to the kept slots on both axes.

    Keys of padding slots are hidden from every row; each padding slot's row sees only itself, so
    no row is fully masked and padding slots stay finite.
    """
    pruned = _hide(gather_sequence(gather_sequence(mask, index, 2), index, 3), ~valid[:, None, None, :])
    eye = torch.eye(index.shape[1], dtype=torch.bool, device=mask.device)
    padding_rows = (~valid)[:, None, :, None]
    return _show(_hide(pruned, padding_rows & ~eye), padding_rows & eye)


def gather_decode_mask(mask: torch.Tensor, cache_index: torch.Tensor, cache_valid: torch.Tensor) -> torch.Tensor:
    """A decode-step mask ``[B, 1, T, P + T]`` restricted to the pruned cache's ``P'`` slots plus the T new keys."""
    new_tokens = mask.shape[2]
    past = mask.shape[-1] - new_tokens
    new_positions = torch.arange(past, past + new_tokens, device=mask.device).expand(cache_index.shape[0], -1)
    index = torch.cat([cache_index, new_positions], dim=1)
    valid = torch.cat([cache_valid, torch.ones_like(new_positions, dtype=torch.bool)], dim=1)
    return _hide(gather_sequence(mask, index, 3), ~valid[:, None, None, :])


def key_mask_rows(key_mask: torch.Tensor) -> torch.Tensor:
    """A one-query decode step's ``[B, 1, 1, K]`` attention mask from its key mask ``[B, K]`` (a view: no work)."""
    return key_mask[:, None, None, :]


def key_mask_form(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The ``[B, K]`` bool key mask ``visible`` in a graph's mask form: bool, or additive (0 or the dtype's min)."""
    if dtype == torch.bool:
        return visible.bool()
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(
        ~visible.bool(), torch.finfo(dtype).min
    )


def _visible_features(cross_attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, F]`` bool: which features each text row may attend, from an additive ``[B, 1, T, F]`` mask."""
    return cross_attention_mask[:, 0] != torch.finfo(cross_attention_mask.dtype).min


def valid_text_rows(full_text_row_masked_out_mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: real (non-padding) text rows whose ``full_text_row_masked_out_mask`` is 1."""
    return (full_text_row_masked_out_mask[:, 0, :, 0] > 0) & attention_mask.bool()


def valid_features(
    cross_attention_mask: torch.Tensor, full_text_row_masked_out_mask: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``[B, F]`` bool: the features that at least one valid text row may attend."""
    rows = valid_text_rows(full_text_row_masked_out_mask, attention_mask)
    return (_visible_features(cross_attention_mask) & rows[:, :, None]).any(dim=1)


def cross_attention_scores(
    query_states: torch.Tensor,
    key_states: torch.Tensor,
    cross_attention_mask: torch.Tensor,
    full_text_row_masked_out_mask: torch.Tensor,
    attention_mask: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Trimmed Llama scores ``[B, H, F]``: per head, the cross-attention probability of each feature,
    averaged over the valid text rows (arXiv 2504.00557).

    ``query_states [B, H, T, D]`` and ``key_states [B, H_kv, F, D]`` are the first cross-attention
    layer's own (after its q/k norms); grouped K is repeated to every query head. The probabilities
    are softmax(QKᵀ·scaling + the model's cross-attention mask), in float32.
    """
    n_heads = query_states.shape[1]
    keys = key_states.repeat_interleave(n_heads // key_states.shape[1], dim=1).float()
    logits = (query_states.float() @ keys.transpose(-1, -2)) * scaling + cross_attention_mask.float()
    rows = valid_text_rows(full_text_row_masked_out_mask, attention_mask).to(torch.float32)
    weighted = logits.softmax(dim=-1) * rows[:, None, :, None]
    return weighted.sum(dim=2) / rows.sum(dim=1).clamp(min=1)[:, None, None]


def cross_attention_select(
    scores: torch.Tensor,
    valid: torch.Tensor,
    keep: float,
    select: str,
    slots: torch.Tensor | None = None,
    max_features: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept features of each sample, in ascending order, laid out in ``K'`` right-padded slots.

    ``select="head_union"``: per head the ``ceil(keep · n_valid)`` best valid features, united over
    heads; ``K'`` is the largest union in the batch, known only from the scores (so under
    ``torch.compile`` this op ends a graph). ``select="topk"``: the ``ceil(keep · n_valid)`` best by
    the head-mean score; ``K' = len(slots)``, given by the caller, so no shape depends on data.
    Ties go to the lower index (graphprune's rule for arXiv 2504.00557). Returns ``index [B, K']``
    (feature per slot; padding slots hold the lowest unkept features) and ``slot_valid [B, K']``.

    No sort: see ``best_per_sample``; a scatter lays the kept features out. Its top-k's K is the feature count,
    or, with ``max_features`` (the most features a sample may hold, for export), the constant
    ``ceil(keep · max_features)`` (``_counts_and_budget``).
    """
    n_features = scores.shape[-1]
    counts, budget = _counts_and_budget(valid, keep, max_features)
    counts = counts[:, None]
    if select == "head_union":
        ranked = torch.where(valid[:, None], scores.float(), float("-inf"))
        kept = best_per_sample(ranked, counts[:, None].expand(-1, scores.shape[1], 1), budget).any(dim=1) & valid
        n_slots = int(kept.sum(dim=-1).max())
    else:
        kept = best_per_sample(torch.where(valid, scores.float().mean(dim=1), float("-inf")), counts, budget) & valid
        n_slots = slots.shape[0]
    n_kept = kept.sum(dim=-1, keepdim=True)
    target = torch.where(kept, running_count(kept, -1) - 1, n_kept + running_count(~kept, -1) - 1)  # kept first
    positions = torch.arange(n_features, device=scores.device).expand_as(target)
    index = torch.empty_like(positions).scatter(1, target, positions)[:, :n_slots]
    slot = torch.arange(n_slots, device=scores.device) if slots is None else slots
    return index, slot[None, :] < n_kept


def gather_cross_attention_mask(mask: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """An additive ``[B, 1, T, F]`` cross-attention mask restricted to the kept slots; padding slots hidden."""
    return _hide(gather_sequence(mask, index, 3), ~valid[:, None, None, :])
