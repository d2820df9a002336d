"""Pruning methods: small validated configs, one per published method."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch

_QUERIES = ("last", "mean")
_SELECTS = ("head_union", "topk")
_TOLERANCE = 1e-6  # float noise in keep * n_visual


def _plain(value, kind: type) -> int | float | None:
    """``value`` as a plain Python int (``kind`` ``numbers.Integral``) or float (``numbers.Real``) when it is
    such a scalar (a Python or numpy number, a 0-d tensor or array); None for anything else, bools included."""
    if not isinstance(value, numbers.Number) and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # 0-d tensor or array: its Python number (bool, int, float or complex by dtype)
    if isinstance(value, bool) or not isinstance(value, kind):
        return None
    return int(value) if kind is numbers.Integral else float(value)


def _checked_keep(keep) -> float:
    """``keep`` as a float in (0, 1]; a ``ValueError`` otherwise."""
    plain = _plain(keep, numbers.Real)
    if plain is None or not 0.0 < plain <= 1.0:
        raise ValueError(
            f"keep must be a fraction in (0, 1] (a real number or 0-d tensor), the share of visual tokens kept; "
            f"got {keep!r}"
        )
    return plain


def _checked_k(k) -> int:
    """``k`` (the first pruned layer) as a plain int >= 1; a ``ValueError`` otherwise."""
    plain = _plain(k, numbers.Integral)
    if plain is None or plain < 1:
        raise ValueError(
            "k must be an int >= 1 (an integral number or 0-d integer tensor: the first pruned layer, "
            f"1 <= k < num_layers); got {k!r}"
        )
    return plain


def _check_layers(k: int, num_layers: int) -> None:
    if not 1 <= k < num_layers:
        raise ValueError(f"k must satisfy 1 <= k < {num_layers} (the decoder's layer count); got k={k}")


def n_keep(keep: float, n_visual):
    """``ceil(keep * n_visual)``, where a product within 1e-6 of an integer counts as that integer (``0.3 * 10``),
    and at least 1 where ``n_visual`` is (a positive ``keep`` never drops every visual token).

    The one keep-rounding rule: an int for an int, an int64 tensor for an integer tensor (per element; it
    runs inside the graphs). Plain Python for an int, so it may build constants while a graph is traced.
    """
    if isinstance(n_visual, torch.Tensor):
        counts = (n_visual.to(torch.float64) * keep - _TOLERANCE).ceil().long()
        return torch.maximum(counts, (n_visual > 0).long())
    return max(math.ceil(n_visual * keep - _TOLERANCE), min(n_visual, 1))


def n_slots(keep: float, n_real, n_visual) -> int:
    """``S``, the pruned length of the longest sample: per sample its ``n_real`` positions less the visual ones
    that ``n_keep`` drops (its ``n_visual`` visual positions among them); 0 for an empty batch.

    ``n_real``/``n_visual`` are per-sample counts (tensors, arrays or sequences). The pruned graphs take
    ``arange(S)`` as ``graphprune_slots``; with ``n_real = n_visual`` (CrossAttentionTrim's valid features)
    ``S`` is the most features a sample keeps.
    """
    n_real, n_visual = torch.as_tensor(n_real).long(), torch.as_tensor(n_visual).long()
    return max((n_real - n_visual + n_keep(keep, n_visual)).tolist(), default=0)


@dataclass(frozen=True)
class FastV:
    """FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", arXiv 2403.06764).

    After decoder layer ``k - 1`` the visual tokens that its attention ignores are dropped: layers
    ``k .. L-1`` run on every text token plus ``ceil(keep * n_visual)`` visual tokens (at least one): the
    last real position when it is visual (its row gives the next token), and those that the ``query``
    row(s) of layer ``k - 1`` attend to most.

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
        object.__setattr__(self, "k", _checked_k(self.k))  # plain Python numbers: repr, equality, hashing, JSON
        object.__setattr__(self, "keep", _checked_keep(self.keep))
        if self.query not in _QUERIES:
            raise ValueError(f"query must be one of {_QUERIES}; got {self.query!r}")

    def check_layers(self, num_layers: int) -> None:
        """Raise ``ValueError`` unless ``1 <= k < num_layers``."""
        _check_layers(self.k, num_layers)


@dataclass(frozen=True)
class DART:
    """DART (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters
    More", arXiv 2502.11494): after decoder layer ``k - 1``, keep the visual tokens that duplicate others least.

    Pivots are the tokens whose layer ``k - 1`` keys have the largest L1 norms (``pivots`` visual ones, kept, and
    ``text_pivots`` text ones after the first visual token); the other kept visual tokens are those least similar
    (cosine of the hidden states entering layer ``k``) to their most similar pivot. Layers ``k .. L-1`` run on
    every text token plus ``ceil(keep * n_visual)`` visual tokens, as for FastV (the last real position always
    among them). The rule in full: ``graphprune/passes/dart.py``.

    Args:
        k: the first layer that runs on the pruned sequence, ``1 <= k < num_layers`` (the paper: 2).
        keep: the fraction of visual tokens kept, in (0, 1].
        pivots: visual pivot tokens per sample, ``>= 1`` (the paper's code: 4).
        text_pivots: text pivot tokens per sample, ``>= 0`` (the paper's code: 4).
    """

    k: int = 2
    keep: float = 0.5
    pivots: int = 4
    text_pivots: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", _checked_k(self.k))
        object.__setattr__(self, "keep", _checked_keep(self.keep))
        for name, low in (("pivots", 1), ("text_pivots", 0)):
            value = _plain(getattr(self, name), numbers.Integral)
            if value is None or value < low:
                raise ValueError(
                    f"{name} must be an int >= {low} (pivot tokens per sample); got {getattr(self, name)!r}"
                )
            object.__setattr__(self, name, value)

    def check_layers(self, num_layers: int) -> None:
        """Raise ``ValueError`` unless ``1 <= k < num_layers``."""
        _check_layers(self.k, num_layers)


@dataclass(frozen=True)
class PDrop:
    """PyramidDrop (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
    Redundancy Reduction", CVPR 2025, arXiv 2410.17247): FastV's ranking at several stages.

    Stage ``s`` ranks the visual tokens that survived stage ``s - 1`` by layer ``layers[s] - 1``'s attention (the
    ``query`` row, as FastV) and keeps ``ceil(keep * survivors)`` of them (at least one; the last real position
    always among them); layers ``layers[s] ..`` run on the survivors. The rule in full: ``graphprune/passes/pdrop.py``.

    Args:
        layers: the first layer of each pruned stage (an int: one stage), strictly increasing,
            ``1 <= l < num_layers`` (the paper's LLaVA-1.5-7B schedule: 8, 16, 24).
        keep: the fraction of the previous stage's visual tokens each stage keeps (the paper's lambda: 0.5).
        query: ``"last"`` (the paper's last instruction token: the last real position) or ``"mean"``, as FastV.
    """

    layers: tuple[int, ...] = (8, 16, 24)
    keep: float = 0.5
    query: str = "last"

    def __post_init__(self) -> None:
        layers = self.layers if isinstance(self.layers, Sequence) and not isinstance(self.layers, str) else None
        if _plain(self.layers, numbers.Integral) is not None:  # one stage
            layers = [self.layers]
        checked = None if layers is None else [_plain(layer, numbers.Integral) for layer in layers]
        if not checked or None in checked or checked[0] < 1 or any(b <= a for a, b in itertools.pairwise(checked)):
            raise ValueError(
                "layers must be a non-empty, strictly increasing sequence of ints >= 1 (the first layer of each "
                f"pruned stage, 1 <= l < num_layers); got {self.layers!r}"
            )
        object.__setattr__(self, "layers", tuple(checked))
        object.__setattr__(self, "keep", _checked_keep(self.keep))
        if self.query not in _QUERIES:
            raise ValueError(f"query must be one of {_QUERIES}; got {self.query!r}")

    @property
    def k(self) -> int:
        """The first pruned layer (``layers[0]``): layers below it run on every position."""
        return self.layers[0]

    def check_layers(self, num_layers: int) -> None:
        """Raise ``ValueError`` unless every stage layer satisfies ``1 <= l < num_layers``."""
        if self.layers[-1] >= num_layers:
            raise ValueError(
                f"layers must satisfy 1 <= l < {num_layers} (the decoder's layer count); got layers={list(self.layers)}"
            )

    def stage_counts(self, n_visual):
        """The visual tokens each stage keeps, a list (one per stage) of ``n_keep`` applied to the previous count."""
        counts = []
        for _ in self.layers:
            n_visual = n_keep(self.keep, n_visual)
            counts.append(n_visual)
        return counts


@dataclass(frozen=True)
class CrossAttentionTrim:
    """Trimmed Llama (arXiv 2504.00557): cross-attention visual-feature trimming for Mllama.

    The first cross-attention layer's attention map ranks the visual features; every later
    cross-attention layer computes and caches keys/values only for the kept ones.

    Args:
        keep: the fraction of valid visual features kept per head (``head_union``) or overall (``topk``);
            ``ceil(keep * n_valid)``, at least one.
        select: ``"head_union"`` (the paper: union of per-head top-k) or ``"topk"`` (fixed size,
            by the head-mean score).
    """

    keep: float = 0.5
    select: str = "head_union"

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", _checked_keep(self.keep))
        if self.select not in _SELECTS:
            raise ValueError(f"select must be one of {_SELECTS}; got {self.select!r}")

    def check_cross_attention_layers(self, layers: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless there are at least two cross-attention layers (one ranks, later ones trim)."""
        if len(layers) < 2:
            raise ValueError(
                "CrossAttentionTrim needs a decoder with at least two cross-attention layers (the first ranks the "
                f"features, later ones are trimmed); this one has {list(layers)}"
            )


Method = FastV | DART | PDrop | CrossAttentionTrim


METHODS = (FastV, DART, PDrop, CrossAttentionTrim)  # what method_from_dict rebuilds, by class name


def method_to_dict(method: Method) -> dict:
    """``{"name": the class name, **parameters}``: how an export's manifest records ``method``."""
    return {"name": type(method).__name__, **asdict(method)}


def method_from_dict(entry: dict) -> Method:
    """The method that a ``method_to_dict`` entry records; else a ``ValueError`` naming what is accepted."""
    kinds = {kind.__name__: kind for kind in METHODS}
    name = entry.get("name")
    kind = kinds.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ValueError(f"graphprune method name must be one of {sorted(kinds)}; got {name!r:.60}")
    parameters = {key: value for key, value in entry.items() if key != "name"}
    unknown = sorted(set(parameters) - {field.name for field in fields(kind)})
    if unknown:
        accepted = ", ".join(field.name for field in fields(kind))
        raise ValueError(f"graphprune's {kind.__name__} takes {accepted}; got also {unknown}")
    return kind(**parameters)
