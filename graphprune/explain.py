"""``explain``: one pruned prefill, with what was kept and what it saved."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .flops import cross_attention_flops, flops, kv_bytes
from .methods import CrossAttentionTrim, FastV
from .runtime import optimized_state, recorded_prefills


@dataclass
class Report:
    """What one pruned prefill kept and saved (SPEC: ``kept``, ``n_visual``, FLOPs and KV bytes).

    FastV: ``kept[i]`` holds the sorted original positions of the visual tokens kept for sample i,
    ``n_visual[i]`` its visual tokens. CrossAttentionTrim: ``kept[i]`` holds the sorted indices of the
    kept features among sample i's flattened feature rows (images × tiles × patches),
    ``n_visual[i]`` its valid features, and ``kept_per_tile[i]`` ``[images, tiles]`` the fraction of
    each tile's features kept (0 for padding tiles).

    FLOPs are the paper's count (``graphprune.flops``) summed over samples, each with its real
    (non-padding) length; for CrossAttentionTrim with every feature row the model computes before,
    and the actual kept count after. KV bytes (SPEC's formula) count the positions each layer
    caches, for the whole batch: after pruning, the pruned layers hold the longest sample's count
    (padding slots included). A sample whose attention mask is all zeros is empty: nothing visual
    or kept, 0 tokens, and the FLOPs the formula gives for 0 text tokens (FastV: 0). A text-only
    prompt keeps and trims nothing (CrossAttentionTrim: 0 features, ``kept_per_tile[i]`` ``[0, tiles]``).
    """

    method: FastV | CrossAttentionTrim
    kept: list[torch.Tensor]
    n_visual: list[int]
    n_tokens: list[int]
    scores: torch.Tensor | None
    flops_before: int
    flops_after: int
    kv_bytes_before: int
    kv_bytes_after: int
    kept_per_tile: list[torch.Tensor] | None = None

    @property
    def n_kept(self) -> list[int]:
        return [len(kept) for kept in self.kept]

    def __str__(self) -> str:
        unit = "visual tokens" if isinstance(self.method, FastV) else "features"
        lines = [f"graphprune {self.method}"]
        for i, (kept, n_visual, n_tokens) in enumerate(zip(self.kept, self.n_visual, self.n_tokens, strict=True)):
            lines.append(f"  sample {i}: {n_tokens} tokens, kept {len(kept)}/{n_visual} {unit}: {_listing(kept)}")
            if self.kept_per_tile is not None:
                tiles = "; ".join(
                    f"image {image}: " + " ".join(f"{fraction:.0%}" for fraction in row)
                    for image, row in enumerate(self.kept_per_tile[i].tolist())
                )
                lines.append(f"    kept per tile: {tiles}")
        lines.append(
            f"  FLOPs (paper formula): {self.flops_before / 1e9:.3f} G -> {self.flops_after / 1e9:.3f} G "
            f"({self.flops_after / max(self.flops_before, 1):.1%})"
        )
        lines.append(
            f"  KV cache: {self.kv_bytes_before / 2**20:.3f} MiB -> {self.kv_bytes_after / 2**20:.3f} MiB "
            f"({self.kv_bytes_after / max(self.kv_bytes_before, 1):.1%})"
        )
        return "\n".join(lines)


def _listing(kept: torch.Tensor, limit: int = 24) -> str:
    values = kept.tolist()
    return str(values) if len(values) <= limit else f"[{', '.join(map(str, values[:limit]))}, ... ({len(values)})]"


@torch.no_grad()
def explain(model: nn.Module, **inputs) -> Report:
    """Run one pruned prefill of ``model`` (already ``optimize``d) on ``inputs`` and report it."""
    state = optimized_state(model)
    with recorded_prefills() as records:
        model(**inputs, use_cache=True)
    if not records:
        raise ValueError("graphprune.explain runs one prefill: pass a prompt without past_key_values")
    element = next(model.parameters()).element_size()
    if isinstance(state.method, FastV):
        return _fastv_report(model, state, records[-1], element)
    return _trim_report(model, state, records[-1], element)


def _fastv_report(model, state, record, element: int) -> Report:
    method, config = state.method, model.config
    kept, n_visual, n_tokens = [], [], []
    before = after = 0
    for b in range(record.visual_mask.shape[0]):
        slots = record.keep_index[b][record.slot_valid[b]]
        kept.append(slots[record.visual_mask[b, slots]].cpu())
        n_visual.append(int(record.visual_mask[b].sum()))
        n_tokens.append(int(record.attention_mask[b].sum()))
        sample_before, sample_after = flops(config, method, n_tokens[b], n_visual[b])
        before, after = before + sample_before, after + sample_after
    batch, seq_len = record.visual_mask.shape
    num_layers = state.decoder.num_layers
    pruned_layers = num_layers - method.k if record.scores is not None else 0
    kv_before = kv_bytes(config, [seq_len] * num_layers, element, batch)
    cached = [seq_len] * (num_layers - pruned_layers) + [record.keep_index.shape[1]] * pruned_layers
    kv_after = kv_bytes(config, cached, element, batch)
    return Report(method, kept, n_visual, n_tokens, record.scores, before, after, kv_before, kv_after)


def _trim_report(model, state, record, element: int) -> Report:
    config = model.config
    batch, n_features = record.valid_features.shape
    tiles, patches = state.adapter.feature_grid(model)
    kept, n_visual, n_tokens, per_tile = [], [], [], []
    before = after = 0
    for b in range(batch):
        sample_kept = record.keep_index[b][record.slot_valid[b]].sort().values.cpu()
        kept.append(sample_kept)
        n_visual.append(int(record.valid_features[b].sum()))
        n_tokens.append(int(record.attention_mask[b].sum()))
        n_after = len(sample_kept) if record.scores is not None else n_features
        sample_before, sample_after = cross_attention_flops(config, n_tokens[b], n_features, n_after)
        before, after = before + sample_before, after + sample_after
        is_kept = torch.zeros(n_features)
        is_kept[sample_kept] = 1.0
        per_tile.append(is_kept.view(-1, tiles, patches).mean(dim=-1))
    seq_len = record.attention_mask.shape[1]
    layers = state.decoder
    trimmed = set(layers.cross_attention_layers[1:]) if record.scores is not None else set()
    kv_before = kv_bytes(config, _cached(layers, seq_len, n_features, n_features, trimmed), element, batch)
    kv_after = kv_bytes(
        config, _cached(layers, seq_len, n_features, record.keep_index.shape[1], trimmed), element, batch
    )
    return Report(state.method, kept, n_visual, n_tokens, record.scores, before, after, kv_before, kv_after, per_tile)


def _cached(decoder, text_length: int, n_features: int, n_trimmed: int, trimmed: set[int]) -> list[int]:
    """Positions cached per layer: text length in self-attention layers, features in cross-attention ones."""
    return [
        (n_trimmed if i in trimmed else n_features) if i in decoder.cross_attention_layers else text_length
        for i in range(decoder.num_layers)
    ]
