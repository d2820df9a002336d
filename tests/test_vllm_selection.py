"""graphprune.vllm.selection without vLLM: the flat-batch and paged-KV bookkeeping of one engine step."""

from __future__ import annotations

import pytest
import torch

import graphprune as gp
from graphprune.vllm.selection import (
    DroppedCounts,
    Scheduled,
    is_decode_only,
    kept_mask,
    plan_decode,
    plan_step,
    require_scheduled,
    visual_budget,
)

HEAD_DIM = 8


def _rank(query, key, visual):
    return kept_mask(query, key, visual, gp.FastV(k=1, keep=0.5), 1.0, HEAD_DIM, lambda scores: scores)


def _step(dropped_counts, visual):
    """Row 0 decodes its 10th token (3 positions dropped at its prefill); row 1 prefills 6 tokens."""
    keys = torch.eye(7, HEAD_DIM)  # token t of the flat batch: key e_t (row 1's token j is flat token 1 + j)
    query = torch.zeros(7, HEAD_DIM)
    query[6] = 20.0 * (keys[3] + keys[5])  # row 1's last token attends to its tokens 2 and 4
    return plan_step(
        (query, keys),
        visual,
        query_start_loc=torch.tensor([0, 1, 7], dtype=torch.int32),
        seq_lens=torch.tensor([10, 6], dtype=torch.int32),
        block_table=torch.tensor([[7, 8, 9], [2, 3, 0]], dtype=torch.int32),
        scheduled=Scheduled(["decoding", "prefilling"], torch.tensor([5, 6]), {}),
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
    assert plan.slot_mapping(torch.tensor([[7, 8, 9], [2, 3, 0]]), 4).tolist() == [8 * 4 + 2, 8, 9, 10, 11]
    # another group of layers >= k: its own block table, the same logical slots
    assert plan.slot_mapping(torch.tensor([[1, 5, 0], [6, 0, 0]]), 4).tolist() == [5 * 4 + 2, 24, 25, 26, 27]
    assert plan.blocks_needed(4).tolist() == [2, 1]
    assert (plan.max_query_len, plan.max_seq_len, plan.n_tokens) == (4, 7, 7)
    assert counts.read(torch.tensor([7, 2])).tolist() == [3, 2]


def test_no_plan_when_nothing_is_dropped():
    counts = DroppedCounts()
    counts.write(torch.tensor([2]), torch.tensor([5]))  # stale: the text-only prefill on block 2 must reset it
    assert _step(counts, torch.zeros(7, dtype=torch.bool)) is None  # text-only prefill, decode of an unpruned request
    assert counts.read(torch.tensor([2])).tolist() == [0]


def test_a_recomputed_request_is_ranked_on_its_prompt():
    """A preempted request recomputes its 6 prompt tokens and 3 generated ones in one prefill: ranked on the
    last *prompt* row (not the last row), and the generated tokens are all kept, even one with a visual id."""
    keys = torch.eye(9, HEAD_DIM)  # the last generated token's key is 0
    query = torch.zeros(9, HEAD_DIM)
    query[5] = 20.0 * (keys[2] + keys[4])  # the last prompt token attends to visual tokens 2 and 4
    query[8] = 20.0 * (keys[1] + keys[3])  # the last generated token to 1 and 3
    visual = torch.tensor([False, True, True, True, True, False, False, True, False])
    counts = DroppedCounts()
    plan = plan_step(
        (query, keys),
        visual,
        query_start_loc=torch.tensor([0, 9], dtype=torch.int32),
        seq_lens=torch.tensor([9], dtype=torch.int32),
        block_table=torch.tensor([[3, 4, 5]], dtype=torch.int32),
        scheduled=Scheduled(["preempted"], torch.tensor([6]), {}),
        dropped_counts=counts,
        rank=_rank,
    )
    assert plan.index.tolist() == [0, 2, 4, 5, 6, 7, 8]
    assert plan.seq_lens.tolist() == [7]
    assert counts.read(torch.tensor([3])).tolist() == [2]


def test_visual_step_without_the_runners_requests_is_refused():
    with pytest.raises(RuntimeError, match="^graphprune: a prefill with visual tokens but no prompt lengths"):
        require_scheduled(None, torch.tensor([False, True, True]))
    require_scheduled(None, torch.zeros(3, dtype=torch.bool))  # a dummy run's step: nothing to rank
    require_scheduled(Scheduled(["r"], torch.tensor([3]), {}), torch.tensor([False, True, True]))


@pytest.mark.parametrize(
    "query_start_loc, seq_lens, decode_only",
    [
        ([0, 1, 2], [10, 6], True),
        ([0, 1, 7], [10, 6], False),  # a prefill beside a decode
        ([0, 1], [1], False),  # a 1-token prompt's prefill
        ([0, 1], [5], True),
    ],
)
def test_is_decode_only(query_start_loc, seq_lens, decode_only):
    assert is_decode_only(torch.tensor(query_start_loc), torch.tensor(seq_lens)) is decode_only


def test_a_decode_only_step_is_planned_from_the_metadata_alone():
    """Planned before the (compiled) forward: every row kept, the KV lengths and slots of layers >= k shifted by
    each request's dropped count, as ``plan_step`` lays them out."""
    counts = DroppedCounts()
    counts.write(torch.tensor([7, 2]), torch.tensor([3, 0]))
    metadata = dict(
        query_start_loc=torch.tensor([0, 1, 2], dtype=torch.int32),
        seq_lens=torch.tensor([10, 6], dtype=torch.int32),
        block_table=torch.tensor([[7, 8, 9], [2, 3, 0]], dtype=torch.int32),
    )
    plan = plan_decode(**metadata, dropped_counts=counts)
    assert plan.index.tolist() == [0, 1] and plan.seq_lens.tolist() == [7, 6]
    assert plan.slot_mapping(metadata["block_table"], 4).tolist() == [8 * 4 + 2, 3 * 4 + 1]
    scheduled = Scheduled(["a", "b"], torch.tensor([5, 6]), {})
    stepped = plan_step(
        (torch.zeros(2, HEAD_DIM), torch.zeros(2, HEAD_DIM)),
        torch.zeros(2, dtype=torch.bool),
        **metadata,
        scheduled=scheduled,
        dropped_counts=counts,
        rank=_rank,
    )
    assert all(torch.equal(getattr(plan, name), getattr(stepped, name)) for name in ("index", "seq_lens", "logical"))
    assert counts.read(torch.tensor([7, 2])).tolist() == [3, 0]  # decodes record nothing
    counts.write(torch.tensor([7]), torch.tensor([0]))
    assert plan_decode(**metadata, dropped_counts=counts) is None  # nothing dropped: plain vLLM's metadata


def test_a_visual_last_prompt_position_is_kept_as_one_of_the_count():
    """SPEC FastV step 3: the prompt ends with a visual token that ranks last: it is kept, as one of the
    ceil(0.5 * 4) = 2 kept visual tokens; the other is the best of the rest."""
    keys = torch.eye(5, HEAD_DIM)
    query = torch.zeros(5, HEAD_DIM)
    query[4] = 20.0 * (2 * keys[1] + keys[2])  # the last token attends to visual tokens 1, then 2, not to itself
    visual = torch.tensor([False, True, True, True, True])
    assert _rank(query, keys, visual).tolist() == [True, True, False, False, True]


@pytest.mark.parametrize("keep, n_visual, count", [(0.5, 4, 2), (0.1, 30, 3), (1e-9, 5, 1), (0.25, 0, 0)])
def test_visual_budget_keeps_at_least_one_visual_token(keep, n_visual, count):
    assert visual_budget(keep, n_visual) == count


def test_a_tiny_keep_keeps_one_visual_token():
    keys = torch.eye(5, HEAD_DIM)
    query = torch.zeros(5, HEAD_DIM)
    query[4] = 20.0 * keys[2]
    visual = torch.tensor([False, True, True, True, False])
    kept = kept_mask(query, keys, visual, gp.FastV(k=1, keep=1e-9), 1.0, HEAD_DIM, lambda scores: scores)
    assert kept.tolist() == [True, False, True, False, True]


def test_a_split_prompt_is_refused():
    """A row that is neither a whole prompt (query length == sequence length) nor a 1-token decode."""
    with pytest.raises(RuntimeError, match="^graphprune: a step holds 3 of a request's 9 positions"):
        plan_step(
            (torch.zeros(3, HEAD_DIM), torch.zeros(3, HEAD_DIM)),
            torch.tensor([False, True, True]),
            query_start_loc=torch.tensor([0, 3], dtype=torch.int32),
            seq_lens=torch.tensor([9], dtype=torch.int32),
            block_table=torch.tensor([[4, 5, 6]], dtype=torch.int32),
            scheduled=Scheduled(["split"], torch.tensor([9]), {}),
            dropped_counts=DroppedCounts(),
            rank=_rank,
        )
