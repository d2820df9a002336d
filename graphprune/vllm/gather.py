"""Running decoder layers >= k on the kept rows of vLLM's flattened batch.

Forward hooks on one vLLM decoder (``decoder.layers[i].self_attn.attn`` is vLLM's ``Attention``):

- a step with a prefill runs eagerly (the runner's forward context gets ``skip_compiled``): layer k-1's
  ``Attention`` sees q and k after RoPE, and the step is planned at layer k's input (``selection.plan_step``), from
  them (FastV) or from the keys and the hidden states entering layer k (DART);
- a decode-only step is planned before the forward (``selection.plan_decode``, from the metadata alone: no row is
  dropped, only layers >= k's KV lengths and slots move), and runs under vLLM's compilation: the hooks below do
  nothing in it (vLLM traces the decoder once, with the hooks idle, and then calls the compiled code without guards);
- layers >= k report a ``KeptTokensSpec`` (``kv_cache.py``): they form their own KV cache group(s), whose blocks the
  scheduler allocates for the kept tokens only;
- layer k's input (positions, hidden states, residual) is gathered to the kept rows, and each KV cache group of
  layers >= k gets its own attention metadata (built by the backend's own metadata builder from the kept rows'
  query/sequence lengths and that group's block table) and KV slot mapping in the ``ForwardContext``, restored when
  the step ends; the blocks the scheduler gave each request there must be exactly those the kept tokens need;
- layers > k get the kept rows' positions (every M-RoPE row);
- the last layer's output is scattered back to the full batch, so that the runner's logits indices stay valid.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

from ..methods import DART, FastV
from .kv_cache import KeptTokensSpec
from .selection import (
    DroppedCounts,
    Plan,
    Scheduled,
    dart_kept_mask,
    is_decode_only,
    kept_mask,
    plan_decode,
    plan_step,
    require_scheduled,
)

METADATA_FIELDS = ("query_start_loc", "seq_lens", "block_table")  # what plan_step reads from the backend's metadata


class PrunedDecoder:
    """FastV or DART on one vLLM decoder (``.layers``, ``.norm``); ``scheduled(...)`` (the runner) and
    ``step(input_ids)`` (the model) wrap each forward."""

    def __init__(self, decoder: nn.Module, method: FastV | DART, visual_ids: tuple[int, ...], vllm_config) -> None:
        self.method, self.vllm_config = method, vllm_config
        self.name = type(method).__name__  # what the errors call the method
        self.norm_weight = _final_norm_weight(decoder) if isinstance(method, DART) else None
        self.layers = decoder.layers
        self.attentions = [layer.self_attn.attn for layer in self.layers]
        self.pruned_names = [attention.layer_name for attention in self.attentions[method.k :]]
        self.visual_ids = torch.tensor(visual_ids)
        self.dropped_counts = DroppedCounts()
        self.input_ids: torch.Tensor | None = None
        self.requests: Scheduled | None = None  # this step's requests, from the model runner (runner.py)
        self.ranking = False  # this step has a prefill: it runs eagerly and layer k's input hook plans it
        self.ranked = False  # layer k's input hook planned this step
        self.attention_inputs: tuple[torch.Tensor, torch.Tensor] | None = None  # layer k-1's query, key rows
        self.plan: Plan | None = None
        self.full: tuple[torch.Tensor, torch.Tensor] | None = None  # layer k's input, all rows
        self.positions: torch.Tensor | None = None  # the kept rows' positions
        self.restore: dict[str, tuple[object, object]] = {}
        self._builders: dict[tuple[str, ...], object] = {}  # the backend's metadata builder per group of layers >= k
        k = method.k
        for attention in self.attentions[k:]:
            attention.get_kv_cache_spec = _kept_tokens_spec(attention.get_kv_cache_spec, method.keep, visual_ids)
        self.attentions[k - 1].register_forward_pre_hook(self._layer_inputs)
        self.layers[k].register_forward_pre_hook(self._gather)
        for index in range(k, len(self.layers)):
            self.layers[index].register_forward_pre_hook(self._positions)
        self.layers[-1].register_forward_hook(self._scatter)

    @contextlib.contextmanager
    def scheduled(self, requests: Scheduled) -> Iterator[None]:
        """One step of vLLM's model runner, inside its forward context: a decode-only step is planned here, before
        the (compiled) forward; a step with a prefill is made to run eagerly, and must have been ranked by the end."""
        from vllm.forward_context import get_forward_context

        self.requests = requests
        try:
            metadata = self._metadata(self.attentions[self.method.k - 1].layer_name)  # None: nothing to cache
            if metadata is not None and is_decode_only(metadata.query_start_loc, metadata.seq_lens):
                counts = self.dropped_counts
                plan = plan_decode(metadata.query_start_loc, metadata.seq_lens, metadata.block_table, counts)
                if plan is not None:
                    self._prune_metadata(plan, gathered=False)
            elif metadata is not None:
                self.ranking = True
                get_forward_context().skip_compiled = True  # vLLM's decorator then calls the decoder's forward
            yield
            if self.ranking and not self.ranked:
                raise RuntimeError(
                    f"graphprune: a step with a prefill ran without {self.name}'s ranking hooks (layers k-1 and k); "
                    "the decoder's compiled code ran instead of its eager forward"
                )
        finally:
            self._restore_metadata()
            self.requests, self.ranking, self.ranked = None, False, False

    @contextlib.contextmanager
    def step(self, input_ids: torch.Tensor | None) -> Iterator[None]:
        """One forward of the model (never compiled: vLLM compiles the decoder inside it)."""
        if input_ids is not None and self._metadata(self.attentions[self.method.k - 1].layer_name) is not None:
            require_scheduled(self.requests, torch.isin(input_ids, self.visual_ids.to(input_ids.device)))
        self.input_ids = input_ids
        try:
            yield
        finally:
            self.input_ids, self.plan, self.full, self.positions = None, None, None, None
            self.attention_inputs = None

    def _metadata(self, layer_name: str):
        """The step's attention metadata of one layer, from the forward context; None in dummy and profile runs."""
        from vllm.forward_context import get_forward_context, is_forward_context_available

        if not is_forward_context_available():
            return None
        metadata = get_forward_context().attn_metadata
        if isinstance(metadata, list):
            raise RuntimeError(
                f"graphprune: {self.name} in vLLM does not support micro-batching (per-ubatch attention metadata)"
            )
        metadata = metadata.get(layer_name) if isinstance(metadata, dict) else None
        if metadata is None:
            return None
        missing = [field for field in METADATA_FIELDS if not hasattr(metadata, field)]
        if missing:
            raise RuntimeError(
                f"graphprune: {type(metadata).__name__} lacks {missing}; {self.name} in vLLM supports the attention "
                f"backends whose metadata has {list(METADATA_FIELDS)} (CPU_ATTN, FLASH_ATTN, TRITON_ATTN, "
                "FLEX_ATTENTION)"
            )
        return metadata

    def _restore_metadata(self) -> None:
        from vllm.forward_context import get_forward_context, is_forward_context_available

        if self.restore and is_forward_context_available():
            context = get_forward_context()
            for name, (metadata, slots) in self.restore.items():
                context.attn_metadata[name] = metadata
                context.slot_mapping[name] = slots
        self.restore = {}

    def _layer_inputs(self, attention: nn.Module, args: tuple) -> None:
        """Layer k-1's attention, in a step that ranks: keep its query and key rows (after RoPE) for ``_rank``."""
        if not self.ranking or self.input_ids is None:
            return
        n_tokens = int(self._metadata(attention.layer_name).query_start_loc[-1])
        self.attention_inputs = (args[0][:n_tokens], args[1][:n_tokens])

    def _rank(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> Plan | None:
        """Plan the step from layer k-1's query and key rows and the hidden states entering layer k (vLLM hands a
        layer its input as ``hidden + residual``), and prune the metadata of layers >= k to the plan."""
        attention = self.attentions[self.method.k - 1]
        query, key = self.attention_inputs
        self.attention_inputs, self.ranked = None, True
        n_tokens = key.shape[0]
        metadata = self._metadata(attention.layer_name)
        visual = torch.isin(self.input_ids[:n_tokens], self.visual_ids.to(self.input_ids.device))
        head_dim = attention.head_size
        if isinstance(self.method, DART):
            entering = hidden[:n_tokens] if residual is None else hidden[:n_tokens] + residual[:n_tokens]
            inputs = (key, entering)
            rank = functools.partial(
                dart_kept_mask, method=self.method, head_dim=head_dim, norm_weight=self.norm_weight, head_sum=_head_sum
            )
        else:
            inputs = (query, key)
            scale = float(attention.impl.scale)
            rank = functools.partial(
                kept_mask, method=self.method, scale=scale, head_dim=head_dim, head_mean=_head_mean
            )
        plan = plan_step(
            inputs,
            visual,
            metadata.query_start_loc,
            metadata.seq_lens,
            metadata.block_table,
            self.requests,
            self.dropped_counts,
            rank,
        )
        if plan is not None:
            self._prune_metadata(plan, gathered=True)
        return plan

    def _prune_metadata(self, plan: Plan, gathered: bool) -> None:
        """Give each KV cache group of layers >= k metadata and slots over the kept rows, in its own block table.

        ``gathered``: layers >= k run on the kept rows only (``_gather``); else on every row of the step, padding
        included, whose slots are vLLM's ``PAD_SLOT_ID`` (not written)."""
        from vllm.forward_context import get_forward_context
        from vllm.v1.attention.backend import CommonAttentionMetadata
        from vllm.v1.attention.backends.utils import PAD_SLOT_ID

        context = get_forward_context()
        groups: dict[int, tuple[object, list[str]]] = {}  # the runner builds one metadata object per group
        for name in self.pruned_names:
            groups.setdefault(id(context.attn_metadata[name]), (context.attn_metadata[name], []))[1].append(name)
        block_size = self.vllm_config.cache_config.block_size
        for metadata, names in groups.values():
            self._check_blocks(names[0], plan.blocks_needed(block_size))
            kept_slots = plan.slot_mapping(metadata.block_table, block_size)
            slot_mapping = kept_slots
            if not gathered:  # the step's every row, padding included
                slot_mapping = torch.full_like(context.slot_mapping[names[0]], PAD_SLOT_ID)
                slot_mapping[: kept_slots.numel()] = kept_slots
            common = CommonAttentionMetadata(
                query_start_loc=plan.query_start_loc,
                query_start_loc_cpu=plan.query_start_loc.cpu(),
                seq_lens=plan.seq_lens,
                num_reqs=plan.seq_lens.numel(),
                num_actual_tokens=int(plan.index.numel()),
                max_query_len=plan.max_query_len,
                max_seq_len=plan.max_seq_len,
                block_table_tensor=metadata.block_table,
                slot_mapping=kept_slots,
            )
            pruned = self._builder(names).build(0, common)
            for name in names:
                self.restore[name] = (context.attn_metadata[name], context.slot_mapping.get(name))
                context.attn_metadata[name] = pruned
                context.slot_mapping[name] = slot_mapping

    def _check_blocks(self, layer_name: str, needed: torch.Tensor) -> None:
        """The scheduler's kept count (``kv_cache.KeptTokensManager``) must be the worker's: same blocks per request."""
        allocated = None if self.requests is None else self.requests.kept_blocks.get(layer_name)
        if allocated is None or not torch.equal(allocated.long(), needed.cpu()):
            raise RuntimeError(
                f"graphprune: layers >= k need {needed.tolist()} KV blocks per request this step, the scheduler gave "
                f"{None if allocated is None else allocated.tolist()}: its kept count differs from the worker's"
            )

    def _builder(self, names: list[str]):
        """The attention backend's metadata builder for one KV cache group of layers >= k."""
        key = tuple(names)
        if key not in self._builders:
            attention = self.attentions[self.method.k]
            spec = attention.get_kv_cache_spec(self.vllm_config)
            builder_cls = attention.attn_backend.get_builder_cls()
            device = next(self.layers[0].parameters()).device
            self._builders[key] = builder_cls(spec, names, self.vllm_config, device)
        return self._builders[key]

    def _gather(self, layer: nn.Module, args: tuple) -> tuple | None:
        positions, hidden, residual, *rest = args
        if self.attention_inputs is not None:
            self.plan = self._rank(hidden, residual)
        if self.plan is None:
            return None
        self.full = (hidden, residual)
        index = self.plan.index
        self.positions = positions.index_select(-1, index)  # [N] or M-RoPE's [3, N]: every row
        return (positions, hidden[index], residual[index], *rest)

    def _positions(self, layer: nn.Module, args: tuple) -> tuple | None:
        if self.plan is None:
            return None
        return (self.positions, *args[1:])

    def _scatter(self, layer: nn.Module, args: tuple, output: tuple) -> tuple | None:
        if self.plan is None:
            return None
        hidden, residual = output
        full_hidden, full_residual = self.full
        index = self.plan.index
        return full_hidden.index_copy(0, index, hidden), full_residual.index_copy(0, index, residual)


def _head_mean(scores: torch.Tensor) -> torch.Tensor:
    """This rank's head mean -> the mean over every head (tensor parallel ranks hold equal head counts)."""
    from vllm.distributed import get_tensor_model_parallel_world_size, tensor_model_parallel_all_reduce

    world = get_tensor_model_parallel_world_size()
    return scores if world == 1 else tensor_model_parallel_all_reduce(scores) / world


def _final_norm_weight(decoder: nn.Module) -> torch.Tensor:
    """The decoder's final RMSNorm weight (``decoder.norm``), by which DART scales the hidden states it compares."""
    weight = getattr(getattr(decoder, "norm", None), "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise RuntimeError(
            f"graphprune: DART in vLLM needs the decoder's final norm weight (decoder.norm.weight); "
            f"{type(decoder).__name__} has none"
        )
    return weight


def _head_sum(norms: torch.Tensor) -> torch.Tensor:
    """This rank's key norms -> their sum over every rank's key heads (tensor parallel; where vLLM replicates the key
    heads over ranks, each is counted as often as it is replicated: a common factor, so the same ranking)."""
    from vllm.distributed import get_tensor_model_parallel_world_size, tensor_model_parallel_all_reduce

    return norms if get_tensor_model_parallel_world_size() == 1 else tensor_model_parallel_all_reduce(norms)


def _kept_tokens_spec(full_spec, keep: float, visual_ids: tuple[int, ...]):
    """A layer's ``get_kv_cache_spec`` that reports its full-attention spec as a ``KeptTokensSpec``."""

    def get_kv_cache_spec(vllm_config):
        return KeptTokensSpec.from_full(full_spec(vllm_config), keep, visual_ids)

    return get_kv_cache_spec
