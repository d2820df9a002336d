"""Per-step bookkeeping of FastV and DART over vLLM's flattened batch and paged KV cache.

vLLM's forward sees every scheduled request's tokens concatenated (``query_start_loc`` marks where each starts); each
request's id and prompt length come from the model runner (``runner.py``). A request is prefilled in one step
(graphprune turns chunked prefill off and raises the token and multimodal budgets), so a row whose query length equals
its sequence length is a prefill: the method ranks the visual tokens of its *prompt* part there. A request that vLLM
preempted is recomputed as one prefill of its prompt plus the tokens it generated; ranking on the prompt part
(causal: its rows do not see later tokens) reproduces its first selection, and the generated tokens are all kept.
Any other row must be a 1-token decode (anything else is refused). Layers >= k hold that request's KV compacted in
the first ``n_kept`` logical slots of their own KV cache group's block table (``kv_cache.py``); every later step of
the request needs how many positions they dropped, kept per request in ``DroppedCounts`` keyed by the request's first
KV block in layer k-1's group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..methods import DART, FastV, n_keep
from ..ops import dart_scores_by_norms, fastv_scores, key_norms

logger = logging.getLogger("vllm.graphprune")  # a child of vLLM's logger: vLLM's handler and format


@dataclass(frozen=True)
class Scheduled:
    """The requests of one step, in the attention metadata's row order (from vLLM's model runner)."""

    request_ids: Sequence[str]
    prompt_lens: torch.Tensor  # [R] int, on the CPU: each request's prompt length (generated tokens excluded)
    kept_blocks: Mapping[str, torch.Tensor]  # layer >= k -> [R] KV blocks the scheduler gave each request in its group


@dataclass(frozen=True)
class Plan:
    """What layers >= k run on in one step: rows of the flattened batch and their attention bookkeeping."""

    index: torch.Tensor  # [n_kept] long: rows of the flattened batch (original positions) that layers >= k compute
    query_start_loc: torch.Tensor  # [R + 1] int32, over the kept rows
    seq_lens: torch.Tensor  # [R] int32: positions each request's layers >= k attend to, new ones included
    rows: torch.Tensor  # [n_kept] long: the request (row of the metadata) of each kept row
    logical: torch.Tensor  # [n_kept] long: the logical KV slot each kept row writes in layers >= k
    max_query_len: int
    max_seq_len: int
    n_tokens: int  # rows of the flattened batch before pruning (padding excluded)

    def slot_mapping(self, block_table: torch.Tensor, block_size: int) -> torch.Tensor:
        """``[n_kept]`` int64: the physical KV slot each kept row writes, in a group with that block table."""
        blocks = block_table[self.rows, self.logical // block_size].long()
        return blocks * block_size + self.logical % block_size

    def blocks_needed(self, block_size: int) -> torch.Tensor:
        """``[R]``: the KV blocks each request's layers >= k hold after this step."""
        return (self.seq_lens.long() + block_size - 1) // block_size


class DroppedCounts:
    """How many prompt positions the layers >= k of each live request do not hold, keyed by its first KV block.

    A request owns its first block from its prefill until it finishes (prefix caching is off, so no block is
    shared); each prefill overwrites the entry of its block, so a finished request's entry is reused, not leaked.
    """

    def __init__(self) -> None:
        self.table = torch.zeros(0, dtype=torch.long)

    def read(self, first_blocks: torch.Tensor) -> torch.Tensor:
        self._grow(first_blocks)
        return self.table[first_blocks.long()]

    def write(self, first_blocks: torch.Tensor, dropped: torch.Tensor) -> None:
        self._grow(first_blocks)
        self.table[first_blocks.long()] = dropped.to(self.table)

    def _grow(self, first_blocks: torch.Tensor) -> None:
        if first_blocks.numel() and int(first_blocks.max()) >= self.table.numel():
            size = max(int(first_blocks.max()) + 1, 2 * self.table.numel())
            grown = torch.zeros(size, dtype=torch.long, device=first_blocks.device)
            grown[: self.table.numel()] = self.table
            self.table = grown


def visual_budget(keep: float, n_visual: int) -> int:
    """SPEC FastV step 3's count of kept visual tokens: ``ceil(keep * n_visual)``, at least one where there is one."""
    return max(n_keep(keep, n_visual), 1) if n_visual else 0


def kept_mask(
    query: torch.Tensor,
    key: torch.Tensor,
    visual: torch.Tensor,
    method: FastV,
    scale: float,
    head_dim: int,
    head_mean: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """One request's prompt: ``[n]`` bool, True at the positions FastV keeps (``best_visual``, scored by
    ``graphprune.ops.fastv_scores``). ``query``/``key`` are layer k-1's rows of this prompt after RoPE,
    ``[n, heads * head_dim]``; ``head_mean`` turns this rank's head mean into the mean over all heads (tensor
    parallel)."""
    n, count = visual.numel(), visual_budget(method.keep, int(visual.sum()))
    if count == int(visual.sum()):
        return torch.ones(n, dtype=torch.bool, device=visual.device)
    q = query.reshape(n, -1, head_dim).transpose(0, 1)[None]
    k = key.reshape(n, -1, head_dim).transpose(0, 1)[None]
    real = torch.ones(1, n, dtype=torch.bool, device=visual.device)
    return best_visual(head_mean(fastv_scores(q, k, real, scale, method.query))[0], visual, count)


def dart_kept_mask(
    key: torch.Tensor,
    hidden: torch.Tensor,
    visual: torch.Tensor,
    method: DART,
    head_dim: int,
    norm_weight: torch.Tensor,
    head_sum: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """One request's prompt: ``[n]`` bool, True at the positions DART keeps (``best_visual``, scored by
    ``graphprune.ops.dart_scores_by_norms``). ``key`` is layer k-1's keys of this prompt after RoPE,
    ``[n, kv_heads * head_dim]``; ``hidden`` ``[n, d]`` the hidden states entering layer k; ``norm_weight`` the
    decoder's final norm weight; ``head_sum`` turns this rank's key norms into the sum over all heads (tensor
    parallel)."""
    n, count = visual.numel(), visual_budget(method.keep, int(visual.sum()))
    if count == int(visual.sum()):
        return torch.ones(n, dtype=torch.bool, device=visual.device)
    norms = head_sum(key_norms(key.reshape(n, -1, head_dim).transpose(0, 1)[None]))
    real = torch.ones(1, n, dtype=torch.bool, device=visual.device)
    pivots, text_pivots = method.pivots, method.text_pivots
    scores = dart_scores_by_norms(hidden[None], norms, norm_weight, visual[None], real, pivots, text_pivots)
    return best_visual(scores[0], visual, count)


def best_visual(scores: torch.Tensor, visual: torch.Tensor, count: int) -> torch.Tensor:
    """``[n]`` bool: every text position, and the ``count`` visual ones of largest ``scores`` (ties to the earlier
    position), except that the last prompt position is always kept and, when visual, is one of them (its row is
    the one sampled); as ``graphprune.ops.fastv_select``."""
    scores = scores.masked_fill(~visual, float("-inf"))
    if bool(visual[-1]):
        scores[-1] = float("inf")  # the last prompt position: kept, as one of the ``count``
    kept = ~visual
    kept[torch.sort(scores, descending=True, stable=True).indices[:count]] = True
    return kept


def plan_step(
    inputs: tuple[torch.Tensor, ...],
    visual: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    scheduled: Scheduled,
    dropped_counts: DroppedCounts,
    rank: Callable[..., torch.Tensor],
) -> Plan | None:
    """Rank the step's prefills, record their dropped counts, and lay out what layers >= k compute and cache.

    ``inputs`` and ``visual`` (bool) are ``[n_tokens, ...]`` over the flattened batch; ``block_table`` is layer k-1's
    (its first column keys ``dropped_counts``); ``rank(*inputs, visual)``, on one prompt's rows of each, gives that
    prompt's kept mask (``kept_mask``, ``dart_kept_mask``). None when no request in the step
    has dropped anything (layers >= k then run as in plain vLLM).
    """
    n_reqs = query_start_loc.numel() - 1
    starts, ends = query_start_loc[:-1].long(), query_start_loc[1:].long()
    query_lens, seqs = ends - starts, seq_lens[:n_reqs].long()
    prefill = query_lens == seqs
    partial = ~prefill & (query_lens != 1)
    if bool(partial.any()):
        row = int(partial.nonzero()[0])
        raise RuntimeError(
            f"graphprune: a step holds {int(query_lens[row])} of a request's {int(seqs[row])} positions; FastV in vLLM "
            "accepts only whole-prompt prefills and 1-token decodes (a prompt was split: chunked prefill or budgets)"
        )
    n_tokens = int(ends[-1]) if n_reqs else 0
    keep = torch.ones(n_tokens, dtype=torch.bool, device=visual.device)
    for row in prefill.nonzero().flatten().tolist():
        start, end = int(starts[row]), int(ends[row])
        prompt_end = start + int(scheduled.prompt_lens[row])  # a recomputed request's generated tokens: all kept
        if visual[start:prompt_end].any():
            prompt = slice(start, prompt_end)
            keep[prompt] = rank(*(rows[prompt] for rows in inputs), visual[prompt])
            _log_kept(scheduled.request_ids[row], keep[start:prompt_end], visual[start:prompt_end], end - prompt_end)
    return _layout(keep, query_lens, seqs, prefill, block_table[:n_reqs, 0], dropped_counts)


def require_scheduled(scheduled: Scheduled | None, visual: torch.Tensor) -> None:
    """A step with visual tokens needs its requests from vLLM's model runner: without them nothing ranks it."""
    if scheduled is None and bool(visual.any()):
        raise RuntimeError(
            "graphprune: a prefill with visual tokens but no prompt lengths from vLLM's model runner "
            "(graphprune.vllm.runner's hook on GPUModelRunner._model_forward did not run)"
        )


def is_decode_only(query_start_loc: torch.Tensor, seq_lens: torch.Tensor) -> bool:
    """Whether every request of the step decodes one token (no prefill: nothing to rank, no row dropped)."""
    n_reqs = query_start_loc.numel() - 1
    query_lens = query_start_loc[1:] - query_start_loc[:-1]
    return bool(((query_lens == 1) & (seq_lens[:n_reqs] > 1)).all())


def plan_decode(
    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor, dropped_counts: DroppedCounts
) -> Plan | None:
    """``plan_step`` of a decode-only step (``is_decode_only``): every row kept, each request's KV lengths and slots
    in layers >= k shifted by its dropped count; planned before the forward, from the metadata alone."""
    n_reqs = query_start_loc.numel() - 1
    query_lens = (query_start_loc[1:] - query_start_loc[:-1]).long()
    keep = torch.ones(int(query_start_loc[-1]), dtype=torch.bool, device=query_start_loc.device)
    prefill = torch.zeros(n_reqs, dtype=torch.bool, device=query_start_loc.device)
    return _layout(keep, query_lens, seq_lens[:n_reqs].long(), prefill, block_table[:n_reqs, 0], dropped_counts)


def _layout(
    keep: torch.Tensor,
    query_lens: torch.Tensor,
    seqs: torch.Tensor,
    prefill: torch.Tensor,
    first_blocks: torch.Tensor,
    dropped_counts: DroppedCounts,
) -> Plan | None:
    """The ``Plan`` of a step whose kept rows are ``keep``; records the prefills' dropped counts."""
    n_reqs, device = query_lens.numel(), keep.device
    rows = torch.repeat_interleave(torch.arange(n_reqs, device=device), query_lens)
    kept_per_row = torch.zeros(n_reqs, dtype=torch.long, device=device).index_add_(0, rows, keep.long())
    dropped = torch.where(prefill, query_lens - kept_per_row, dropped_counts.read(first_blocks))
    dropped_counts.write(first_blocks[prefill], dropped[prefill])
    if n_reqs == 0 or not bool(dropped.any()):
        return None
    index = keep.nonzero().flatten()
    base = seqs - query_lens - torch.where(prefill, 0, dropped)  # logical slot of each row's first new kept token
    new_starts = torch.cumsum(kept_per_row, 0) - kept_per_row
    kept_rows = rows[index]
    logical = base[kept_rows] + torch.arange(index.numel(), device=device) - new_starts[kept_rows]
    new_seq_lens = base + kept_per_row
    return Plan(
        index=index,
        query_start_loc=torch.cat([new_starts, new_starts[-1:] + kept_per_row[-1:]]).to(torch.int32),
        seq_lens=new_seq_lens.to(torch.int32),
        rows=kept_rows,
        logical=logical,
        max_query_len=int(kept_per_row.max()),
        max_seq_len=int(new_seq_lens.max()),
        n_tokens=int(keep.numel()),
    )


def _log_kept(request_id: str, kept: torch.Tensor, visual: torch.Tensor, n_generated: int) -> None:
    """The per-request kept count, at debug level (``VLLM_LOGGING_LEVEL=DEBUG``)."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "graphprune: request %s: layers >= k hold %d of %d prompt positions (%d of %d visual tokens)%s",
            request_id,
            int(kept.sum()),
            kept.numel(),
            int((kept & visual).sum()),
            int(visual.sum()),
            f", recomputed with its {n_generated} generated tokens after a preemption" if n_generated else "",
        )
