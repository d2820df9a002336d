"""FastV and DART inside vLLM, as an out-of-tree plugin (``vllm.general_plugins`` entry point ``graphprune``).

``LLM(model, additional_config={"graphprune": {"method": "fastv", "k": 2, "keep": 0.5}})`` serves the model with
FastV per request, as ``graphprune.FastV`` computes it (``"method": "dart"``: ``graphprune.DART``, with its ``pivots``
and ``text_pivots``); without the ``graphprune`` key vLLM is untouched. Importing this package does not import vLLM:
``register`` (called by vLLM in each of its processes) registers graphprune's model classes by name and hooks the
config check, both lazily.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    """vLLM's plugin entry point: idempotent, cheap, safe to call in every vLLM process."""
    global _registered
    if _registered:
        return
    _registered = True
    from vllm import ModelRegistry
    from vllm.config import VllmConfig

    from .config import ARCHITECTURES, apply

    for name, target in ARCHITECTURES.values():
        ModelRegistry.register_model(name, target)
    original = VllmConfig.try_verify_and_update_config

    def try_verify_and_update_config(self) -> None:
        already = getattr(self.model_config, "config_updated", False)
        original(self)
        if self.model_config is not None and not already:
            apply(self)

    VllmConfig.try_verify_and_update_config = try_verify_and_update_config


__all__ = ["register"]
