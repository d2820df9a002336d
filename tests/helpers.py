"""Helpers and the one list of families x methods that the contract suite (tests/test_contract.py) runs over,
read from the family folders.

Every read of graphprune's per-call prefill record goes through :func:`prefill_record`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import graphprune as gp
from graphprune.methods import n_keep
from graphprune.models import adapter_for
from graphprune.reference import (
    cross_attention_trim_reference,
    fastv_reference,
    fastv_reference_generate,
    trimmed_mask_mode,
)
from graphprune.testing import BATCH as BATCH
from graphprune.testing import MLLAMA_BATCH as MLLAMA_BATCH
from graphprune.testing import QWEN_SAMPLES as QWEN_SAMPLES
from graphprune.testing import family_modules, features_per_tile

LOGITS_RTOL = 1e-4

# The contract suite's matrix: every model class of every family folder's ``testing.CONTRACT``
# (``graphprune/families/<name>/testing.py``; ``graphprune.testing.ContractCase``).
FAMILIES = {name: case for module in family_modules() for name, case in module.CONTRACT.items()}


# one family per method kind: where the fast tier runs the contract's checks that do not depend on the family
REPRESENTATIVES = ("LlavaForConditionalGeneration", "MllamaForConditionalGeneration")


def first_fast(pairs: list[tuple], families=None) -> list:
    """``(family name, method)`` pairs as pytest params: each family's first method in the fast tier (only those of
    ``families``, if given), the rest ``slow`` (the full tier)."""
    seen = set()
    params = []
    for name, method in pairs:
        fast = name not in seen and (families is None or name in families)
        params.append(pytest.param(name, method, marks=() if fast else pytest.mark.slow))
        seen.add(name)
    return params


# The contract suite's cases: every family with each of its methods (the fast tier: the first of each).
CASE_PAIRS = [(name, method) for name, family in FAMILIES.items() for method in family.methods]
VARIANT_PAIRS = [(name, method) for name, family in FAMILIES.items() for method in family.variants]
CASES = first_fast(CASE_PAIRS)
VARIANTS = first_fast(VARIANT_PAIRS)


@torch.no_grad()
def unmodified_generate(model, method, inputs: dict, max_new_tokens: int) -> torch.Tensor:
    """Greedy tokens of ``model`` (optimised with ``method``) as it was before ``optimize``; optimised again after."""
    gp.restore(model)
    try:
        return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    finally:
        gp.optimize(model, method)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def assert_batch_equals_alone(model, batch: dict, samples, make_inputs, new_tokens: int) -> list[torch.Tensor]:
    """An optimized ``model`` gives each of ``samples`` alone (``make_inputs(model, [sample], seed=b)``) what it gives
    in the left-padded ``batch``: the last logits, the kept positions (shifted by its padding) and the greedy tokens.
    Returns the batch's kept positions."""
    logits = model(**batch).logits[:, -1]
    kept = gp.explain(model, **batch).kept
    ids = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False)
    pad = batch["attention_mask"].shape[1] - batch["attention_mask"].sum(dim=1)
    for b, sample in enumerate(samples):
        alone = make_inputs(model, [sample], seed=b)
        assert torch.equal(alone["input_ids"][0], batch["input_ids"][b, pad[b] :])
        assert rel_error(model(**alone).logits[0, -1], logits[b]) <= LOGITS_RTOL, f"sample {b}"
        assert torch.equal(gp.explain(model, **alone).kept[0] + pad[b], kept[b]), f"sample {b}"
        alone_ids = model.generate(**alone, max_new_tokens=new_tokens, do_sample=False)[0]
        assert torch.equal(alone_ids, ids[b, -len(alone_ids) :]), f"sample {b}"
    return kept


def assert_compiled_equals_reference(model, method, batch: dict, reference, expected_ids, new_tokens: int) -> None:
    """``model`` optimized with ``method`` under ``torch.compile`` (inductor) gives the eager ``reference``'s kept
    sets and last logits and ``expected_ids`` as its greedy tokens."""
    with gp.optimized(model, method, compile=True):
        logits = model(**batch).logits
        kept = gp.explain(model, **batch).kept
        ids = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False)
        assert isinstance(model._graphprune.decoder.graphs.runners()[0], torch._dynamo.eval_frame.OptimizedModule)
    assert all(torch.equal(a, b) for a, b in zip(kept, reference.kept, strict=True))
    assert rel_error(logits[:, -1], reference.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, expected_ids)


def prefill_record(model):
    """The record of the optimised model's last pruned prefill (``keep_index``, ``slot_valid``, ...)."""
    return gp.last_record(model)


def slot_positions(model) -> list[torch.Tensor]:
    """Per sample, what each valid slot of the last pruned prefill holds: FastV its original position,
    CrossAttentionTrim its feature index (the kept features)."""
    record = prefill_record(model)
    return [record.keep_index[b][record.slot_valid[b]] for b in range(record.keep_index.shape[0])]


@dataclass
class Expected:
    """The reference's answer for one method on one batch: ``kept`` per sample, all logits, greedy or sampled ids."""

    reference: object
    logits: torch.Tensor
    ids: torch.Tensor | None


@torch.no_grad()
def reference_run(model, method, inputs: dict, new_tokens: int | None = None, **sampling) -> Expected:
    """The independent reference (``graphprune.reference``) for ``method``; ids when ``new_tokens`` is given
    (``sampling``: ``do_sample=True`` and its settings; draws from torch's global generator)."""
    if isinstance(method, gp.FastV):
        reference = fastv_reference(model, method, **inputs)
        ids = None
        if new_tokens is not None:
            sample = sampling.get("do_sample", False)
            ids = fastv_reference_generate(model, method, **inputs, max_new_tokens=new_tokens, sample=sample)
        return Expected(reference, reference.logits, ids)
    reference = cross_attention_trim_reference(model, method, **inputs)
    with trimmed_mask_mode(model, reference.kept):
        logits = model(**inputs).logits
        ids = None
        if new_tokens is not None:
            ids = model.generate(**inputs, max_new_tokens=new_tokens, **({"do_sample": False} | sampling))
    return Expected(reference, logits, ids)


def assert_clear_cut(reference, method, margin: float = 1e-5) -> None:
    """Only a top-k cut far from a tie makes the comparison meaningful: check the score gap there."""
    if isinstance(method, gp.FastV):
        for b in range(reference.visual.shape[0]):
            ranked = reference.visual[b] & ~last_real(reference.key_visible[b] | reference.visual[b])
            scores = reference.scores[b][ranked].sort(descending=True).values
            n = len(reference.kept[b]) - int(reference.visual[b].sum() - ranked.sum())  # the last, if visual, is kept
            if 0 < n < len(scores):
                assert scores[n - 1] - scores[n] > margin * scores[0], f"sample {b}: near-tie at the cut"
        return
    for b, valid in enumerate(reference.valid):
        count = n_keep(method.keep, int(valid.sum()))
        rows = reference.scores[b] if method.select == "head_union" else reference.scores[b].mean(dim=0, keepdim=True)
        ranked = rows[:, valid].sort(dim=-1, descending=True).values
        assert (ranked[:, count - 1] - ranked[:, count]).min() > margin, f"sample {b}: near-tie at the cut"


def last_real(real: torch.Tensor) -> torch.Tensor:
    """``[..., N]`` bool: True at the last True position of each row of ``real`` (SPEC: always kept)."""
    positions = torch.arange(real.shape[-1])
    return real & (positions == torch.where(real, positions, -1).amax(dim=-1, keepdim=True))


def visual_units(model, inputs: dict) -> list[torch.Tensor]:
    """Per sample, what a method may keep, ascending: FastV the visual positions; CrossAttentionTrim the
    features of the tiles some text row may attend (images x tiles x patches, flattened)."""
    visual = adapter_for(model).visual_mask(model, inputs["input_ids"], None)
    if visual is not None:
        return [row.nonzero().flatten() for row in visual]
    if "cross_attention_mask" not in inputs:
        return [torch.zeros(0, dtype=torch.long) for _ in inputs["input_ids"]]
    tiles = inputs["cross_attention_mask"].bool().any(dim=1).flatten(1)  # [B, images * tiles]
    return [row.repeat_interleave(features_per_tile(model)).nonzero().flatten() for row in tiles]


def positional(method) -> bool:
    """Whether the method's kept indices are sequence positions (so shift with left padding)."""
    return isinstance(method, gp.FastV)


def expected_cache_lengths(model, method, inputs: dict, kept: list[torch.Tensor], new_tokens: int = 0) -> list[int]:
    """Per decoder layer, the positions its cache holds after the prefill and ``new_tokens`` decode steps."""
    seq_len = inputs["input_ids"].shape[1] + new_tokens
    if isinstance(method, gp.FastV):
        real = inputs["attention_mask"].sum(dim=1)
        visual = [len(units) for units in visual_units(model, inputs)]
        pruned = max(int(r) - v + len(k) for r, v, k in zip(real, visual, kept, strict=True)) + new_tokens
        layers = model.config.text_config.num_hidden_layers
        return [seq_len] * method.k + [pruned] * (layers - method.k)
    text = model.config.text_config
    first, *later = text.cross_attention_layers
    vision = model.config.vision_config
    images = inputs["cross_attention_mask"].shape[2]
    features = images * vision.max_num_tiles * features_per_tile(model)
    slots = max(len(k) for k in kept)
    lengths = {first: features} | {layer: slots for layer in later}
    return [lengths.get(layer, seq_len) for layer in range(text.num_hidden_layers)]


_SHARED_EXPORTS: dict[str, Path] = {}  # share key -> the export folder, for the session


def export_fixtures(
    build: Callable, method, make_inputs: Callable, folder: str, names=("model", "inputs", "exported"), share=None
):
    """Module-scoped fixtures, named ``names``: the model ``build()`` optimised with ``method`` while the module
    runs, ``make_inputs(model)``, and its ONNX export into a fresh ``folder`` (which ``export.onnx`` validates
    against PyTorch on those inputs). Assign them to the same names in the test module. Modules that give the same
    ``share`` key (the same deterministic build, method and inputs) share one export per session: read it, or copy
    it before changing it."""
    model_name, inputs_name, exported_name = names

    @pytest.fixture(scope="module", name=model_name)
    def model():
        model = build()
        with gp.optimized(model, method):
            yield model

    @pytest.fixture(scope="module", name=inputs_name)
    def inputs(request):
        return make_inputs(request.getfixturevalue(model_name))

    @pytest.fixture(scope="module", name=exported_name)
    def exported(request, tmp_path_factory):
        if share in _SHARED_EXPORTS:
            return _SHARED_EXPORTS[share]
        model, inputs = request.getfixturevalue(model_name), request.getfixturevalue(inputs_name)
        path = gp.export.onnx(model, tmp_path_factory.mktemp("export") / folder, example_inputs=inputs)
        if share is not None:
            _SHARED_EXPORTS[share] = path
        return path

    return model, inputs, exported


@torch.no_grad()
def assert_ort_equals_generate(model, inputs: dict, folder, new_tokens: int = 6):
    """ONNX Runtime on the export in ``folder``: the greedy tokens of ``model.generate`` and, within
    ``LOGITS_RTOL``, its first logits; the ``OrtGenerator``, for more checks on the same sessions."""
    generator = gp.export.OrtGenerator(folder)
    out = model.generate(
        **inputs, max_new_tokens=new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    assert torch.equal(generator.generate(**inputs, max_new_tokens=new_tokens), out.sequences)
    assert rel_error(generator.prefill_logits(**inputs), out.logits[0]) <= LOGITS_RTOL
    return generator
