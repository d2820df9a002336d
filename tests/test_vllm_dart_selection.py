"""graphprune.vllm.selection's DART ranking without vLLM: one prompt's kept mask equals the independent reference's
choice (``graphprune.reference.dart``), and a recomputed request is ranked on its prompt part."""

from __future__ import annotations

import pytest
import torch

import graphprune as gp
from graphprune.reference.dart import _select
from graphprune.vllm.selection import DroppedCounts, Scheduled, dart_kept_mask, plan_step

HEAD_DIM, KV_HEADS, HIDDEN = 4, 2, 16
NORM_WEIGHT = torch.linspace(0.5, 2.0, HIDDEN)  # the decoder's final norm weight


def _rank(method):
    def rank(key, hidden, visual):
        return dart_kept_mask(key, hidden, visual, method, HEAD_DIM, NORM_WEIGHT, lambda norms: norms)

    return rank


def _prompt(seed: int, visual: list[bool]):
    generator = torch.Generator().manual_seed(seed)
    n = len(visual)
    key = torch.randn(n, KV_HEADS * HEAD_DIM, generator=generator)
    hidden = torch.randn(n, HIDDEN, generator=generator)
    return key, hidden, torch.tensor(visual)


def _reference_kept(method, key, hidden, visual) -> list[int]:
    """The reference's kept positions: every text position plus its kept visual ones."""
    n = visual.numel()
    norms = key.reshape(n, KV_HEADS, HEAD_DIM).abs().sum(dim=(1, 2))
    visual_positions = visual.nonzero().flatten().tolist()
    chosen, _ = _select(method, visual_positions, list(range(n)), norms, hidden * NORM_WEIGHT)
    return sorted(set((~visual).nonzero().flatten().tolist()) | set(chosen))


LAYOUTS = {
    "text-visual-text": [False] * 2 + [True] * 12 + [False] * 4,
    "ends-visual": [False] * 3 + [True] * 10,  # the last prompt position is visual: kept, no pivot
    "two-images": [False] + [True] * 6 + [False] * 2 + [True] * 6 + [False],
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "method",
    [
        gp.DART(k=2, keep=0.5),
        gp.DART(k=2, keep=0.25, pivots=2, text_pivots=0),
        gp.DART(k=1, keep=0.75, pivots=1, text_pivots=2),
        gp.DART(k=2, keep=0.1),  # fewer kept visual tokens than pivots: the pivots of largest key norm
    ],
    ids=str,
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kept_mask_equals_reference(layout, method, seed):
    key, hidden, visual = _prompt(seed, LAYOUTS[layout])
    kept = dart_kept_mask(key, hidden, visual, method, HEAD_DIM, NORM_WEIGHT, lambda norms: norms)
    assert kept.nonzero().flatten().tolist() == _reference_kept(method, key, hidden, visual)
    assert int((kept & visual).sum()) == gp.methods.n_keep(method.keep, int(visual.sum()))
    assert bool(kept[-1])


def test_key_norms_are_summed_over_every_head_and_rank():
    """``head_sum`` (tensor parallel: the sum over ranks) decides the pivots: doubling this rank's norms at one
    visual position makes it the only pivot, and the kept set follows."""
    method = gp.DART(k=2, keep=0.25, pivots=1, text_pivots=0)
    key, hidden, visual = _prompt(3, LAYOUTS["text-visual-text"])
    alone = dart_kept_mask(key, hidden, visual, method, HEAD_DIM, NORM_WEIGHT, lambda norms: norms)
    boost = torch.ones(visual.numel())
    target = next(j for j in visual.nonzero().flatten().tolist() if not alone[j])
    boost[target] = 100.0
    summed = dart_kept_mask(key, hidden, visual, method, HEAD_DIM, NORM_WEIGHT, lambda norms: norms * boost)
    assert bool(summed[target])
    assert summed.nonzero().flatten().tolist() == _reference_kept(method, key * boost[:, None], hidden, visual)


def test_keep_one_keeps_every_position():
    key, hidden, visual = _prompt(4, LAYOUTS["two-images"])
    assert dart_kept_mask(key, hidden, visual, gp.DART(keep=1.0), HEAD_DIM, NORM_WEIGHT, lambda n: n).all()


def test_a_recomputed_request_is_ranked_on_its_prompt():
    """A preempted request recomputes its prompt and 3 generated tokens (one with a visual id) in one prefill:
    its prompt rows are ranked as the prompt alone, and the generated rows are all kept."""
    method = gp.DART(k=2, keep=0.5, pivots=2, text_pivots=1)
    prompt_visual = LAYOUTS["text-visual-text"]
    key, hidden, visual = _prompt(5, prompt_visual + [False, True, False])
    n_prompt = len(prompt_visual)
    counts = DroppedCounts()
    plan = plan_step(
        (key, hidden),
        visual,
        query_start_loc=torch.tensor([0, visual.numel()], dtype=torch.int32),
        seq_lens=torch.tensor([visual.numel()], dtype=torch.int32),
        block_table=torch.tensor([[3, 4, 5]], dtype=torch.int32),
        scheduled=Scheduled(["preempted"], torch.tensor([n_prompt]), {}),
        dropped_counts=counts,
        rank=_rank(method),
    )
    alone = _rank(method)(key[:n_prompt], hidden[:n_prompt], visual[:n_prompt])
    assert plan.index.tolist() == alone.nonzero().flatten().tolist() + [n_prompt, n_prompt + 1, n_prompt + 2]
    assert counts.read(torch.tensor([3])).tolist() == [12 - gp.methods.n_keep(0.5, 12)]
