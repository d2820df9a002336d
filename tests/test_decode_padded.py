"""Decode on a left-padded cache (issue 15 item 3): generate's one-token steps run the key-mask graph, whose layers
read views of key masks made once (at the first step, again only when the room grows), so no step gathers or
builds a mask over the prompt; the tokens are each sample's alone and the independent reference's. A caller's own
steps (outside the generate that filled the cache) keep the general graph, which reads the mask it is given."""

import pytest
import torch

import graphprune as gp
from graphprune import ops
from graphprune.capture import capture_decode, key_mask_decode
from graphprune.decoders.base import DECODE, KEY_MASK_DECODE
from graphprune.models import adapter_for
from graphprune.passes._graph import layer_index
from graphprune.reference import fastv_reference_generate
from graphprune.runtime import optimized_state
from graphprune.testing import llava_inputs, qwen2_vl_inputs, tiny_llava, tiny_qwen2_vl
from tests.test_host_syncs import _counted

pytestmark = pytest.mark.usefixtures("capture_once")  # one capture per session model (conftest)

SDPA = torch.ops.aten.scaled_dot_product_attention.default
METHOD = gp.FastV(k=2, keep=0.5)
PADDED = [(5, 1, 4), (2, 2, 3), (6, 0, 3)]
GATHERS = {"aten.gather.default", "aten.index.Tensor", "aten.index_select.default", "aten.take_along_dim.default"}


@pytest.fixture(scope="module")
def llava():
    model = tiny_llava(num_layers=4)
    gp.optimize(model, METHOD)
    yield model
    gp.restore(model)


def _mask_inputs(graph) -> list:
    return [node for node in graph.graph.nodes if node.op == "placeholder" and "mask" in node.name]


def test_key_mask_graph_reads_its_masks_through_views_only(llava):
    """Layers < k see ``graphprune_key_mask``, layers >= k ``graphprune_pruned_key_mask``, each through one
    ``[B, 1, 1, K]`` view straight into SDPA: nothing gathers, indexes or builds a mask in the step."""
    decoder = optimized_state(llava).decoder
    layout = decoder.layout
    general = decoder.graphs.graphs()[DECODE]
    assert [n for n in general.graph.nodes if n.target is ops.gather_decode_mask]  # what the general form does
    graph = decoder.graphs.graphs()[KEY_MASK_DECODE]
    full, pruned = _mask_inputs(graph)
    assert (full.name, pruned.name) == ("graphprune_key_mask", "graphprune_pruned_key_mask")
    for mask, layers in ((full, {0, 1}), (pruned, {2, 3})):
        (rows,) = mask.users
        assert rows.target is ops.key_mask_rows
        assert all(user.target is SDPA for user in rows.users)
        assert {layer_index(user, layout) for user in rows.users} == layers
    targets = {str(node.target) for node in graph.graph.nodes}
    assert not targets & GATHERS and ops.gather_decode_mask not in {node.target for node in graph.graph.nodes}


@torch.no_grad()
def test_padded_generate_steps_gather_nothing(llava):
    """generate's decode steps on a padded cache: no gather or index op at all, the graph's or graphprune's (the
    prefill's gathers are counted by a one-token generate and taken off)."""
    inputs = llava_inputs(llava, PADDED)

    def gathers(new_tokens: int) -> int:
        _, ops_ = _counted(lambda: llava.generate(**inputs, max_new_tokens=new_tokens, do_sample=False))
        return sum(n for (owner, op), n in ops_.work.items() if owner != "model" and op in GATHERS)

    assert gathers(1) > 0  # the prefill's
    assert gathers(6) == gathers(1)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])  # bool and additive masks
def test_padded_generate_equals_each_sample_alone_and_reference(attn):
    """40 steps outgrow the room laid out at the first step: the key masks are made again, and still equal the
    slots' validity and the prompt's mask grown by ones."""
    model = tiny_llava(num_layers=4, attn_implementation=attn)
    inputs = llava_inputs(model, PADDED)
    steps = 40 if attn == "sdpa" else 12
    expected = fastv_reference_generate(model, METHOD, **inputs, max_new_tokens=steps)
    with gp.optimized(model, METHOD):
        out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, return_dict_in_generate=True)
        prefill_slots = gp.last_record(model).keep_index.shape[1]
        state = optimized_state(model).decoder._cache_states[out.past_key_values]
        alone = [llava_inputs(model, [sample], seed=b) for b, sample in enumerate(PADDED)]
        alone = [model.generate(**one, max_new_tokens=steps, do_sample=False) for one in alone]
    assert torch.equal(out.sequences, expected)
    for row, ids in zip(out.sequences, alone, strict=True):
        assert torch.equal(row[-steps:], ids[0, -steps:])
    if attn == "sdpa":
        assert 2 * prefill_slots < prefill_slots + steps - 1  # the first step's room (doubled) ran out
    full, pruned = state.key_masks
    prompt = inputs["attention_mask"]
    ones = torch.ones(len(prompt), full.shape[1] - prompt.shape[1], dtype=torch.bool)
    assert torch.equal(full, ops.key_mask_form(torch.cat([prompt.bool(), ones], dim=1), full.dtype))
    assert torch.equal(pruned, ops.key_mask_form(state.valid, pruned.dtype))
    assert pruned.shape[1] >= out.past_key_values.layers[-1].keys.shape[2]


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
@torch.no_grad()
def test_padded_qwen2_vl_generate_equals_reference():
    """M-RoPE positions and the Qwen2 decoder: the key-mask graph exists and gives the reference's tokens."""
    model = tiny_qwen2_vl(num_layers=4)
    inputs = qwen2_vl_inputs(model, [(4, [(4, 4)], [], 3), (1, [(4, 4)], [], 2)])
    assert (inputs["attention_mask"] == 0).any()
    expected = fastv_reference_generate(model, METHOD, **inputs, max_new_tokens=8)
    with gp.optimized(model, METHOD):
        assert optimized_state(model).decoder.graphs.graphs()[KEY_MASK_DECODE] is not None
        got = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(got, expected)


def _own_steps(model, cache, token, mask, hide_first: bool) -> list[torch.Tensor]:
    """Two steps as a caller's own loop runs them; with ``hide_first``, the first one's mask hides its new token."""
    logits = []
    for step in range(2):
        new = torch.zeros_like(token) if hide_first and step == 0 else torch.ones_like(token)
        mask = torch.cat([mask, new], dim=1)
        positions = mask.cumsum(dim=-1)[:, -1:] - 1
        out = model(input_ids=token, attention_mask=mask, position_ids=positions, past_key_values=cache)
        token = out.logits[:, -1:].argmax(-1)
        logits.append(out.logits[:, -1])
    return logits


@torch.no_grad()
def test_own_steps_on_a_cache_generate_filled_read_the_mask_they_are_given(llava):
    """The key masks hold for the generate call that made them only: a caller continuing its cache with a mask
    that hides a new token gets what the same steps give on a cache it filled itself (and hiding changes it)."""
    inputs = llava_inputs(llava, PADDED)
    ones = torch.ones(len(PADDED), 2, dtype=inputs["attention_mask"].dtype)

    def after_generate(hide_first: bool):
        out = llava.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
        mask = torch.cat([inputs["attention_mask"], ones], dim=1)  # the prompt and two tokens are cached
        return _own_steps(llava, out.past_key_values, out.sequences[:, -1:], mask, hide_first)

    mask = inputs["attention_mask"]
    positions = (mask.cumsum(dim=-1) - 1).masked_fill(mask == 0, 1)  # as generate gives them
    out = llava(**inputs, position_ids=positions, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    for _ in range(2):  # generate's two cached steps, as a caller runs them
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        positions = mask.cumsum(dim=-1)[:, -1:] - 1
        out = llava(input_ids=token, attention_mask=mask, position_ids=positions, past_key_values=out.past_key_values)
        token = out.logits[:, -1:].argmax(-1)
    expected = _own_steps(llava, out.past_key_values, token, mask, hide_first=True)
    hidden, shown = after_generate(hide_first=True), after_generate(hide_first=False)
    for got, want in zip(hidden, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(hidden[1], shown[1])


@pytest.mark.compile
@torch.no_grad()
def test_compiled_padded_decode_equals_reference():
    model = tiny_llava(num_layers=3)
    inputs = llava_inputs(model, PADDED)
    expected = fastv_reference_generate(model, METHOD, **inputs, max_new_tokens=4)
    with gp.optimized(model, METHOD, compile=True):
        got = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        runner = optimized_state(model).decoder.graphs.runners()[KEY_MASK_DECODE]
        assert isinstance(runner, torch._dynamo.eval_frame.OptimizedModule)
    assert torch.equal(got, expected)


def test_no_key_mask_form_where_the_mask_is_not_plain_padding():
    """A sliding window hides cached keys that the step's padding does not: such a decoder keeps the general form."""
    model = tiny_llava(num_layers=3)
    decoder = adapter_for(model).decoder(model)
    decode = capture_decode(decoder, adapter_for(model).layout(model))
    assert key_mask_decode(decode, decoder) is not None
    decoder.config.sliding_window = 4
    assert key_mask_decode(decode, decoder) is None
