"""graphprune.vllm.selection without vLLM: the flat-batch and paged-KV bookkeeping of one engine step."""

from __future__ import annotations

import pytest
import torch

import graphprune as gp
from graphprune.vllm.selection import DroppedCounts, kept_mask, plan_step

HEAD_DIM = 8


def _rank(query, key, visual):
    return kept_mask(query, key, visual, gp.FastV(k=1, keep=0.5), 1.0, HEAD_DIM, lambda scores: scores)


def _step(dropped_counts, visual):
    """Row 0 decodes its 10th token (3 positions dropped at its prefill); row 1 prefills 6 tokens."""
    keys = torch.eye(7, HEAD_DIM)  # token t of the flat batch: key e_t (row 1's token j is flat token 1 + j)
    query = torch.zeros(7, HEAD_DIM)
    query[6] = 20.0 * (keys[3] + keys[5])  # row 1's last token attends to its tokens 2 and 4
    return plan_step(
        query,
        keys,
        visual,
        query_start_loc=torch.tensor([0, 1, 7], dtype=torch.int32),
        seq_lens=torch.tensor([10, 6], dtype=torch.int32),
        block_table=torch.tensor([[7, 8, 9], [2, 3, 0]], dtype=torch.int32),
        block_size=4,
        dropped_counts=dropped_counts,
        rank=_rank,
    )


def test_plan_lays_out_kept_rows_compacted_slots_and_decode_lengths():
    counts = DroppedCounts()
    counts.write(torch.tensor([7, 2]), torch.tensor([3, 9]))  # block 2's 9: a finished request's stale entry
    visual = torch.tensor([False, False, True, True, True, True, False])  # row 1: text, 4 visual, text
    plan = _step(counts, visual)
    assert plan.index.tolist() == [0, 1, 3, 5, 6]  # row 1 keeps its text and visual tokens 2 and 4
    assert plan.query_start_loc.tolist() == [0, 1, 5]
    assert plan.seq_lens.tolist() == [7, 4]  # row 0: 10 - 3 dropped; row 1: 6 - 2 dropped
    # row 0's new token at logical 6 -> block 8, offset 2; row 1's kept tokens at logical 0..3 of block 2
    assert plan.slot_mapping.tolist() == [8 * 4 + 2, 8, 9, 10, 11]
    assert (plan.max_query_len, plan.max_seq_len, plan.n_tokens) == (4, 7, 7)
    assert counts.read(torch.tensor([7, 2])).tolist() == [3, 2]


def test_no_plan_when_nothing_is_dropped():
    counts = DroppedCounts()
    counts.write(torch.tensor([2]), torch.tensor([5]))  # stale: the text-only prefill on block 2 must reset it
    assert _step(counts, torch.zeros(7, dtype=torch.bool)) is None  # text-only prefill, decode of an unpruned request
    assert counts.read(torch.tensor([2])).tolist() == [0]


def test_a_dropped_last_prompt_position_is_kept():
    """The prompt ends with a visual token that ranks last: it is kept anyway (its row is the one sampled), as one of
    the ceil(keep * 4) = 2 (SPEC FastV step 3), the other the best-ranked remaining one."""
    keys = torch.eye(5, HEAD_DIM)
    query = torch.zeros(5, HEAD_DIM)
    query[4] = 20.0 * (keys[1] + keys[2])  # the last token attends to visual tokens 1 and 2, not to itself
    visual = torch.tensor([False, True, True, True, True])
    assert _rank(query, keys, visual).tolist() == [True, True, False, False, True]


def test_a_split_prompt_is_refused():
    """A row that is neither a whole prompt (query length == sequence length) nor a 1-token decode."""
    with pytest.raises(RuntimeError, match="^graphprune: a step holds 3 of a request's 9 positions"):
        plan_step(
            torch.zeros(3, HEAD_DIM),
            torch.zeros(3, HEAD_DIM),
            torch.tensor([False, True, True]),
            query_start_loc=torch.tensor([0, 3], dtype=torch.int32),
            seq_lens=torch.tensor([9], dtype=torch.int32),
            block_table=torch.tensor([[4, 5, 6]], dtype=torch.int32),
            block_size=4,
            dropped_counts=DroppedCounts(),
            rank=_rank,
        )
