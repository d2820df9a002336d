"""What the model's forward does not see: each scheduled request's id and prompt length, from vLLM's model runner.

A request that vLLM preempts is recomputed as one prefill of its prompt plus the tokens it generated, and FastV must
rank on the prompt part only. The runner's input batch holds each row's request id and prompt length, its rows in
the attention metadata's order, and the KV blocks the scheduler gave each request in each group (the worker checks
that layers >= k need exactly those); a wrapper around ``GPUModelRunner._model_forward`` (which vLLM's CPU runner
inherits) hands them to the model's ``PrunedDecoder`` for the step. Other models pass through untouched.
"""

from __future__ import annotations

import functools

import torch

from .gather import PrunedDecoder
from .kv_cache import KeptTokensSpec
from .selection import Scheduled

_installed = False


def install() -> None:
    """Wrap ``GPUModelRunner._model_forward`` once per process (called where a FastV model is built: the worker)."""
    global _installed
    if _installed:
        return
    _installed = True
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._model_forward

    @functools.wraps(original)
    def _model_forward(self, *args, **kwargs):
        fastv = getattr(self.get_model(), "fastv", None)
        if not isinstance(fastv, PrunedDecoder):
            return original(self, *args, **kwargs)
        batch = self.input_batch
        n_reqs = batch.num_reqs
        kept_blocks = {}
        for index, group in enumerate(self.kv_cache_config.kv_cache_groups):
            if isinstance(group.kv_cache_spec, KeptTokensSpec):
                blocks = torch.from_numpy(batch.block_table[index].num_blocks_per_row[:n_reqs].copy())
                kept_blocks.update(dict.fromkeys(group.layer_names, blocks))
        prompt_lens = batch.num_prompt_tokens_cpu_tensor[:n_reqs].clone()
        scheduled = Scheduled(batch.req_ids[:n_reqs], prompt_lens, kept_blocks)
        with fastv.scheduled(scheduled):
            return original(self, *args, **kwargs)

    GPUModelRunner._model_forward = _model_forward
