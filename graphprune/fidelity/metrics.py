"""Per-sample agreement of a pruned model's greedy outputs with the unpruned model's on the same batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

ENDED = -1  # stands for every position after a continuation's end of sequence


@dataclass
class Outputs:
    """One batch's greedy run: the first new token's raw logits ``[B, V]`` and the new tokens ``[B, T]`` (after
    a sample's end of sequence: ``ENDED``, up to ``max_new_tokens``)."""

    first_logits: torch.Tensor
    tokens: torch.Tensor


def continuation(new_tokens: torch.Tensor, eos_ids: list[int], max_new_tokens: int) -> torch.Tensor:
    """``new_tokens [B, t]`` with every position after a sample's first end-of-sequence token, and the positions up
    to ``max_new_tokens`` that generate left out once all samples had ended, set to ``ENDED``."""
    tokens = torch.full((new_tokens.shape[0], max_new_tokens), ENDED, dtype=torch.long)
    tokens[:, : new_tokens.shape[1]] = new_tokens.cpu()
    is_eos = torch.isin(tokens, torch.tensor(eos_ids, dtype=torch.long))
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return tokens.masked_fill(after_eos, ENDED)


def compare(base: Outputs, pruned: Outputs) -> dict[str, torch.Tensor]:
    """Per sample: ``first_token`` (1.0 where the first new tokens agree), ``sequence`` (1.0 where every new token
    agrees), ``tokens`` (the share of the ``max_new_tokens`` positions that agree), ``kl`` (KL(unpruned ‖ pruned) of
    the first-token distributions, float64) and ``rank`` (how many tokens the pruned model's first logits put
    strictly above the unpruned model's greedy first token: 0 where it is the pruned model's first choice)."""
    log_p = torch.log_softmax(base.first_logits.double(), dim=-1)
    log_q = torch.log_softmax(pruned.first_logits.double(), dim=-1)
    kl = torch.where(log_p == -torch.inf, 0.0, log_p.exp() * (log_p - log_q)).sum(-1)
    top = base.first_logits.argmax(-1, keepdim=True)
    pruned_logits = pruned.first_logits.float()
    rank = (pruned_logits > pruned_logits.gather(-1, top)).sum(-1)
    same = base.tokens == pruned.tokens
    return {
        "first_token": same[:, 0].double(),
        "sequence": same.all(-1).double(),
        "tokens": same.double().mean(-1),
        "kl": kl.cpu(),
        "rank": rank.double().cpu(),
    }
