"""The method registry: per method type (``FastV``, ``CrossAttentionTrim``), what graphprune runs for it.

Each method's handler is registered by the module of its decoder stand-in (``graphprune/decoders/``),
so a new method is one new module there. Each entry point looks its handler up once: ``optimize`` (which keeps
it on the optimized model's state, where ``explain``, the stand-in's passes and the export's budget pass read it)
and ``flops``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodHandler:
    """What graphprune runs for one method type."""

    method: type  # the method's config class, e.g. FastV
    decoder: type  # stand-in for the decoder's forward (a decoders.base.GraphDecoder subclass)
    prefill_pass: Callable  # (captured prefill GraphModule, method) -> rewritten GraphModule
    decode_pass: Callable  # (captured decode GraphModule, method) -> rewritten GraphModule
    # (pruned prefill GraphModule, budget) -> the same with a constant top-k size (export); None: no export yet
    budget_pass: Callable | None
    check_layout: Callable  # (method, DecoderLayout) -> None; ValueError when the decoder does not fit the method
    report: Callable  # (model, state, record, bytes per element) -> explain.Report
    flops: Callable  # (model config, method, n_tokens, n_visual) -> (before, after), the paper's count
    unit: str  # what the method prunes, as reports name it ("visual tokens", "features")


_HANDLERS: dict[type, MethodHandler] = {}


def register_method(handler: MethodHandler) -> MethodHandler:
    """Register ``handler`` for its method type (again: replaces the earlier one); returns it."""
    _HANDLERS[handler.method] = handler
    return handler


def handler_for(method) -> MethodHandler:
    """The handler registered for ``type(method)``; a one-line ``TypeError`` listing the registered types if none."""
    handler = _HANDLERS.get(type(method))
    if handler is None:
        accepted = ", ".join(f"graphprune.{cls.__name__}(...)" for cls in _HANDLERS)
        raise TypeError(f"graphprune: method must be one of {accepted}; got {method!r}")
    return handler
