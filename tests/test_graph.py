"""Layer 1: graph structure. What capture produces and what the passes insert, and where."""

import pytest
import torch

import graphprune as gp
from graphprune.capture import capture_decode, capture_prefill
from graphprune.models import adapter_for
from graphprune.passes import fastv, fastv_decode
from graphprune.passes._graph import layer_index

from .helpers import optimized


def _captured(model):
    adapter = adapter_for(model)
    return adapter.decoder(model), adapter.layout(model)


def test_capture_is_exact_and_shares_the_model_parameters(llava):
    decoder, layout = _captured(llava)
    gm = capture_prefill(decoder, layout)
    embeds = torch.randn(2, 7, decoder.config.hidden_size)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :2] = 0
    positions = torch.arange(7).expand(2, 7)
    with torch.no_grad():
        hidden, *cache = gm(embeds, mask, positions)
        expected = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    assert torch.equal(hidden, expected.last_hidden_state)
    assert torch.equal(cache[2], expected.past_key_values.layers[1].keys)
    weight = decoder.layers[0].self_attn.q_proj.weight
    assert gm.get_parameter("decoder.layers.0.self_attn.q_proj.weight").data_ptr() == weight.data_ptr()


def test_every_decoder_node_knows_its_layer(llava):
    decoder, layout = _captured(llava)
    gm = capture_prefill(decoder, layout)
    layers = {layer_index(node, layout) for node in gm.graph.nodes} - {None}
    assert layers == set(range(layout.num_layers))
    sdpa = [node for node in gm.graph.nodes if node.target is torch.ops.aten.scaled_dot_product_attention.default]
    assert [layer_index(node, layout) for node in sdpa] == list(range(layout.num_layers))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fastv_inserts_ranking_and_gathers_between_layer_k_minus_1_and_k(llava, k):
    decoder, layout = _captured(llava)
    gm = fastv(capture_prefill(decoder, layout), gp.FastV(k=k))
    nodes = list(gm.graph.nodes)
    inserted = [node for node in nodes if node.name.startswith("graphprune_")]
    names = {node.name for node in inserted}
    assert {"graphprune_visual_mask", "graphprune_slots"} <= names
    assert {"graphprune_scores", "graphprune_select", "graphprune_keep_index", "graphprune_slot_valid"} <= names
    gathers = sorted(node.target.__name__ for node in inserted if node.name.startswith("graphprune_gather_"))
    # residual stream, RoPE cos and sin: per-sample gathers; the 4-D mask: both axes
    assert gathers == ["gather_attention_mask", "gather_sequence", "gather_sequence", "gather_sequence"]
    position = {node: i for i, node in enumerate(nodes)}
    last_of_previous = max(position[n] for n in nodes if layer_index(n, layout) == k - 1)
    first_of_layer_k = min(position[n] for n in nodes if layer_index(n, layout) == k)
    for node in inserted:
        if node.op != "placeholder":
            assert last_of_previous < position[node] < first_of_layer_k, node.name
    # ranking reads layer k-1's own post-RoPE query: an input of that layer's attention kernel
    query = gm.graph.find_nodes(op="call_function", target=torch.ops.aten.scaled_dot_product_attention.default)
    assert next(n for n in nodes if n.name == "graphprune_scores").args[0] is query[k - 1].args[0]
    # layers >= k read only pruned tensors: none of their inputs has the unpruned sequence length
    seq = nodes[0].meta["val"].shape[1]
    for node in nodes:
        if (layer_index(node, layout) or -1) >= k:
            for arg in node.all_input_nodes:
                if (
                    arg.op != "get_attr"
                    and (layer_index(arg, layout) or -1) < k
                    and not arg.name.startswith("graphprune_")
                ):
                    value = arg.meta.get("val")
                    assert not (isinstance(value, torch.Tensor) and seq in value.shape), (node.name, arg.name)


def test_fastv_decode_gives_pruned_layers_their_own_mask(llava_eager):
    decoder, layout = _captured(llava_eager)
    gm = fastv_decode(capture_decode(decoder, layout), gp.FastV(k=2))
    masks = [node for node in gm.graph.nodes if node.name.startswith("graphprune_gather_")]
    assert len(masks) == 1
    readers = {layer_index(user, layout) for user in masks[0].users if not user.name.startswith("graphprune_")}
    assert readers == {2, 3}  # eager attention adds the mask in layers >= k only
    placeholders = [node.name for node in gm.graph.nodes if node.op == "placeholder"]
    assert placeholders[-2:] == ["graphprune_cache_index", "graphprune_cache_valid"]


def test_pass_errors_name_the_pass(llava):
    decoder, layout = _captured(llava)
    gm = capture_prefill(decoder, layout)
    with pytest.raises(ValueError, match="1 <= k < 4"):
        fastv(gm, gp.FastV(k=4))
    gm.meta.clear()
    with pytest.raises(gp.PassError, match="graphprune pass 'fastv'.*no decoder layout"):
        fastv(gm, gp.FastV(k=2))


def test_optimized_model_holds_the_pruned_graphs(llava):
    with optimized(llava, gp.FastV(k=2)):
        runtime = llava._graphprune.decoder
        assert runtime.prefill_graph.meta["graphprune_passes"] == ["fastv"]
        assert runtime.decode_graph.meta["graphprune_passes"] == ["fastv_decode"]
