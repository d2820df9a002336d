"""``Report``: what one pruned prefill kept and saved, as ``graphprune.explain`` returns it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .methods import CrossAttentionTrim, FastV


@dataclass
class Report:
    """What one pruned prefill kept and saved: per sample the kept visual positions or features and the visual
    count, and for the batch the decoder FLOPs and KV-cache bytes before and after pruning.

    FastV: ``kept[i]`` holds the sorted original positions of the visual tokens kept for sample i,
    ``n_visual[i]`` its visual tokens. PDrop: ``kept[i]`` holds the visual positions that survive every
    stage (those the last stage's layers see), ``scores`` ``s + p`` at each position that stage s (0-based) ranked
    last with probability p. CrossAttentionTrim: ``kept[i]`` holds the sorted indices of the
    kept features among sample i's flattened feature rows (images × tiles × patches),
    ``n_visual[i]`` its valid features, and ``kept_per_tile[i]`` ``[images, tiles]`` the fraction of
    each tile's features kept (0 for padding tiles).

    FLOPs are the paper's count (``graphprune.flops``) summed over samples, each with its real
    (non-padding) length; for CrossAttentionTrim with every feature row the model computes before,
    and the actual kept count after. KV bytes (``graphprune.flops.kv_bytes``: Σ over layers of
    ``2 · n_kv_heads · head_dim · cached positions · bytes per element · batch``) count the positions each
    layer caches, for the whole batch: after pruning, the pruned layers hold the longest sample's count
    (padding slots included). A sample whose attention mask is all zeros is empty: nothing visual
    or kept, 0 tokens, and the FLOPs the formula gives for 0 text tokens (FastV: 0). A text-only
    prompt keeps and trims nothing (CrossAttentionTrim: 0 features, ``kept_per_tile[i]`` ``[0, tiles]``).
    ``layouts`` maps each sample's visual units to cells of its pictures, for ``plot``.
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
    layouts: list | None = None  # per sample, its visual units' cells (``graphprune.plot.SampleLayout``), from explain
    unit: str = "visual units"  # what ``kept`` holds, as the method's handler names it (set by explain)

    def plot(self, path, dpi: int = 100):
        """Save a PNG at ``path`` of each sample's pictures (images, crops, frames, tiles) under the grid of their
        visual tokens or features, kept ones clear and pruned ones dark; returns the matplotlib Figure.
        Needs matplotlib (``pip install 'graphprune[plot]'``)."""
        from .plot import draw

        return draw(self, path, dpi)

    @property
    def n_kept(self) -> list[int]:
        return [len(kept) for kept in self.kept]

    def __str__(self) -> str:
        unit = self.unit
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
