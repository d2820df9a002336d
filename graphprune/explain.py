"""``explain``: one pruned prefill, with what was kept and what it saved."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .flops import flops, kv_bytes
from .methods import FastV
from .runtime import optimized_state


@dataclass
class Report:
    """What one pruned prefill kept and saved (SPEC: ``kept``, ``n_visual``, FLOPs and KV bytes).

    ``kept[i]``: sorted original positions of the visual tokens kept for sample i. FLOPs are the
    paper's count (``graphprune.flops``) summed over samples, each with its real (non-padding) length.
    KV bytes (SPEC's formula) count the positions each layer caches: all N before; after, the
    pruned length (longest sample's, padding slots included) in layers >= k.
    """

    method: FastV
    kept: list[torch.Tensor]
    n_visual: list[int]
    n_tokens: list[int]
    scores: torch.Tensor | None
    flops_before: int
    flops_after: int
    kv_bytes_before: int
    kv_bytes_after: int

    @property
    def n_kept(self) -> list[int]:
        return [len(kept) for kept in self.kept]

    def __str__(self) -> str:
        lines = [f"graphprune {self.method}"]
        for i, (kept, n_visual, n_tokens) in enumerate(zip(self.kept, self.n_visual, self.n_tokens, strict=True)):
            lines.append(f"  sample {i}: {n_tokens} tokens, kept {len(kept)}/{n_visual} visual: {kept.tolist()}")
        lines.append(
            f"  FLOPs (paper formula): {self.flops_before / 1e9:.3f} G -> {self.flops_after / 1e9:.3f} G "
            f"({self.flops_after / max(self.flops_before, 1):.1%})"
        )
        lines.append(
            f"  KV cache: {self.kv_bytes_before / 2**20:.3f} MiB -> {self.kv_bytes_after / 2**20:.3f} MiB "
            f"({self.kv_bytes_after / max(self.kv_bytes_before, 1):.1%})"
        )
        return "\n".join(lines)


@torch.no_grad()
def explain(model: nn.Module, **inputs) -> Report:
    """Run one pruned prefill of ``model`` (already ``optimize``d) on ``inputs`` and report it."""
    state = optimized_state(model)
    model(**inputs, use_cache=True)
    record = state.decoder.last_prefill
    method = state.method
    config = model.config
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
    element = next(model.parameters()).element_size()
    kv_before = kv_bytes(config, [seq_len] * num_layers, element, batch)
    cached = [seq_len] * (num_layers - pruned_layers) + [record.keep_index.shape[1]] * pruned_layers
    kv_after = kv_bytes(config, cached, element, batch)
    return Report(method, kept, n_visual, n_tokens, record.scores, before, after, kv_before, kv_after)
