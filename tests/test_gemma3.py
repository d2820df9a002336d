"""Gemma 3: graphprune refuses it with the reason; the mask-mode reference applies Gemma 3's rules (bidirectional
image blocks, interleaved sliding-window layers, window-sized sliding caches) exactly as the model does."""

import pytest
import torch

import graphprune as gp
from graphprune.models import supported_classes
from graphprune.reference.fastv import decoder_inputs, eager_attention
from graphprune.reference.fastv_gemma3 import (
    allowed_keys,
    fastv_gemma3_reference,
    fastv_gemma3_reference_generate,
    image_blocks,
)
from graphprune.testing import gemma3_inputs, tiny_gemma3

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


def test_optimize_refuses_gemma3_in_one_line_and_leaves_it_untouched(model, inputs):
    before = model(**inputs).logits
    with pytest.raises(gp.UnsupportedModelError) as error:
        gp.optimize(model, gp.FastV(k=2, keep=0.5))
    message = str(error.value)
    assert "\n" not in message and message.startswith("graphprune does not support Gemma3ForConditionalGeneration")
    assert "bidirectionally" in message and "sliding-window" in message
    assert all(name in message for name in supported_classes())
    assert not hasattr(model, "_graphprune") and "forward" not in model.__dict__
    assert torch.equal(model(**inputs).logits, before)


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
