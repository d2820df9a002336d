"""Decode on a cache filled without padding (issue 15 item 3): one-token steps run a graph with no mask input, no
per-step mask build or gather, SDPA given what HF gives it then (no mask, grouped keys and values as they are),
with the independent reference's tokens; a padded cache and a multi-token step keep the masked graph."""

import pytest
import torch

import graphprune as gp
from graphprune import ops
from graphprune.reference import fastv_reference_generate
from graphprune.runtime import optimized_state
from graphprune.testing import llava_inputs, qwen2_vl_inputs, tiny_llava, tiny_qwen2_vl
from tests.test_host_syncs import _by, _steps

pytestmark = pytest.mark.usefixtures("capture_once")  # one capture per session model (conftest)

SDPA = torch.ops.aten.scaled_dot_product_attention.default
METHOD = gp.FastV(k=2, keep=0.5)
UNPADDED = [(5, 1, 4), (3, 1, 6)]
PADDED = [(5, 1, 4), (2, 1, 3)]


@pytest.fixture(scope="module")
def llava():
    model = tiny_llava(num_layers=4)  # grouped keys and values: 4 query heads, 2 key-value heads
    gp.optimize(model, METHOD)
    yield model
    gp.restore(model)


def _decode_sdpa(model, inputs, new_tokens: int = 4) -> list[tuple[list[int], list[int]]]:
    """(key shape, mask shape) of every decoder SDPA call of generate's decode steps."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    calls = [event.input_shapes for event in prof.events() if event.name == "aten::scaled_dot_product_attention"]
    return [(shapes[1], shapes[3]) for shapes in calls if shapes[0][2] == 1]  # one query: a decode step


def test_unpadded_decode_graph_has_no_mask_input_gather_or_repeated_keys(llava):
    graph = optimized_state(llava).decoder.graphs.graphs()[3]
    nodes = list(graph.graph.nodes)
    assert [node.name for node in nodes if node.op == "placeholder"] == ["inputs_embeds", "position_ids"] + [
        f"past_{i}" for i in range(8)
    ]
    assert not [node for node in nodes if node.target is ops.gather_decode_mask]
    calls = [node for node in nodes if node.target is SDPA]
    assert len(calls) == 4
    for node in calls:
        assert node.args[3] is None and node.args[5] is False and node.kwargs.get("enable_gqa") is True
        assert node.args[1].meta["val"].shape[1] == 2  # the key-value heads, not repeated to 4


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_unpadded_generate_equals_reference_and_decodes_without_a_mask(family):
    if family == "llava":
        model = tiny_llava(num_layers=4)
        inputs = llava_inputs(model, UNPADDED)
    else:
        model = tiny_qwen2_vl(num_layers=4)
        inputs = qwen2_vl_inputs(model, [(4, [(4, 4)], [], 3), (2, [(4, 4)], [], 5)])
    expected = fastv_reference_generate(model, METHOD, **inputs, max_new_tokens=10)
    with gp.optimized(model, METHOD):
        got = model.generate(**inputs, max_new_tokens=10, do_sample=False)
        calls = _decode_sdpa(model, inputs)
    assert torch.equal(got, expected)
    assert calls and all(mask == [] and key[1] == 2 for key, mask in calls), calls


def test_padded_batch_decodes_with_the_mask(llava):
    calls = _decode_sdpa(llava, llava_inputs(llava, PADDED))
    assert calls and all(mask != [] for _, mask in calls), calls


def test_unpadded_decode_does_no_work_outside_its_graph_from_the_first_step(llava):
    """No slot bookkeeping at all: the unmasked graph reads no slots, so even the first step lays out none."""
    _, *decode = _steps(llava, llava_inputs(llava, UNPADDED))
    for step in decode:
        assert _by(step.work, "graphprune") == {}, step.work


@torch.no_grad()
def test_multi_token_step_on_an_unpadded_cache_uses_the_mask_and_equals_one_token_steps(llava):
    inputs = llava_inputs(llava, UNPADDED)
    tokens = torch.tensor([[7, 9], [11, 3]])
    mask, length = inputs["attention_mask"], inputs["input_ids"].shape[1]
    positions = torch.arange(length, length + 2).expand(2, 2)
    one_by_one = []
    cache = llava(**inputs, use_cache=True).past_key_values
    for step in range(2):
        out = llava(
            input_ids=tokens[:, step : step + 1],
            attention_mask=torch.cat([mask, torch.ones(2, step + 1, dtype=mask.dtype)], dim=1),
            position_ids=positions[:, step : step + 1],
            past_key_values=cache,
        )
        one_by_one.append(out.logits[:, -1])
    cache = llava(**inputs, use_cache=True).past_key_values
    both = llava(
        input_ids=tokens,
        attention_mask=torch.cat([mask, torch.ones(2, 2, dtype=mask.dtype)], dim=1),
        position_ids=positions,
        past_key_values=cache,
    )
    torch.testing.assert_close(both.logits, torch.stack(one_by_one, dim=1))


@torch.no_grad()
def test_unpadded_decode_step_with_a_mask_of_another_length_is_a_one_line_error(llava):
    inputs = llava_inputs(llava, UNPADDED)
    cache = llava(**inputs, use_cache=True).past_key_values
    mask = torch.ones(2, inputs["input_ids"].shape[1], dtype=torch.long)  # one short
    with pytest.raises(ValueError, match=r"^attention_mask covers \d+ positions; the cache holds") as error:
        llava(input_ids=torch.tensor([[7], [9]]), attention_mask=mask, past_key_values=cache)
    assert "\n" not in str(error.value)


@pytest.mark.compile
@torch.no_grad()
def test_compiled_unpadded_decode_equals_reference():
    model = tiny_llava(num_layers=3)
    inputs = llava_inputs(model, UNPADDED)
    expected = fastv_reference_generate(model, METHOD, **inputs, max_new_tokens=4)
    with gp.optimized(model, METHOD, compile=True):
        got = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        runner = optimized_state(model).decoder.graphs.runners()[3]
        assert isinstance(runner, torch._dynamo.eval_frame.OptimizedModule)
    assert torch.equal(got, expected)
