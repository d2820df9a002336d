"""Host round trips and per-step work of the optimized models (issue 15: decode is launch-bound on a GPU, where each
read of device data by the host, ``int(t)``, ``bool(t)``, ``.item()``, ``.tolist()``, ``nonzero``, stalls the
host until the device catches up, and each tensor made from host data is a copy to the device).

On this CPU machine they are counted as ``torch.cuda.set_sync_debug_mode`` would flag them on a GPU: the aten ops
that read a tensor's data on the host, the tensors made from host data, and ``tolist``/``numpy`` (which read CPU
data without dispatching). Each op is attributed to who ran it: graphprune's own code, its captured graphs, or
the model's (HF's ``generate`` and LLaVA's forward have their own, which graphprune does not change).
"""

import collections
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import graphprune as gp
from graphprune.reference import fastv_reference_generate
from graphprune.runtime import optimized_state
from graphprune.testing import llava_inputs, mllama_inputs, tiny_llava, tiny_mllama

PACKAGE = str(Path(gp.__file__).parent)
OPS = str(Path(gp.__file__).parent / "ops.py")
READS_DEVICE_DATA = {
    torch.ops.aten._local_scalar_dense.default,  # item(), int(t), bool(t), float(t)
    torch.ops.aten.nonzero.default,
    torch.ops.aten.equal.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten.lift_fresh.default,  # torch.tensor(host data): a copy to the device
}
READS_WITHOUT_DISPATCH = ("tolist", "numpy", "cpu")


def _owner() -> str:
    """Who runs the op being dispatched: ``graph`` (a captured graph, and the ``graphprune.ops`` it calls),
    ``graphprune`` (its code), ``model`` (HF's)."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename == OPS:
            continue
        if frame.filename.startswith("<eval_with_key>"):
            return "graph"
        if "/transformers/" in frame.filename:
            return "model"
        if frame.filename.startswith(PACKAGE):
            return "graphprune"
    return "model"


class Ops(TorchDispatchMode):
    """Counts, per owner, the host reads and the ops that are not views (each a kernel launch on a GPU)."""

    def __init__(self):
        super().__init__()
        self.reads = collections.Counter()
        self.work = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS_DEVICE_DATA:
            self.reads[_owner(), str(func)] += 1
        elif not func.is_view and func is not torch.ops.aten._assert_tensor_metadata.default:
            self.work[_owner(), str(func)] += 1
        return func(*args, **(kwargs or {}))


class Reads(TorchFunctionMode):
    def __init__(self, ops: Ops):
        super().__init__()
        self.ops = ops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS_WITHOUT_DISPATCH:
            self.ops.reads[_owner(), func.__name__] += 1
        return func(*args, **(kwargs or {}))


def _counted(call):
    ops = Ops()
    with ops, Reads(ops), torch.no_grad():
        out = call()
    return out, ops


def _by(counter, *owners):
    return {key: n for key, n in counter.items() if key[0] in owners}


LLAVA_BATCHES = {"left-padded": [(5, 1, 4), (2, 2, 3), (6, 0, 3)], "unpadded": [(5, 1, 4), (3, 1, 6)]}


@pytest.fixture(scope="module")
def llava():
    model = tiny_llava()
    gp.optimize(model, gp.FastV(k=2, keep=0.5))
    yield model
    gp.restore(model)


def _steps(model, inputs, cross=()):
    """A prefill and three decode steps, as generate runs them; the ops of each."""
    counted = []
    out, ops = _counted(lambda: model(**inputs, use_cache=True))
    counted.append(ops)
    mask, extra = inputs["attention_mask"], {name: inputs[name] for name in cross}
    for _ in range(3):
        token = out.logits[:, -1:].argmax(-1)
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        # the whole cross-attention mask, one row longer per step: every transformers version slices it itself
        extra = {name: torch.cat([value, value[:, -1:]], dim=1) for name, value in extra.items()}
        positions = mask.cumsum(dim=-1)[:, -1:] - 1  # as generate gives them (in its own ops)
        call = dict(input_ids=token, attention_mask=mask, position_ids=positions, past_key_values=out.past_key_values)
        out, ops = _counted(lambda call=call, extra=extra: model(**call, **extra, use_cache=True))
        counted.append(ops)
    return counted


@pytest.mark.parametrize("samples", LLAVA_BATCHES.values(), ids=LLAVA_BATCHES.keys())
def test_fastv_prefill_reads_the_device_once_and_decode_never(llava, samples):
    prefill, *decode = _steps(llava, llava_inputs(llava, samples))
    assert gp.last_record(llava).scores is not None  # pruned
    # the one read that sizes the slots (the pruned length is data); every other choice rides on it
    assert sum(_by(prefill.reads, "graphprune", "graph").values()) == 1, prefill.reads
    for step in decode:
        assert _by(step.reads, "graphprune", "graph") == {}, step.reads


def test_fastv_decode_does_no_work_outside_its_graph(llava):
    """Nothing per step but the graph: no visual mask, no slot bookkeeping (the first step makes room for later
    ones: a step that needs none copies nothing)."""
    _, first, *later = _steps(llava, llava_inputs(llava, LLAVA_BATCHES["left-padded"]))
    for step in later:
        assert _by(step.work, "graphprune") == {}, step.work


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
def test_cross_attention_trim_prefill_reads_the_device_once_and_decode_never():
    model = tiny_mllama()
    gp.optimize(model, gp.CrossAttentionTrim(keep=0.5, select="topk"))
    inputs = mllama_inputs(model, [(1, [4], 5), (2, [2], 3)])
    prefill, *decode = _steps(model, inputs, cross=("cross_attention_mask",))
    assert gp.last_record(model).scores is not None  # trimmed
    assert sum(_by(prefill.reads, "graphprune", "graph").values()) == 1, prefill.reads
    for step in decode:
        assert _by(step.reads, "graphprune", "graph") == {}, step.reads


def test_graphs_run_no_per_call_checks(llava):
    """The captured graphs keep the dtype checks of their inputs only (the rest follow from them and the weights)
    and no ``detach_`` of an unread tensor: each was a Python-dispatched op at every call."""
    decoder = optimized_state(llava).decoder
    for graph in (decoder.prefill_graph, decoder.decode_graph):
        nodes = list(graph.graph.nodes)
        assert not [node for node in nodes if node.target is torch.ops.aten.detach_.default]
        checked = [node.args[0] for node in nodes if node.target is torch.ops.aten._assert_tensor_metadata.default]
        assert checked and all(node.op == "placeholder" for node in checked)


@torch.no_grad()
def test_decode_past_the_room_laid_out_ahead_equals_reference(llava):
    """40 steps outgrow the slots laid out at the first step (as many as the prefill kept, fewer than 40): the
    room doubles while generating, and the tokens are the independent reference's."""
    method = gp.FastV(k=2, keep=0.5)
    inputs = llava_inputs(llava, LLAVA_BATCHES["left-padded"])
    out = llava.generate(**inputs, max_new_tokens=40, do_sample=False, return_dict_in_generate=True)
    ids, cache, record = out.sequences, out.past_key_values, gp.last_record(llava)
    prefill_slots, prompt = record.keep_index.shape[1], inputs["input_ids"].shape[1]
    assert prefill_slots < 40
    # the slots of the generated tokens hold their positions (what a decode mask hiding one of them reads)
    state = optimized_state(llava).decoder._cache_states[cache]
    length = cache.layers[-1].keys.shape[2]
    generated = torch.arange(prompt, prompt + length - prefill_slots).expand(len(ids), -1)
    assert torch.equal(state.index[:, :length], torch.cat([record.keep_index, generated], dim=1))
    assert torch.equal(state.valid[:, :length], torch.cat([record.slot_valid, torch.ones_like(generated)], dim=1))
    gp.restore(llava)
    try:
        expected = fastv_reference_generate(llava, method, **inputs, max_new_tokens=40)
    finally:
        gp.optimize(llava, method)
    assert torch.equal(ids, expected)
