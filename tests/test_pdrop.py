"""PyramidDrop (arXiv 2410.17247): the passes equal the independent eager reference (``graphprune.reference.pdrop``)
on LLaVA, Qwen2-VL (M-RoPE) and, one method each, every other family it fits, at every stage (kept sets, logits,
greedy and sampled tokens); each stage's layers cache only that stage's survivors, a left-padded batch gives each
sample what it gives alone, keep=1.0 is the unmodified model exactly, one stage is FastV, ``gp.flops`` gives the
paper's FLOPs, a static cache gives a dynamic one's tokens, and what PDrop does not run (compiled generate, export,
Mllama, bad configs) is refused in one line."""

import pytest
import torch
from transformers import CompileConfig, LlamaConfig, LlavaConfig

import graphprune as gp
from graphprune.reference import pdrop_reference, pdrop_reference_generate
from graphprune.testing import tiny_llava

from .helpers import (
    FAMILIES,
    LOGITS_RTOL,
    assert_batch_equals_alone,
    assert_compiled_equals_reference,
    rel_error,
    slot_positions,
)

pytestmark = pytest.mark.usefixtures("capture_once")  # one capture per family model
NEW_TOKENS = 4
LLAVA, QWEN2_VL = "LlavaForConditionalGeneration", "Qwen2VLForConditionalGeneration"
MLLAMA = "MllamaForConditionalGeneration"
METHODS = [
    gp.PDrop(layers=(1, 2, 3), keep=0.5),
    gp.PDrop(layers=(1, 3), keep=0.25, query="mean"),
    gp.PDrop(layers=(2, 3), keep=0.75),
]


def assert_clear_cut(reference, margin: float = 1e-5) -> None:
    """At every stage the cut among the ranked visual positions is far from a tie (else equality proves nothing)."""
    for stage, (ranked, kept, row) in enumerate(
        zip(reference.survivors, reference.stages, reference.rankings, strict=True)
    ):
        for b, positions in enumerate(ranked):
            values = row[b, positions].sort(descending=True).values
            chosen = len(kept[b])
            if 0 < chosen < len(values):
                assert values[chosen - 1] - values[chosen] > margin, f"stage {stage}, sample {b}: near-tie at the cut"


def _batch(model, name):
    return FAMILIES[name].inputs(model, FAMILIES[name].samples)


# families whose first method's ranking has a near-tie at some cut (scores ~1e-3 apart by < 1e-5): their second
NEAR_TIES = ("LlavaNextForConditionalGeneration", "VideoLlavaForConditionalGeneration")
CASES = (
    [(LLAVA, METHODS[0])]
    + [
        pytest.param(name, method, marks=pytest.mark.slow)
        for name in (LLAVA, QWEN2_VL)
        for method in METHODS
        if (name, method) != (LLAVA, METHODS[0])
    ]
    + [  # every other family PDrop fits (DeepStack, MoE, video, tiles, pixel shuffle): one method each
        pytest.param(name, METHODS[1] if name in NEAR_TIES else METHODS[0], marks=pytest.mark.slow)
        for name in FAMILIES
        if name not in (LLAVA, QWEN2_VL, MLLAMA)
    ]
)


@pytest.mark.parametrize(("name", "method"), CASES, ids=str)
@torch.no_grad()
def test_pass_equals_reference(family_models, name, method):
    model = family_models(name)
    batch = _batch(model, name)
    reference = pdrop_reference(model, method, **batch)
    assert_clear_cut(reference)
    expected_ids = pdrop_reference_generate(model, method, **batch, max_new_tokens=NEW_TOKENS)
    with gp.optimized(model, method):
        logits = model(**batch).logits
        slots = slot_positions(model)
        report = gp.explain(model, **batch)
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    visual = reference.visual
    assert torch.allclose(report.scores[visual], reference.scores[visual], atol=1e-5)
    for b, kept in enumerate(reference.kept):
        assert torch.equal(report.kept[b], kept), f"sample {b}"
        counts = method.stage_counts(int(visual[b].sum()))
        assert [len(stage[b]) for stage in reference.stages] == counts, f"sample {b}"
        assert rel_error(logits[b, -len(slots[b]) :], reference.logits[b, slots[b]]) <= LOGITS_RTOL, f"sample {b}"
    assert torch.equal(ids, expected_ids)
    assert report.flops_after < report.flops_before and report.kv_bytes_after < report.kv_bytes_before


@torch.no_grad()
def test_the_last_real_position_survives_every_stage(family_models):
    """SPEC FastV step 3 at every stage: sample 0 (left-padded) ends with an image token, which each stage keeps
    among its count; kept sets, the last logits and greedy tokens equal the reference's."""
    model = family_models(LLAVA)
    batch = FAMILIES[LLAVA].inputs(model, [(3, 1, 0), (2, 1, 3)])
    method = gp.PDrop(layers=(1, 2, 3), keep=0.25)
    last = int(batch["attention_mask"][0].nonzero().max())
    reference = pdrop_reference(model, method, **batch)
    assert reference.visual[0, last] and int(batch["attention_mask"][0, 0]) == 0
    assert all(last in stage[0].tolist() for stage in reference.stages)
    assert [len(stage[0]) for stage in reference.stages] == method.stage_counts(int(reference.visual[0].sum()))
    assert_clear_cut(reference)
    expected_ids = pdrop_reference_generate(model, method, **batch, max_new_tokens=NEW_TOKENS)
    with gp.optimized(model, method):
        logits = model(**batch).logits[:, -1]
        kept = gp.explain(model, **batch).kept
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert all(torch.equal(a, b) for a, b in zip(kept, reference.kept, strict=True))
    assert rel_error(logits, reference.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, expected_ids)


@torch.no_grad()
def test_each_stage_caches_its_own_survivors(family_models):
    """After the prefill and after each decode step, stage s's layers hold the batch's most stage-s survivors (text
    included) plus the new tokens; layers before the first stage hold every position."""
    model = family_models(LLAVA)
    batch = _batch(model, LLAVA)
    method = gp.PDrop(layers=(1, 2, 3), keep=0.5)
    real, visual = batch["attention_mask"].sum(dim=1), pdrop_reference(model, method, **batch).visual.sum(dim=1)
    stage_lengths = [int((real - visual + count).max()) for count in method.stage_counts(visual)]
    with gp.optimized(model, method):
        out = model(**batch, use_cache=True)
        cache, seq_len = out.past_key_values, batch["input_ids"].shape[1]
        assert [layer.keys.shape[2] for layer in cache.layers] == [seq_len, *stage_lengths]
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True)
        held = [layer.keys.shape[2] for layer in ids.past_key_values.layers]
    assert held == [length + NEW_TOKENS - 1 for length in (seq_len, *stage_lengths)]
    assert len(set(stage_lengths)) == 3  # three different cache lengths: the decode step serves each its own


@pytest.mark.parametrize("name", [LLAVA, pytest.param(QWEN2_VL, marks=pytest.mark.slow)])
@torch.no_grad()
def test_keep_one_is_exact_and_batch_equals_alone(family_models, name):
    model, family = family_models(name), FAMILIES[name]
    batch = family.inputs(model, family.samples)
    expected = model(**batch).logits
    expected_ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    with gp.optimized(model, gp.PDrop(layers=(1, 2, 3), keep=1.0)):
        assert torch.equal(model(**batch).logits, expected)
        assert torch.equal(model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False), expected_ids)
    with gp.optimized(model, gp.PDrop(layers=(1, 2, 3), keep=0.5)):
        assert_batch_equals_alone(model, batch, family.samples, family.inputs, NEW_TOKENS)


@pytest.mark.slow
@torch.no_grad()
def test_one_stage_is_fastv(family_models):
    model = family_models(LLAVA)
    batch = _batch(model, LLAVA)
    with gp.optimized(model, gp.FastV(k=2, keep=0.25)):
        fastv_logits, fastv_kept = model(**batch).logits, gp.explain(model, **batch).kept
        fastv_ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    with gp.optimized(model, gp.PDrop(layers=2, keep=0.25)):
        assert torch.equal(model(**batch).logits, fastv_logits)
        assert all(torch.equal(a, b) for a, b in zip(gp.explain(model, **batch).kept, fastv_kept, strict=True))
        assert torch.equal(model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False), fastv_ids)


@pytest.mark.slow
@torch.no_grad()
def test_sampling_equals_the_reference(family_models):
    model = family_models(LLAVA)
    batch = _batch(model, LLAVA)
    method = gp.PDrop(layers=(1, 2, 3), keep=0.5)
    torch.manual_seed(7)
    expected = pdrop_reference_generate(model, method, **batch, max_new_tokens=NEW_TOKENS, sample=True)
    with gp.optimized(model, method):
        torch.manual_seed(7)
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    assert torch.equal(ids, expected)


def test_flops_reproduce_the_paper():
    """PyramidDrop's Table 7 / stage ablation, LLaVA-1.5-7B, lambda=0.5, counting the 576 image tokens:
    3.82 T unpruned, 1.78 T with 4 stages (layers 8, 16, 24), 2.13 T with 3 (layers 10, 20)."""
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32)
    config = LlavaConfig(text_config=text.to_dict())
    before, after = gp.flops(config, gp.PDrop(), 576, 576)
    assert (round(before / 1e12, 2), round(after / 1e12, 2)) == (3.82, 1.78)
    assert round(gp.flops(config, gp.PDrop(layers=(10, 20)), 576, 576)[1] / 1e12, 2) == 2.13
    with pytest.raises(ValueError, match=r"1 <= l < 32"):
        gp.flops(config, gp.PDrop(layers=(8, 32)), 612, 576)


def test_pdrop_is_validated(family_models):
    bad = [
        dict(layers=()),
        dict(layers=(2, 1)),
        dict(layers=(1, 1)),
        dict(layers=(0, 2)),
        dict(layers=(1.5,)),
        dict(layers="12"),
        dict(layers=True),
        dict(keep=0.0),
        dict(keep=1.5),
        dict(query="first"),
    ]
    for options in bad:
        with pytest.raises(ValueError, match="must be") as error:
            gp.PDrop(**options)
        assert "\n" not in str(error.value)
    assert gp.PDrop(layers=[torch.tensor(2), 3]).layers == (2, 3)
    model = family_models(LLAVA)
    with pytest.raises(ValueError, match=r"layers must satisfy 1 <= l < 4 .*got layers=\[1, 4\]"):
        gp.optimize(model, gp.PDrop(layers=(1, 4)))
    assert not hasattr(model, "_graphprune")
    method = gp.PDrop(layers=(1, 3), keep=0.25)
    assert gp.methods.method_from_dict(gp.methods.method_to_dict(method)) == method
    with pytest.raises(ValueError, match="PDrop does not fit MllamaForConditionalGeneration"):
        gp.optimize(family_models(MLLAMA), gp.PDrop(layers=(1, 2)))


@torch.no_grad()
def test_static_cache_equals_dynamic_compiled_generate_and_export_are_refused(family_models, tmp_path):
    """Over HF's static cache each stage's buffers hold its own count: the tokens of a DynamicCache. HF's compiled
    generate (its one-token step serves one pruned group) and ONNX export are refused in one line, naming PDrop."""
    model = family_models(LLAVA)
    batch = _batch(model, LLAVA)
    with gp.optimized(model, gp.PDrop(layers=(1, 2, 3), keep=0.5)):
        dynamic = model.generate(**batch, max_new_tokens=NEW_TOKENS + 2, do_sample=False)
        static = model.generate(**batch, max_new_tokens=NEW_TOKENS + 2, do_sample=False, cache_implementation="static")
        assert torch.equal(static, dynamic)
        compile_config = CompileConfig(fullgraph=True, dynamic=False)
        compile_config._compile_all_devices = True  # HF compiles only on CUDA otherwise
        with pytest.raises(Exception, match=r"no compiled one-token step .* filled by PDrop\(layers=\(1, 2, 3\)"):
            model.generate(**batch, max_new_tokens=3, cache_implementation="static", compile_config=compile_config)
        with pytest.raises(ValueError, match="export does not carry PDrop yet"):
            gp.export.onnx(model, tmp_path / "onnx", example_inputs=batch)
        assert not (tmp_path / "onnx").exists()


@pytest.mark.compile
@torch.no_grad()
def test_compiled_equals_reference(family_models):
    """torch.compile (inductor) of PDrop's pruned graphs: the reference's kept sets, logits and greedy tokens."""
    model = family_models(LLAVA)
    batch = _batch(model, LLAVA)
    method = gp.PDrop(layers=(1, 2, 3), keep=0.5)
    reference = pdrop_reference(model, method, **batch)
    expected_ids = pdrop_reference_generate(model, method, **batch, max_new_tokens=NEW_TOKENS)
    assert_compiled_equals_reference(model, method, batch, reference, expected_ids, NEW_TOKENS)


def test_graph_replay_mode_is_refused_for_pdrop_before_the_model_changes():
    model = tiny_llava(num_layers=4)
    with pytest.raises(ValueError, match='compile="reduce-overhead".*PDrop on LlavaForConditionalGeneration has none'):
        gp.optimize(model, gp.PDrop(layers=(1, 2), keep=0.5), compile="reduce-overhead")
    assert not hasattr(model, "_graphprune")
