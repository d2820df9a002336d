"""Decoder FLOPs of one prefill, as the papers count them."""

from __future__ import annotations

from .methods import CrossAttentionTrim, FastV, n_keep, n_slots
from .registry import handler_for

FORMULAS = ("paper",)


def _layer_flops(n: int, d: int, m: int) -> int:
    """FastV's count for one self-attention layer with n tokens: ``4nd² + 2n²d + 2ndm``."""
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def _cross_layer_flops(n: int, features: int, d: int, d_kv: int, m: int) -> int:
    """One cross-attention layer, n text tokens and N visual features: ``4nd² + 4N·d·d_kv + 4nNd + 2ndm``."""
    return 4 * n * d * d + 4 * features * d * d_kv + 4 * n * features * d + 2 * n * d * m


def _text_config(config):
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def flops(config, method, n_tokens: int, n_visual: int, formula: str = "paper") -> tuple[int, int]:
    """``(before, after)`` decoder FLOPs for one prefill of one sample.

    ``formula="paper"`` is FastV's count (arXiv 2403.06764, Sec. 4.2): per layer ``4nd² + 2n²d + 2ndm``;
    with FastV, ``k·f(n) + (L-k)·f(n̂)`` where ``n̂ = n - (n_visual - ceil(keep·n_visual))``. For
    CrossAttentionTrim, ``n_tokens`` counts text tokens, ``n_visual`` visual features, and every
    cross-attention layer after the first counts ``ceil(keep·n_visual)`` features. ``ceil(keep·n_visual)``
    is ``methods.n_keep``'s: at least 1 where ``n_visual`` is. PDrop counts as its own paper does (per layer
    ``4nd² + 2n²d + 3ndm``, each stage with its kept count; ``decoders.pdrop.pdrop_flops``).
    """
    if formula not in FORMULAS:
        raise ValueError(f"formula must be one of {FORMULAS}; got {formula!r}")
    return handler_for(method).flops(config, method, n_tokens, n_visual)


def fastv_flops(config, method: FastV, n_tokens: int, n_visual: int) -> tuple[int, int]:
    """``flops``' paper count for FastV."""
    if not 0 <= n_visual <= n_tokens:
        raise ValueError(f"n_visual must be in [0, n_tokens]; got n_visual={n_visual}, n_tokens={n_tokens}")
    text = _text_config(config)
    d, m, num_layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    method.check_layers(num_layers)
    kept = n_slots(method.keep, [n_tokens], [n_visual])
    before = num_layers * _layer_flops(n_tokens, d, m)
    return before, method.k * _layer_flops(n_tokens, d, m) + (num_layers - method.k) * _layer_flops(kept, d, m)


def cross_attention_trim_flops(config, method: CrossAttentionTrim, n_tokens: int, n_visual: int) -> tuple[int, int]:
    """``flops``' paper count for CrossAttentionTrim: ``ceil(keep·n_visual)`` features after the first layer."""
    return cross_attention_flops(config, n_tokens, n_visual, n_keep(method.keep, n_visual))


def cross_attention_flops(config, n_tokens: int, n_features: int, n_kept: int) -> tuple[int, int]:
    """``(before, after)`` paper-formula FLOPs of a cross-attention decoder's prefill when every
    cross-attention layer after the first sees ``n_kept`` of the ``n_features`` features."""
    text = _text_config(config)
    d, m, num_layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    cross_layers = sorted(getattr(text, "cross_attention_layers", None) or [])
    if not cross_layers:
        raise ValueError(
            f"CrossAttentionTrim needs a config with cross-attention layers; {type(text).__name__} has none"
        )
    head_dim = getattr(text, "head_dim", None) or d // text.num_attention_heads
    d_kv = text.num_key_value_heads * head_dim
    self_layers = (num_layers - len(cross_layers)) * _layer_flops(n_tokens, d, m)
    first = _cross_layer_flops(n_tokens, n_features, d, d_kv, m)
    later = len(cross_layers) - 1
    before = self_layers + first + later * _cross_layer_flops(n_tokens, n_features, d, d_kv, m)
    after = self_layers + first + later * _cross_layer_flops(n_tokens, n_kept, d, d_kv, m)
    return before, after


def kv_bytes(config, cached_positions: list[int], bytes_per_element: int, batch: int = 1) -> int:
    """Σ over layers of ``2 · n_kv_heads · head_dim · cached_positions · bytes_per_element · batch``."""
    text = _text_config(config)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return sum(2 * text.num_key_value_heads * head_dim * n * bytes_per_element * batch for n in cached_positions)
