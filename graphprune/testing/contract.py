"""What the contract suite (``tests/test_contract.py``) runs on one model class: a family's ``testing.py`` lists
its classes' cases in ``CONTRACT``, and the suite's matrix is read from every family's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ContractCase:
    """A model class's tiny model and batches, and the methods the contract suite runs on it."""

    build: Callable  # () -> model
    inputs: Callable  # (model, samples, seed=0) -> inputs; sample i alone is inputs(model, [samples[i]], seed=i)
    samples: list  # the batch: samples with different visual counts, in the inputs builder's format
    text_only: list  # a batch without visual input
    methods: tuple  # pass == reference for each (the first is also the one restore runs)
    variants: tuple  # keep=1 (at keep 1.0), text-only, batch == alone, sampling, eos
