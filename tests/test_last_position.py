"""SPEC FastV step 3's last-position rule and the least count: a prompt may end with a visual token (a raw prompt,
a template without a trailing text token). The sample's last real position is always kept (its row gives the next
token); when it is visual it is one of the ``ceil(keep * n_visual)``, the others the best-ranked remaining ones. A
positive ``keep`` keeps at least one visual token wherever there is one (``keep=1e-9`` keeps exactly one).

Each family's batch is left-padded: sample 0 (padded) ends with an image token, sample 1 with text.
"""

import json

import pytest
import torch

import graphprune as gp
from graphprune import ops, optimized
from graphprune.methods import n_keep
from graphprune.reference import fastv_reference, fastv_reference_generate
from graphprune.reference.fastv_gemma3 import fastv_gemma3_reference, fastv_gemma3_reference_generate
from graphprune.testing import gemma3_inputs, llava_inputs, tiny_gemma3, tiny_llava
from graphprune.testing.common import PAD_TOKEN_ID

from .helpers import (
    FAMILIES,
    LOGITS_RTOL,
    assert_batch_equals_alone,
    assert_clear_cut,
    assert_ort_equals_generate,
    expected_cache_lengths,
    rel_error,
    slot_positions,
    visual_units,
)

NEW_TOKENS = 4
TINY = 1e-9
LLAVA = "LlavaForConditionalGeneration"
QWEN2_VL = "Qwen2VLForConditionalGeneration"
GEMMA3 = "Gemma3ForConditionalGeneration"


SEQUENCES = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")  # the inputs with a sequence axis


def _ending_visual(make_inputs):
    """``make_inputs`` whose samples without trailing text (``samples[i][-1] == 0``) end with their last image
    token: what follows it (Qwen2-VL's vision-end token, Gemma 3's end-of-image and separator) is cut, the row
    left-padded again, and leading columns that are then padding in every row dropped."""

    def inputs(model, samples, seed=0):
        inputs = {key: value.clone() for key, value in make_inputs(model, samples, seed).items()}
        image = inputs["input_ids"] == model.config.image_token_id
        for b in [b for b, sample in enumerate(samples) if sample[-1] == 0]:
            cut = image.shape[1] - 1 - int(image[b].nonzero().max())
            for key in [key for key in SEQUENCES if key in inputs and cut]:
                pad = inputs[key].new_full((cut,), PAD_TOKEN_ID if key == "input_ids" else 0)
                inputs[key][b] = torch.cat([pad, inputs[key][b, :-cut]])
        columns = int(inputs["attention_mask"].any(dim=0).long().argmax())
        return {key: value[:, columns:] if key in SEQUENCES else value for key, value in inputs.items()}

    return inputs


# per family: samples (0 ends with an image token and is the shorter, left-padded one), their inputs, the method
CASES = {
    LLAVA: ([(3, 1, 0), (2, 1, 3)], FAMILIES[LLAVA].inputs, gp.FastV(k=2, keep=0.25)),
    QWEN2_VL: (
        [(1, [(4, 8)], [], 0), (2, [(8, 8)], [], 3)],
        _ending_visual(FAMILIES[QWEN2_VL].inputs),
        gp.FastV(k=2, keep=0.25, query="mean"),
    ),
    GEMMA3: ([(3, 1, 0), (2, 1, 3)], _ending_visual(gemma3_inputs), gp.FastV(k=2, keep=0.5, query="mean")),
}


def short_name(value):
    return value.removesuffix("ForConditionalGeneration") if isinstance(value, str) else str(value)


@pytest.fixture(scope="module")
def gemma3():
    """Tiny Gemma 3 (4 image tokens per image; sliding-window layers, bidirectional image blocks), not a contract
    suite family."""
    return tiny_gemma3(seed=2)


@pytest.fixture(
    params=[pytest.param(name, marks=pytest.mark.slow) if name == GEMMA3 else name for name in sorted(CASES)],
    ids=short_name,
)
def case(request, family_models):
    name = request.param
    model = request.getfixturevalue("gemma3") if name == GEMMA3 else family_models(name)
    samples, make_inputs, method = CASES[name]
    return model, samples, make_inputs, method


def _reference(model, method, inputs: dict):
    """The independent reference's prefill (Gemma 3's, with its attention rules written out, for Gemma 3)."""
    if type(model).__name__ == GEMMA3:
        return fastv_gemma3_reference(model, method, **inputs)
    return fastv_reference(model, method, **inputs)


def _reference_ids(model, method, inputs: dict) -> torch.Tensor:
    """The reference's greedy prompt + ``NEW_TOKENS`` ids."""
    if type(model).__name__ == GEMMA3:
        return fastv_gemma3_reference_generate(model, method, max_new_tokens=NEW_TOKENS, **inputs)[0]
    return fastv_reference_generate(model, method, **inputs, max_new_tokens=NEW_TOKENS)


def _last_positions(inputs: dict) -> list[int]:
    return [int(row.nonzero().max()) for row in inputs["attention_mask"]]


@torch.no_grad()
def test_fastv_select_keeps_the_last_real_position_among_the_counted_ones():
    """The last real position is kept even when it scores lowest; it counts among ``n_keep``; ties to the earlier."""
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1]])
    visual = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1]]).bool()
    scores = torch.tensor([[0, 0, 0, 0.3, 0.5, 0.5, 0.4, 0.0], [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0, 0]] + [[0.1] * 8])
    for keep, expected in [
        (0.5, [[4, 5, 7], [3, 4, 5], [2, 3, 7]]),  # 3 of 5 (of 5; of 6): the last, then the best, ties to the earlier
        (TINY, [[7], [5], [7]]),  # one each: the last when visual, else the best
        (1.0, [[3, 4, 5, 6, 7], [1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 7]]),
    ]:
        for max_visual in (None, 6):  # the HF path's top-k and the export's constant-K one
            count = int(((attention_mask.bool() & ~visual).sum(-1) + n_keep(keep, visual.sum(-1))).max())
            index, valid = ops.fastv_select(scores, visual, attention_mask, torch.arange(count), keep, max_visual)
            kept = [index[b][valid[b]] for b in range(3)]
            assert [row[visual[b, row]].tolist() for b, row in enumerate(kept)] == expected, (keep, max_visual)


@torch.no_grad()
def test_pass_equals_reference_for_a_prompt_ending_with_a_visual_token(case):
    """Kept sets (the last position among them, ``n_keep`` each), the last real position's logits, every kept
    position's logits, greedy tokens and cache lengths equal the reference's."""
    model, samples, make_inputs, method = case
    batch = make_inputs(model, samples)
    last, units = _last_positions(batch), visual_units(model, batch)
    assert int(batch["attention_mask"][0, 0]) == 0 and batch["attention_mask"][1].all()  # sample 0 is padded
    assert last[0] in units[0].tolist() and last[1] not in units[1].tolist()  # and ends visual, sample 1 not
    reference = _reference(model, method, batch)
    assert_clear_cut(reference, method)
    visual_scores = reference.scores[0][reference.visual[0]]
    cut = visual_scores.sort(descending=True).values[n_keep(method.keep, len(visual_scores)) - 1]
    assert reference.scores[0, last[0]] < cut, "the last position would be kept anyway: the test proves nothing"
    expected_ids = _reference_ids(model, method, batch)
    with optimized(model, method):
        out = model(**batch, use_cache=True)
        slots = slot_positions(model)
        kept = gp.explain(model, **batch).kept
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert [k.tolist() for k in kept] == [k.tolist() for k in reference.kept]
    assert last[0] in kept[0].tolist()
    assert [len(k) for k in kept] == [n_keep(method.keep, len(u)) for u in units]
    assert [int(s[-1]) for s in slots] == last  # the last slot holds the last real position: its logits are last
    for b in range(2):
        assert rel_error(out.logits[b, -len(slots[b]) :], reference.logits[b, slots[b]]) <= LOGITS_RTOL, f"sample {b}"
    assert rel_error(out.logits[:, -1], reference.logits[torch.arange(2), last]) <= LOGITS_RTOL
    assert torch.equal(ids, expected_ids)
    lengths = expected_cache_lengths(model, method, batch, kept)
    assert [layer.keys.shape[2] for layer in out.past_key_values.layers] == lengths


@torch.no_grad()
def test_batch_equals_each_sample_alone_for_a_prompt_ending_with_a_visual_token(case):
    """Each sample gives alone what it gives in the batch, its last real position kept (when visual) both ways."""
    model, samples, make_inputs, method = case
    batch = make_inputs(model, samples)
    with optimized(model, method):
        kept = assert_batch_equals_alone(model, batch, samples, make_inputs, NEW_TOKENS)
        assert _last_positions(batch)[0] in kept[0].tolist()


@torch.no_grad()
def test_a_tiny_keep_keeps_exactly_one_visual_token(case):
    """``keep=1e-9``: one visual token per sample (the last position where it is visual), as the reference; the
    report's and ``gp.flops``' counts are those of one kept token."""
    model, samples, make_inputs, method = case
    method = gp.FastV(k=method.k, keep=TINY, query=method.query)
    batch = make_inputs(model, samples)
    reference = _reference(model, method, batch)
    with optimized(model, method):
        logits = model(**batch).logits[:, -1]
        report = gp.explain(model, **batch)
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert [len(k) for k in report.kept] == [1, 1]
    assert [k.tolist() for k in report.kept] == [k.tolist() for k in reference.kept]
    assert int(report.kept[0]) == _last_positions(batch)[0]
    assert rel_error(logits, reference.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, _reference_ids(model, method, batch))
    before = after = 0
    for n_tokens, n_visual in zip(report.n_tokens, report.n_visual, strict=True):
        sample_before, sample_after = gp.flops(model.config, method, n_tokens, n_visual)
        assert sample_after == gp.flops(model.config, gp.FastV(k=method.k, keep=1 / n_visual), n_tokens, n_visual)[1]
        before, after = before + sample_before, after + sample_after
    assert (report.flops_before, report.flops_after) == (before, after)


def test_flops_count_one_visual_token_for_a_tiny_keep():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4)
    d, m = 64, 128

    def layer(n):
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m

    assert gp.flops(config, gp.FastV(k=2, keep=TINY), 612, 576) == (4 * layer(612), 2 * layer(612) + 2 * layer(37))
    assert gp.flops(config, gp.FastV(k=2, keep=TINY), 30, 0) == (4 * layer(30), 4 * layer(30))


@pytest.fixture(scope="module", params=[0.25, TINY], ids=lambda keep: f"keep={keep}")
def llava_export(request, tmp_path_factory):
    """Tiny 2-layer LLaVA (layer 1 pruned), its batch (sample 0 ends with an image token), the reference's greedy
    tokens, and its validated ONNX export."""
    pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
    model = tiny_llava(num_layers=2, seed=2)
    method = gp.FastV(k=1, keep=request.param)
    inputs = llava_inputs(model, CASES[LLAVA][0])
    expected = fastv_reference_generate(model, method, **inputs, max_new_tokens=NEW_TOKENS)
    with optimized(model, method):
        folder = gp.export.onnx(model, tmp_path_factory.mktemp("export") / "llava", example_inputs=inputs)
        yield model, method, inputs, folder, expected


@torch.no_grad()
@pytest.mark.slow
def test_export_of_a_prompt_ending_with_a_visual_token_gives_the_reference_tokens(llava_export):
    """ONNX Runtime's tokens and first logits equal PyTorch's, and both the reference's; the constant top-k K is
    ``ceil(keep * 16)`` (at least 1); the last real position is kept, among ``n_keep`` visual tokens."""
    onnx = pytest.importorskip("onnx", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
    model, method, inputs, folder, expected = llava_export
    kept = gp.explain(model, **inputs).kept
    assert _last_positions(inputs)[0] in kept[0].tolist()
    assert [len(k) for k in kept] == [n_keep(method.keep, 16)] * 2
    budget = json.loads((folder / "manifest.json").read_text())["visual_budget"]
    assert (budget["max_visual"], budget["top_k"]) == (16, n_keep(method.keep, 16))
    assert gp.export.tensorrt_support(onnx.load(str(folder / "prefill.onnx"), load_external_data=False)) == []
    assert_ort_equals_generate(model, inputs, folder, NEW_TOKENS)
    assert torch.equal(gp.export.OrtGenerator(folder).generate(**inputs, max_new_tokens=NEW_TOKENS), expected)
