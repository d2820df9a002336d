"""Gemma 3: the mask-mode reference applies Gemma 3's rules (bidirectional image blocks, interleaved sliding-window
layers, window-sized sliding caches) exactly as the model does, and graphprune's FastV equals it (prefill, decode past
the window, batch, compile, explain)."""

import contextlib

import pytest
import torch

import graphprune as gp
from graphprune.reference.fastv import decoder_inputs, eager_attention
from graphprune.reference.fastv_gemma3 import (
    allowed_keys,
    fastv_gemma3_reference,
    fastv_gemma3_reference_generate,
    image_blocks,
)
from graphprune.testing import gemma3_inputs, tiny_gemma3

pytestmark = pytest.mark.usefixtures("capture_once")  # one capture per model (conftest)

SAMPLES = [(3, 2, 4), (2, 1, 3)]  # two images, then one: left padding, 21 positions > the window of 8


@pytest.fixture(scope="module")
def model():
    return tiny_gemma3(attn_implementation="eager", seed=2)


@pytest.fixture(scope="module")
def inputs(model):
    inputs = gemma3_inputs(model, SAMPLES)
    assert inputs["input_ids"].shape[1] > 2 * model.config.text_config.sliding_window
    assert (inputs["attention_mask"] == 0).any()
    return inputs


def test_reference_at_keep_one_is_the_model_bit_exact(model, inputs):
    """The reference's own rules give HF's logits exactly; without the image blocks HF's differ (they matter)."""
    real = inputs["attention_mask"].bool()
    want = model(**inputs).logits
    got = fastv_gemma3_reference(model, gp.FastV(k=2, keep=1.0), **inputs).logits
    assert torch.equal(got[real], want[real])
    causal_only = model(**{name: value for name, value in inputs.items() if name != "token_type_ids"}).logits
    assert (causal_only[real] - want[real]).abs().max() > 1e-2


def test_reference_generation_at_keep_one_is_hf_generate_past_the_window(model, inputs):
    steps = model.config.text_config.sliding_window + 4  # decode steps past every sliding cache's window
    out = model.generate(
        **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    ids, logits = fastv_gemma3_reference_generate(model, gp.FastV(k=2, keep=1.0), max_new_tokens=steps, **inputs)
    assert torch.equal(ids, out.sequences)
    torch.testing.assert_close(logits, torch.stack(out.logits, dim=1), rtol=0, atol=1e-5)
    assert len(set(ids[0, -steps:].tolist())) > 2  # greedy tokens that vary: the comparison is not trivial


def test_pruned_mask_keeps_both_rules_for_kept_tokens(model, inputs):
    """After pruning, kept tokens of one image still attend each other both ways, and a sliding layer still
    measures distance on original positions: kept keys at least a window back stay hidden."""
    reference = fastv_gemma3_reference(model, gp.FastV(k=2, keep=0.75), **inputs)  # >= 2 kept in some image
    blocks, window = image_blocks(inputs["token_type_ids"]), model.config.text_config.sliding_window
    rows = torch.arange(inputs["input_ids"].shape[1])
    full = allowed_keys(reference.key_visible, blocks, rows, rows, None)[:, 0]
    sliding = allowed_keys(reference.key_visible, blocks, rows, rows, window)[:, 0]
    for b, kept in enumerate(reference.kept):
        dropped = reference.visual[b] & ~reference.key_visible[b]
        assert dropped.any() and not full[b][:, dropped].any()
        image = blocks[b, kept].mode().values  # an image holding two kept tokens or more (pigeonhole)
        earlier, later = kept[blocks[b, kept] == image][[0, -1]]
        assert later > earlier and full[b, earlier, later] and sliding[b, earlier, later]
        last = int(inputs["attention_mask"][b].nonzero().max())
        far = rows[reference.key_visible[b] & (rows <= last - window)]
        assert len(far) and full[b, last, far].all() and not sliding[b, last, far].any()


def _physically_pruned_logits(model, inputs, reference, k, original_distance=True):
    """Layers ``>= k`` run on the kept positions only, with Gemma 3's rules on their ORIGINAL positions (what a
    gather of HF's 4-D masks on both axes gives), or with ``original_distance=False`` on their new indices."""
    lm, config = model.model.language_model, model.config.text_config
    hidden, positions, _ = decoder_inputs(model, False, model.model.language_model, **inputs)
    rows, blocks = torch.arange(hidden.shape[1]), image_blocks(inputs["token_type_ids"])
    kept = reference.key_visible[0].nonzero().flatten()
    with eager_attention(config):
        for i, layer in enumerate(lm.layers):
            window = config.sliding_window if config.layer_types[i] == "sliding_attention" else None
            cos, sin = lm.rotary_emb(hidden, positions, config.layer_types[i])
            if i < k:
                allowed = allowed_keys(inputs["attention_mask"].bool(), blocks, rows, rows, window)
            else:
                cos, sin = cos[:, kept], sin[:, kept]
                if original_distance:  # the rules read by original position
                    allowed = allowed_keys(reference.key_visible, blocks, kept, kept, window)
                else:  # the same visibility and images, distances counted on the pruned sequence
                    slots = torch.arange(len(kept))
                    allowed = allowed_keys(reference.key_visible[:, kept], blocks[:, kept], slots, slots, window)
            if i == k:
                hidden = hidden[:, kept]
            mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(hidden.dtype).min)
            hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin))
    return model.lm_head(lm.norm(hidden)), kept


def test_gathering_to_kept_positions_is_exact_only_with_original_distances(model):
    """What a gather-based pass must do on Gemma 3: kept tokens keep both rules with sliding distances measured
    on their original positions; measured on the pruned indices, the kept tokens' logits change."""
    inputs = gemma3_inputs(model, [SAMPLES[0]])
    reference = fastv_gemma3_reference(model, gp.FastV(k=2, keep=0.5), **inputs)
    logits, kept = _physically_pruned_logits(model, inputs, reference, 2)
    torch.testing.assert_close(logits, reference.logits[:, kept], rtol=0, atol=1e-5)
    wrong, _ = _physically_pruned_logits(model, inputs, reference, 2, original_distance=False)
    assert (wrong - reference.logits[:, kept]).abs().max() > 1e-2


# --- graphprune's FastV on Gemma 3 (sdpa, the default attention), against the reference above ---
STEPS = 12  # decode steps: past the window of 8 from the prompt's last position on
METHOD = gp.FastV(k=2, keep=0.5)  # layer 1, global, ranks
METHODS = [METHOD, pytest.param(gp.FastV(k=1, keep=0.5, query="mean"), marks=pytest.mark.slow)]  # ... layer 0, sliding


@pytest.fixture(scope="module")
def sdpa_model():
    return tiny_gemma3(seed=2)


@pytest.fixture(scope="module")
def pruned():
    """The same model, optimized with ``METHOD`` while the module runs."""
    model = tiny_gemma3(seed=2)
    with gp.optimized(model, METHOD):
        yield model


def _pass_logits_at_kept(model, logits):
    """The pruned forward's logits ``[B, S, V]`` placed at their original positions (NaN elsewhere)."""
    record = gp.last_record(model)
    placed = torch.full((*record.attention_mask.shape, logits.shape[-1]), float("nan"))
    for b in range(logits.shape[0]):
        valid = record.slot_valid[b]
        placed[b, record.keep_index[b, valid]] = logits[b, valid]
    return placed, record


def _same_kept(got, want) -> bool:
    return len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("method", METHODS, ids=str)
@torch.no_grad()
def test_pass_equals_reference_kept_scores_logits_and_greedy_tokens_past_the_window(sdpa_model, pruned, inputs, method):
    reference = fastv_gemma3_reference(sdpa_model, method, **inputs)
    ids, step_logits = fastv_gemma3_reference_generate(sdpa_model, method, max_new_tokens=STEPS, **inputs)
    model = pruned if method == METHOD else sdpa_model
    with contextlib.nullcontext() if method == METHOD else gp.optimized(model, method):
        logits, record = _pass_logits_at_kept(model, model(**inputs).logits)
        report = gp.explain(model, **inputs)
        out = model.generate(
            **inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        caches = [layer.keys.shape[2] for layer in out.past_key_values.layers]
    assert _same_kept(report.kept, reference.kept)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(record.scores[real], reference.scores[real], rtol=0, atol=1e-6)
    shown = reference.key_visible
    torch.testing.assert_close(logits[shown], reference.logits[shown], rtol=1e-4, atol=1e-4)
    assert torch.equal(out.sequences, ids)
    torch.testing.assert_close(torch.stack(out.logits, dim=1), step_logits, rtol=1e-4, atol=1e-4)
    # every layer caches every step (no window-sized cache); layers >= k only their kept positions
    n = inputs["input_ids"].shape[1] + STEPS - 1
    assert caches == [n] * method.k + [record.keep_index.shape[1] + STEPS - 1] * (len(caches) - method.k)


@torch.no_grad()
def test_ranking_row_of_a_sliding_layer_sees_only_its_window(sdpa_model, inputs):
    """k=1: layer 0 is sliding; the last row gives exactly 0 to visual tokens a window back (a causal-only ranking
    would not), and pass and reference agree on those zeros and on the kept set that the ties decide."""
    method = gp.FastV(k=1, keep=0.5)
    reference = fastv_gemma3_reference(sdpa_model, method, **inputs)
    with gp.optimized(sdpa_model, method):
        report = gp.explain(sdpa_model, **inputs)
    window = sdpa_model.config.text_config.sliding_window
    last = inputs["input_ids"].shape[1] - 1
    far = reference.visual[0] & (torch.arange(last + 1) <= last - window)
    assert far.any() and (reference.scores[0, far] == 0).all() and (report.scores[0, far] == 0).all()
    assert _same_kept(report.kept, reference.kept)


@torch.no_grad()
def test_pruned_prefill_keeps_both_rules_on_original_positions(sdpa_model, pruned):
    """Two images of 4 tokens, 4 kept: one image keeps two or more. The pass matches the reference; neither the
    image blocks (no token types: causal only) nor sliding distances on the pruned indices would."""
    inputs = gemma3_inputs(sdpa_model, [SAMPLES[0]])
    reference = fastv_gemma3_reference(sdpa_model, METHOD, **inputs)
    blocks = image_blocks(inputs["token_type_ids"])[0, reference.kept[0]]
    assert blocks.bincount().max() >= 2
    logits, _ = _pass_logits_at_kept(pruned, pruned(**inputs).logits)
    without_types = {name: x for name, x in inputs.items() if name != "token_type_ids"}
    causal_only, _ = _pass_logits_at_kept(pruned, pruned(**without_types).logits)
    shown = reference.key_visible
    torch.testing.assert_close(logits[shown], reference.logits[shown], rtol=1e-4, atol=1e-4)
    assert (causal_only[shown] - reference.logits[shown]).abs().max() > 1e-2
    wrong, kept = _physically_pruned_logits(sdpa_model, inputs, reference, METHOD.k, original_distance=False)
    assert (wrong[0] - logits[0, kept]).abs().max() > 1e-2


@torch.no_grad()
def test_keep_one_is_the_unmodified_model_bit_exact(sdpa_model, inputs):
    want = sdpa_model(**inputs).logits
    want_ids = sdpa_model.generate(**inputs, max_new_tokens=STEPS, do_sample=False)
    with gp.optimized(sdpa_model, gp.FastV(k=2, keep=1.0)):
        assert torch.equal(sdpa_model(**inputs).logits, want)
        assert torch.equal(sdpa_model.generate(**inputs, max_new_tokens=STEPS, do_sample=False), want_ids)
    assert torch.equal(sdpa_model(**inputs).logits, want)


@torch.no_grad()
def test_batch_equals_each_sample_alone(pruned, inputs):
    """Left padding, two images then one: each sample's kept set, last logits and greedy tokens as alone."""
    batch_logits = pruned(**inputs).logits[:, -1]
    batch_kept = gp.explain(pruned, **inputs).kept
    batch_ids = pruned.generate(**inputs, max_new_tokens=STEPS, do_sample=False)
    for i, sample in enumerate(SAMPLES):
        alone = gemma3_inputs(pruned, [sample], seed=i)
        pad = inputs["input_ids"].shape[1] - alone["input_ids"].shape[1]
        assert torch.equal(inputs["input_ids"][i, pad:], alone["input_ids"][0])
        torch.testing.assert_close(pruned(**alone).logits[0, -1], batch_logits[i], rtol=1e-4, atol=1e-5)
        assert torch.equal(gp.explain(pruned, **alone).kept[0] + pad, batch_kept[i])
        ids = pruned.generate(**alone, max_new_tokens=STEPS, do_sample=False)
        assert torch.equal(ids[0], batch_ids[i, pad:])


@pytest.mark.compile
@torch.no_grad()
def test_compiled_prefill_and_decode_equal_reference(sdpa_model, inputs):
    reference = fastv_gemma3_reference(sdpa_model, METHOD, **inputs)
    ids, _ = fastv_gemma3_reference_generate(sdpa_model, METHOD, max_new_tokens=STEPS, **inputs)
    with gp.optimized(sdpa_model, METHOD, compile=True):
        logits = sdpa_model(**inputs).logits[:, -1]
        assert torch.equal(sdpa_model.generate(**inputs, max_new_tokens=STEPS, do_sample=False), ids)
        assert isinstance(sdpa_model._graphprune.decoder.graphs.runners()[0], torch._dynamo.eval_frame.OptimizedModule)
    torch.testing.assert_close(logits, reference.logits[:, -1], rtol=1e-4, atol=1e-4)


def test_explain_reports_the_savings(pruned, inputs):
    report = gp.explain(pruned, **inputs)
    assert report.n_visual == [8, 4] and [len(kept) for kept in report.kept] == [4, 2]
    assert report.flops_after < report.flops_before and report.kv_bytes_after < report.kv_bytes_before


def test_onnx_export_is_refused_in_one_line(pruned, inputs, tmp_path):
    with pytest.raises(gp.UnsupportedModelError) as error:
        gp.export.onnx(pruned, tmp_path / "out", example_inputs=inputs)
    message = str(error.value)
    assert "\n" not in message and message.startswith("graphprune cannot export Gemma3ForConditionalGeneration")
    assert "sliding-window masks" in message
    assert not (tmp_path / "out").exists()


def test_soft_capped_attention_is_refused_and_the_model_left_untouched():
    model = tiny_gemma3(seed=2)
    model.config.text_config.attn_logit_softcapping = 50.0
    with pytest.raises(ValueError) as error:
        gp.optimize(model, METHOD)
    message = str(error.value)
    assert "\n" not in message and message.startswith("graphprune does not prune Gemma 3 with attn_logit_softcapping")
    assert not hasattr(model, "_graphprune") and "forward" not in model.__dict__
