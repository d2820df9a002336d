"""The unpadded prefill graph gives SDPA the form HF gives it (no mask, ``is_causal=True``), with the same numbers."""

from __future__ import annotations

import torch

from graphprune import FastV, ops
from graphprune.capture import capture_prefill, causal_prefill
from graphprune.models import adapter_for
from graphprune.passes import fastv
from graphprune.testing import llava_inputs, qwen2_vl_inputs, tiny_llava, tiny_qwen2_vl

SDPA = torch.ops.aten.scaled_dot_product_attention.default
METHOD = FastV(k=2, keep=0.5)


def _sdpa_forms(gm) -> list[tuple[bool, bool]]:
    """(has a mask, is_causal) of every SDPA call of a graph."""
    forms = []
    for node in gm.graph.nodes:
        if node.target is SDPA:
            mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
            causal = node.args[5] if len(node.args) > 5 else node.kwargs.get("is_causal", False)
            forms.append((mask is not None, causal))
    return forms


def _graphs(model):
    adapter = adapter_for(model)
    decoder = adapter.decoder(model)
    masked = capture_prefill(decoder, adapter.layout(model))
    return decoder, masked, causal_prefill(masked, decoder)


def _graph_inputs(model, decoder, inputs):
    """The prefill graphs' inputs for an unpadded batch, as the runtime builds them, and the decoder's own."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert bool(mask.all())
    with torch.no_grad():
        embeds = decoder.get_input_embeddings()(ids)
    visual = ids == model.config.image_token_id
    kept = mask.sum(dim=-1) - visual.sum(dim=-1) + ops.keep_counts(visual, METHOD.keep)
    assert int(kept.min()) == int(kept.max())  # every sample keeps as many: no padding slot
    positions = torch.arange(ids.shape[1])[None].expand(ids.shape)
    if adapter_for(model).layout(model).position_rows:
        positions = positions[None].expand(3, *ids.shape)
    return (embeds, mask, positions), (visual, torch.arange(int(kept.max())))


def test_unpadded_graph_calls_sdpa_without_mask_and_causal_before_and_after_fastv():
    model = tiny_llava(num_layers=4)
    decoder, masked, causal = _graphs(model)
    assert _sdpa_forms(masked) == [(True, False)] * 4  # what graphprune's graphs gave SDPA so far
    assert _sdpa_forms(causal) == [(False, True)] * 4
    pruned = fastv(causal, METHOD)
    assert _sdpa_forms(pruned) == [(False, True)] * 4
    assert not [node for node in pruned.graph.nodes if node.target is ops.gather_attention_mask]  # no mask to gather
    assert [node for node in fastv(masked, METHOD).graph.nodes if node.target is ops.gather_attention_mask]
    assert {p.data_ptr() for p in pruned.parameters()} <= {p.data_ptr() for p in decoder.parameters()}


def test_unpadded_graph_gives_the_decoders_numbers_and_the_masked_graphs_after_fastv():
    for model, inputs in [
        (tiny_llava(num_layers=4), lambda m: llava_inputs(m, [(5, 1, 4), (3, 1, 6)])),
        (tiny_qwen2_vl(num_layers=4), lambda m: qwen2_vl_inputs(m, [(4, [(4, 4)], [], 3), (2, [(4, 4)], [], 5)])),
    ]:
        decoder, masked, causal = _graphs(model)
        inputs = inputs(model)
        args, fastv_args = _graph_inputs(model, decoder, inputs)
        with torch.no_grad():
            expected = decoder(inputs_embeds=args[0], attention_mask=args[1], position_ids=args[2], use_cache=True)
            got = causal(*args)
            torch.testing.assert_close(got[0], expected.last_hidden_state)
            for layer, (keys, values) in enumerate(zip(got[1::2], got[2::2], strict=True)):
                torch.testing.assert_close(keys, expected.past_key_values.layers[layer].keys)
                torch.testing.assert_close(values, expected.past_key_values.layers[layer].values)
            pruned_masked = fastv(masked, METHOD)(*args, *fastv_args)
            pruned_causal = fastv(causal, METHOD)(*args, *fastv_args)
        assert len(pruned_causal) == len(pruned_masked)
        for a, b in zip(pruned_causal, pruned_masked, strict=True):
            torch.testing.assert_close(a, b)


def test_no_unpadded_form_where_the_mask_is_not_plain_causal():
    model = tiny_llava(num_layers=3)
    decoder = adapter_for(model).decoder(model)
    masked = capture_prefill(decoder, adapter_for(model).layout(model))
    decoder.config.sliding_window = 4
    assert causal_prefill(masked, decoder) is None
