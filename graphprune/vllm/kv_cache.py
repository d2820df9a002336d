"""KV blocks for the kept tokens only: layers >= k form their own KV cache group, sized from the kept count.

A request's kept count is a function of its prompt's layout (SPEC FastV step 3): ``n_tokens - n_dropped`` with
``n_dropped = n_visual - visual_budget(keep, n_visual)``, so the scheduler knows it before any forward. Layers >= k
report a ``KeptTokensSpec`` (an attention spec of its own type, so vLLM's hybrid KV cache manager puts them in their
own group(s), as it does with a hybrid model's sliding-window layers); its ``KeptTokensManager`` allocates blocks for
``n_tokens - n_dropped`` tokens. The manager only sees request ids: a wrapper around ``KVCacheManager.allocate_slots``
(which sees the ``Request``) records each request's dropped count first, and freeing the request forgets it.

Importing this module registers the spec and installs the wrappers (``_install``), once per process: the worker
imports it where it builds the model, and any process that unpickles a ``KeptTokensSpec`` (the engine core, which
receives the workers' specs) imports it too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch
from vllm.utils.math_utils import cdiv
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
from vllm.v1.kv_cache_interface import AttentionSpec, FullAttentionSpec
from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry

from .selection import visual_budget

_dropped: dict[str, int] = {}  # request id -> prompt positions layers >= k do not hold (scheduler process)


@dataclass(frozen=True, kw_only=True)
class KeptTokensSpec(AttentionSpec):
    """Full attention over the kept tokens of each request (FastV's layers >= k)."""

    keep: float
    visual_token_ids: tuple[int, ...]

    def max_memory_usage_bytes(self, vllm_config) -> int:
        """A request without visual tokens keeps all of them: the full-attention bound."""
        return cdiv(vllm_config.model_config.max_model_len, self.block_size) * self.page_size_bytes

    def n_dropped(self, prompt_token_ids) -> int:
        """Prompt positions layers >= k do not hold: visual tokens less ``visual_budget`` (none without token ids)."""
        if prompt_token_ids is None:
            return 0
        n_visual = int(torch.isin(torch.as_tensor(prompt_token_ids), torch.tensor(self.visual_token_ids)).sum())
        return n_visual - visual_budget(self.keep, n_visual)

    @classmethod
    def from_full(cls, full: AttentionSpec, keep: float, visual_token_ids: tuple[int, ...]) -> KeptTokensSpec:
        """The spec of a layer >= k whose own spec is ``full``: plain full attention only (no window, causal)."""
        if type(full) is not FullAttentionSpec or full.sliding_window or full.attention_chunk_size or full.non_causal:
            raise ValueError(
                f"graphprune: FastV in vLLM holds KV blocks for the kept tokens of full causal attention layers only; "
                f"a layer >= k has {full}"
            )
        return cls(
            **{f.name: getattr(full, f.name) for f in fields(AttentionSpec)},
            keep=keep,
            visual_token_ids=visual_token_ids,
        )


class KeptTokensManager(FullAttentionManager):
    """A full-attention manager whose request holds ``n_tokens - n_dropped`` token slots."""

    def get_num_blocks_to_allocate(self, request_id: str, num_tokens: int, *args, **kwargs) -> int:
        return super().get_num_blocks_to_allocate(request_id, num_tokens - _dropped.get(request_id, 0), *args, **kwargs)

    def allocate_new_blocks(self, request_id: str, num_tokens: int, num_tokens_main_model: int) -> list:
        dropped = _dropped.get(request_id, 0)
        return super().allocate_new_blocks(request_id, num_tokens - dropped, num_tokens_main_model - dropped)


def _install() -> None:
    """Register the spec and its manager; record each request's dropped count where the scheduler allocates."""
    KVCacheSpecRegistry._ensure_registered()  # the built-in specs first: registering ours alone would skip them
    KVCacheSpecRegistry.register(KeptTokensSpec, KeptTokensManager)
    allocate_slots, free, pop_blocks_for_free = (
        KVCacheManager.allocate_slots,
        KVCacheManager.free,
        KVCacheManager.pop_blocks_for_free,
    )

    @functools.wraps(allocate_slots)
    def allocate_slots_recording(self, request, *args, **kwargs):
        if request.request_id not in _dropped:
            kept = [
                g.kv_cache_spec
                for g in self.kv_cache_config.kv_cache_groups
                if isinstance(g.kv_cache_spec, KeptTokensSpec)
            ]
            if kept:
                _dropped[request.request_id] = kept[0].n_dropped(request.prompt_token_ids)
        return allocate_slots(self, request, *args, **kwargs)

    @functools.wraps(free)
    def free_forgetting(self, request) -> None:
        free(self, request)
        _dropped.pop(request.request_id, None)

    @functools.wraps(pop_blocks_for_free)
    def pop_blocks_for_free_forgetting(self, request):
        _dropped.pop(request.request_id, None)
        return pop_blocks_for_free(self, request)

    KVCacheManager.allocate_slots = allocate_slots_recording
    KVCacheManager.free = free_forgetting
    KVCacheManager.pop_blocks_for_free = pop_blocks_for_free_forgetting


_install()
