"""Pruning methods: small validated configs, one per published method."""

from __future__ import annotations

import math
from dataclasses import dataclass

_QUERIES = ("last", "mean")
_SELECTS = ("head_union", "topk")


def _check_keep(keep: float) -> None:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a fraction in (0, 1], the share of visual tokens kept; got {keep!r}")


def n_keep(keep: float, n_visual: int) -> int:
    """``ceil(keep * n_visual)``, where a product within 1e-6 of an integer counts as that integer."""
    product = keep * n_visual
    nearest = round(product)
    return int(nearest) if abs(product - nearest) <= 1e-6 else math.ceil(product)


@dataclass(frozen=True)
class FastV:
    """FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", arXiv 2403.06764).

    After decoder layer ``k - 1`` the visual tokens that its attention ignores are dropped: layers
    ``k .. L-1`` run on every text token plus the ``ceil(keep * n_visual)`` visual tokens that the
    ``query`` row(s) of layer ``k - 1`` attend to most.

    Args:
        k: the first layer that runs on the pruned sequence, ``1 <= k < num_layers``.
        keep: the fraction of visual tokens kept, in (0, 1].
        query: ``"last"`` ranks by the last real position's attention row, ``"mean"`` by the mean
            over all real positions' rows.
    """

    k: int = 2
    keep: float = 0.5
    query: str = "last"

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an int >= 1 (the first pruned layer, 1 <= k < num_layers); got {self.k!r}")
        _check_keep(self.keep)
        if self.query not in _QUERIES:
            raise ValueError(f"query must be one of {_QUERIES}; got {self.query!r}")

    def check_layers(self, num_layers: int) -> None:
        """Raise ``ValueError`` unless ``1 <= k < num_layers``."""
        if not 1 <= self.k < num_layers:
            raise ValueError(f"k must satisfy 1 <= k < {num_layers} (the decoder's layer count); got k={self.k}")


@dataclass(frozen=True)
class CrossAttentionTrim:
    """Trimmed Llama (arXiv 2504.00557): cross-attention visual-feature trimming for Mllama.

    The first cross-attention layer's attention map ranks the visual features; every later
    cross-attention layer computes and caches keys/values only for the kept ones.

    Args:
        keep: the fraction of valid visual features kept per head (``head_union``) or overall (``topk``).
        select: ``"head_union"`` (the paper: union of per-head top-k) or ``"topk"`` (fixed size,
            by the head-mean score).
    """

    keep: float = 0.5
    select: str = "head_union"

    def __post_init__(self) -> None:
        _check_keep(self.keep)
        if self.select not in _SELECTS:
            raise ValueError(f"select must be one of {_SELECTS}; got {self.select!r}")

    def check_cross_attention_layers(self, layers: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless there are at least two cross-attention layers (one ranks, later ones trim)."""
        if len(layers) < 2:
            raise ValueError(
                "CrossAttentionTrim needs a decoder with at least two cross-attention layers (the first ranks the "
                f"features, later ones are trimmed); this one has {list(layers)}"
            )


Method = FastV | CrossAttentionTrim
