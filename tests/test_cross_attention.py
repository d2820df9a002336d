"""CrossAttentionTrim (Trimmed Llama, arXiv 2504.00557) on tiny Mllama: graph structure, the sort-free
selection, explain's report (the behaviour contract is in tests/test_contract.py)."""

import pytest
import torch

import graphprune as gp
from graphprune import ops, optimized
from graphprune.capture import capture_decode, capture_prefill
from graphprune.methods import n_keep
from graphprune.models import adapter_for
from graphprune.passes import cross_attention_trim, cross_attention_trim_decode
from graphprune.passes._graph import layer_index, module_path, symbol
from graphprune.reference import cross_attention_trim_reference, trimmed_mask_mode
from graphprune.testing import features_per_tile, mllama_inputs, tiny_mllama

from .helpers import MLLAMA_BATCH

pytestmark = pytest.mark.usefixtures("capture_once")  # one capture per session model (conftest)


def _readers(gm, node):
    return {(layer_index(user, gm.meta["graphprune_layout"]), module_path(user)) for user in node.users}


@pytest.mark.parametrize("select", ["head_union", "topk"])
def test_prefill_pass_ranks_at_the_first_cross_layer_and_trims_the_later_ones(mllama, select):
    adapter = adapter_for(mllama)
    layout = adapter.layout(mllama)
    gm = cross_attention_trim(capture_prefill(adapter.decoder(mllama), layout), gp.CrossAttentionTrim(select=select))
    nodes = {node.name: node for node in gm.graph.nodes}
    assert {"graphprune_scores", "graphprune_select", "graphprune_keep_index", "graphprune_slot_valid"} <= set(nodes)
    assert ("graphprune_slots" in nodes) == (select == "topk")
    states, mask = nodes["graphprune_gather_cross_attention_states"], nodes["graphprune_gather_cross_attention_mask"]
    # later cross-attention layers (3, 4) read the gathered features through k_proj/v_proj, the first (1) the original
    projections = {(i, f"decoder.layers.{i}.cross_attn.{p}") for i in (3, 4) for p in ("k_proj", "v_proj")}
    assert _readers(gm, states) == projections
    original = _readers(gm, nodes["cross_attention_states"])
    assert {i for i, _ in original} == {1, None}  # None: the ranking and the gather themselves
    assert {(1, "decoder.layers.1.cross_attn.k_proj"), (1, "decoder.layers.1.cross_attn.v_proj")} <= original
    assert {i for i, _ in _readers(gm, mask)} == {3, 4}
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    last_of_first = max(order[n] for n in gm.graph.nodes if layer_index(n, layout) == 1)
    assert order[nodes["graphprune_scores"]] > last_of_first
    assert gm.meta["graphprune_passes"] == ["cross_attention_trim"]


def test_decode_pass_gathers_the_mask_of_the_later_cross_layers_only(mllama):
    adapter = adapter_for(mllama)
    layout = adapter.layout(mllama)
    gm = cross_attention_trim_decode(capture_decode(adapter.decoder(mllama), layout), gp.CrossAttentionTrim())
    nodes = {node.name: node for node in gm.graph.nodes}
    assert {"graphprune_cache_index", "graphprune_cache_valid"} <= set(nodes)
    assert {i for i, _ in _readers(gm, nodes["graphprune_gather_cross_attention_mask"])} == {3, 4}
    assert {i for i, _ in _readers(gm, nodes["cross_attention_mask"])} == {1, None}


def _selected_by_sorting(scores, valid, keep, select):
    """Per sample, the kept features by a plain sort: best score first, ties to the lower index; ascending."""
    kept = []
    rows_per_sample = scores if select == "head_union" else scores.mean(dim=1, keepdim=True)
    for rows, sample_valid in zip(rows_per_sample.tolist(), valid.tolist(), strict=True):
        features = [j for j, v in enumerate(sample_valid) if v]
        count = n_keep(keep, len(features))
        chosen = set()
        for row in rows:
            chosen |= set(sorted(features, key=lambda j, row=row: (-row[j], j))[:count])
        kept.append(sorted(chosen))
    return kept


@pytest.mark.parametrize("select", ["head_union", "topk"])
def test_selection_without_sort_keeps_the_best_ties_to_the_lower_index_in_order(select):
    """``cross_attention_select`` (top-k cut + cumulative sum + scatter, as ONNX takes it), with and without
    the export's feature budget, against a sort on many random cases full of ties."""
    generator = torch.Generator().manual_seed(0)
    for case in range(300):
        batch, heads, n = 3, 2, int(torch.randint(1, 30, (1,), generator=generator))
        scores = torch.randint(0, 1 + case % 5, (batch, heads, n), generator=generator).float() / 4
        valid = torch.rand(batch, n, generator=generator) < 0.3 + 0.7 * case / 300
        keep = (0.1, 0.25, 1 / 3, 0.5, 1.0)[case % 5]
        expected = _selected_by_sorting(scores, valid, keep, select)
        slots = torch.arange(int(ops.keep_counts(valid, keep).max())) if select == "topk" else None
        for max_features in (None, n + case % 7):
            index, slot_valid = ops.cross_attention_select(scores, valid, keep, select, slots, max_features)
            assert [index[b][slot_valid[b]].tolist() for b in range(batch)] == expected, (case, max_features)
            for b in range(batch):  # padding slots hold the lowest features not kept
                unkept = [j for j in range(n) if j not in expected[b]]
                assert index[b][~slot_valid[b]].tolist() == unkept[: int((~slot_valid[b]).sum())]


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
@torch.no_grad()
def test_decode_reads_the_feature_count_off_the_first_cross_layer():
    """torch.export may read the (unified) feature count off any cross-attention layer's past; the
    trimmed layers' pasts are shorter, so every read must come from the first one's. (With cross-attention
    at 2, 5, 8 the captured graph reads it off layer 5's past for layer 2.)"""
    model = tiny_mllama(num_layers=10, cross_attention_layers=(2, 5, 8))
    adapter = adapter_for(model)
    layout = adapter.layout(model)
    gm = cross_attention_trim_decode(capture_decode(adapter.decoder(model), layout), gp.CrossAttentionTrim())
    features = symbol(gm.graph.find_nodes(op="placeholder", target="cross_attention_mask")[0].meta["val"].shape[3])
    trimmed = {f"past_{i}" for i in range(10, 20)}
    reads = [
        node.args[0].name
        for node in gm.graph.find_nodes(op="call_function", target=torch.ops.aten.sym_size.int)
        if symbol(node.meta.get("val")) == features
    ]
    assert reads and not trimmed & set(reads)
    inputs = mllama_inputs(model, [(1, [2], 3), (0, [1], 5)])
    reference = cross_attention_trim_reference(model, gp.CrossAttentionTrim(), **inputs)
    with trimmed_mask_mode(model, reference.kept):
        expected = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with optimized(model, gp.CrossAttentionTrim()):
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), expected)


@torch.no_grad()
def test_explain_reports_kept_features_tiles_flops_and_kv_bytes(mllama, mllama_batch):
    method = gp.CrossAttentionTrim(keep=0.5, select="topk")
    reference = cross_attention_trim_reference(mllama, method, **mllama_batch)
    with optimized(mllama, method):
        report = gp.explain(mllama, **mllama_batch)
    per_tile = features_per_tile(mllama)
    assert [k.tolist() for k in report.kept] == [k.tolist() for k in reference.kept]
    assert report.n_visual == [tiles[0] * per_tile for _, tiles, _ in MLLAMA_BATCH]
    for kept, fractions, (_, tiles, _) in zip(report.kept, report.kept_per_tile, MLLAMA_BATCH, strict=True):
        counts = torch.bincount(kept // per_tile, minlength=4)[:4]
        assert torch.equal(fractions[0], counts / per_tile)
        assert fractions[0, tiles[0] :].sum() == 0  # padding tiles
    # only the trimmed layers (3, 4) cache fewer positions: the kept slots instead of every feature
    text = mllama.config.text_config
    per_position = 2 * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * 4 * len(MLLAMA_BATCH)
    slots = max(report.n_kept)
    assert report.kv_bytes_before - report.kv_bytes_after == 2 * (4 * per_tile - slots) * per_position
    assert 0 < report.flops_after < report.flops_before
    assert "kept per tile" in str(report)
