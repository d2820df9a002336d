"""The keep-rounding and slot-count rules: one implementation, the same answer in every form."""

import numpy as np
import pytest
import torch

from graphprune import ops
from graphprune.methods import n_keep, n_slots


@pytest.mark.parametrize("keep", [1e-9, 0.1, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.9, 1.0])
def test_n_keep_gives_the_same_counts_for_ints_and_tensors(keep):
    counts = torch.arange(700)
    tensor = n_keep(keep, counts)
    assert tensor.dtype == torch.int64
    assert tensor.tolist() == [n_keep(keep, n) for n in range(700)]
    assert ops.keep_counts(torch.arange(12)[None] < 10, keep).tolist() == [n_keep(keep, 10)]


@pytest.mark.parametrize(
    ("keep", "n_real", "n_visual", "expected"),
    [
        (0.5, [10, 7], [4, 4], 8),  # 10 - 4 + 2
        (0.5, [3, 9], [0, 6], 6),  # a text-only sample keeps all it has
        (0.3, [10], [10], 3),  # float noise: 0.3 * 10 keeps 3, not 4
        (0.5, [5, 0], [5, 0], 3),  # CrossAttentionTrim: every valid feature is a candidate
        (1.0, [6, 4], [3, 2], 6),
        (0.5, [], [], 0),  # empty batch
    ],
)
def test_n_slots_is_the_pruned_length_of_the_longest_sample(keep, n_real, n_visual, expected):
    assert n_slots(keep, n_real, n_visual) == expected
    assert n_slots(keep, np.array(n_real, dtype=np.int64), np.array(n_visual, dtype=np.int64)) == expected
    assert n_slots(keep, torch.tensor(n_real, dtype=torch.long), torch.tensor(n_visual, dtype=torch.long)) == expected


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.75])
def test_n_slots_fits_what_fastv_select_keeps(keep):
    generator = torch.Generator().manual_seed(0)
    lengths, seq_len = [12, 9, 5], 12
    attention_mask = torch.arange(seq_len)[None] >= seq_len - torch.tensor(lengths)[:, None]  # left padding
    visual = attention_mask & (torch.rand(3, seq_len, generator=generator) < 0.6)
    scores = torch.rand(3, seq_len, generator=generator)
    count = n_slots(keep, attention_mask.sum(-1), visual.sum(-1))
    index, valid = ops.fastv_select(scores, visual, attention_mask, torch.arange(count), keep)
    expected = (attention_mask & ~visual).sum(-1) + n_keep(keep, visual.sum(-1))
    assert valid.sum(-1).tolist() == expected.tolist()
    assert int(valid.sum(-1).max()) == count  # the longest sample fills every slot, none is cut off
