"""The method registry, ``gp.optimized`` and ``gp.last_record``."""

import copy
import dataclasses

import pytest
import torch

import graphprune as gp
from graphprune import registry
from graphprune.decoders import FastVDecoder, PrefillRecord, TrimRecord
from graphprune.models import adapter_for

pytestmark = pytest.mark.usefixtures("capture_once")  # one capture per session model (conftest)


@dataclasses.dataclass(frozen=True)
class _NewMethod(gp.FastV):
    """A method type of its own (FastV's rule), registered by the test as a new method module would be."""


def _attributes(model):
    return {module: dict(vars(module)) for module in (model, adapter_for(model).decoder(model))}


@torch.no_grad()
def test_optimized_restores_the_model_bit_identical_also_when_the_block_raises(llava, batch):
    before_logits = llava(**batch).logits
    before_weights = {name: tensor.clone() for name, tensor in llava.state_dict().items()}
    before_attributes = _attributes(llava)
    with pytest.raises(RuntimeError, match="inside the block"), gp.optimized(llava, gp.FastV(k=2, keep=0.25)) as model:
        assert model is llava and gp.last_record(llava) is None
        pruned = llava(**batch).logits
        raise RuntimeError("inside the block")
    assert not torch.equal(pruned, before_logits)  # it did run optimized
    assert _attributes(llava) == before_attributes
    assert all(torch.equal(before_weights[name], tensor) for name, tensor in llava.state_dict().items())
    assert torch.equal(llava(**batch).logits, before_logits)
    with pytest.raises(ValueError, match="not optimized by graphprune"):
        gp.last_record(llava)


def test_optimized_with_a_wrong_method_raises_and_leaves_the_model_untouched(llava):
    before_attributes = _attributes(llava)
    with (
        pytest.raises(ValueError, match="CrossAttentionTrim does not fit"),
        gp.optimized(llava, gp.CrossAttentionTrim()),
    ):
        pytest.fail("the block must not run")
    assert _attributes(llava) == before_attributes


@torch.no_grad()
def test_last_record_is_the_latest_prefill_of_this_model_only(llava, batch):
    with gp.optimized(llava, gp.FastV(k=2, keep=0.5)):
        report = gp.explain(llava, **batch)
        record = gp.last_record(llava)
        assert isinstance(record, PrefillRecord) and record.scores is not None
        slots = [record.keep_index[b][record.slot_valid[b]] for b in range(len(report.kept))]
        kept = [index[record.visual_mask[b, index]] for b, index in enumerate(slots)]
        assert all(torch.equal(a, b) for a, b in zip(kept, report.kept, strict=True))
        clone = copy.deepcopy(llava)
        assert gp.last_record(clone) is None  # a copy has its own records
        clone(**batch)
        assert gp.last_record(clone) is not None and gp.last_record(llava) is record


@torch.no_grad()
def test_last_record_of_a_text_only_trimmed_prefill(mllama):
    ids = torch.tensor([[8, 9, 10, 11]])  # text ids only
    with gp.optimized(mllama, gp.CrossAttentionTrim(keep=0.5)):
        mllama(input_ids=ids)
        record = gp.last_record(mllama)
        assert isinstance(record, TrimRecord) and record.keep_index.shape == (1, 0)


def test_an_unregistered_method_type_is_a_one_line_error_listing_the_registered_ones(llava):
    with pytest.raises(TypeError, match=r"^graphprune: method must be one of .*graphprune\.FastV\(\.\.\.\)") as error:
        registry.handler_for({"k": 2})
    assert "\n" not in str(error.value) and "graphprune.CrossAttentionTrim(...)" in str(error.value)
    with pytest.raises(TypeError, match="graphprune: method must be one of"):
        gp.flops(llava.config, _NewMethod(), 10, 4)


@torch.no_grad()
def test_a_registered_method_runs_through_its_handler(llava, batch, monkeypatch):
    seen = []

    class Decoder(FastVDecoder):
        def _capture(self):
            seen.append(type(self.method))
            return super()._capture()

    fastv = registry.handler_for(gp.FastV())
    handler = dataclasses.replace(fastv, method=_NewMethod, decoder=Decoder, unit="new units")
    monkeypatch.setitem(registry._HANDLERS, _NewMethod, handler)
    method = _NewMethod(k=2, keep=0.5)
    assert gp.flops(llava.config, method, 40, 16) == gp.flops(llava.config, gp.FastV(k=2, keep=0.5), 40, 16)
    with gp.optimized(llava, method):
        assert seen == [_NewMethod] and isinstance(llava._graphprune.decoder, Decoder)
        report = gp.explain(llava, **batch)
    with gp.optimized(llava, gp.FastV(k=2, keep=0.5)):
        expected = gp.explain(llava, **batch)
    assert all(torch.equal(a, b) for a, b in zip(report.kept, expected.kept, strict=True))
    assert "new units" in str(report) and "new units" not in str(expected)


def test_the_layout_is_computed_once_per_optimize(llava, monkeypatch):
    adapter = adapter_for(llava)
    calls = []
    layout = type(adapter).layout

    def counted(self, model):
        calls.append(model)
        return layout(self, model)

    monkeypatch.setattr(type(adapter), "layout", counted)
    with gp.optimized(llava, gp.FastV(k=2)):
        assert calls == [llava]


@dataclasses.dataclass(frozen=True)
class _NewTrim(gp.CrossAttentionTrim):
    """A method type of its own (CrossAttentionTrim's rule)."""


@pytest.fixture
def counted_lookups(monkeypatch):
    """The method types ``registry.handler_for`` is asked for while the test runs."""
    asked = []

    class Counted(dict):
        def get(self, key, default=None):
            asked.append(key)
            return super().get(key, default)

    monkeypatch.setattr(registry, "_HANDLERS", Counted(registry._HANDLERS))
    return asked


@torch.no_grad()
def test_optimize_looks_the_handler_up_once_and_explain_reads_it_off_the_model(llava, batch, counted_lookups):
    with gp.optimized(llava, gp.FastV(k=2, keep=0.5)):
        assert counted_lookups == [gp.FastV]
        report = gp.explain(llava, **batch)
        assert "visual tokens" in str(report) and counted_lookups == [gp.FastV]
    gp.flops(llava.config, gp.FastV(k=2, keep=0.5), 40, 16)
    assert counted_lookups == [gp.FastV, gp.FastV]  # flops is an entry point of its own


@pytest.mark.parametrize(
    ("model", "inputs", "new_method", "rule"),
    [
        ("llava", "batch", _NewMethod(k=2, keep=0.5), gp.FastV),
        ("mllama", "mllama_batch", _NewTrim(0.5, "topk"), gp.CrossAttentionTrim),
    ],
)
def test_an_export_makes_its_top_k_constant_by_the_method_s_budget_pass(
    request, model, inputs, new_method, rule, monkeypatch
):
    from graphprune.export.onnx_export import family_graphs

    model, inputs = request.getfixturevalue(model), request.getfixturevalue(inputs)
    budgets = []
    handler = registry.handler_for(rule(**dataclasses.asdict(new_method)))

    def budget_pass(graph, budget):
        budgets.append(budget)
        return handler.budget_pass(graph, budget)

    replaced = dataclasses.replace(handler, method=type(new_method), budget_pass=budget_pass)
    monkeypatch.setitem(registry._HANDLERS, type(new_method), replaced)
    with gp.optimized(model, new_method):
        family_graphs(model, inputs, prune=True, max_images=None, max_visual_tokens=None)
    assert len(budgets) == 1 and budgets[0] > 0
