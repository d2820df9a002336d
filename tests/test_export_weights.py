"""ONNX export weights stored once (one ``weights.bin`` that every graph refers to as external data) and loaded
once (``OrtGenerator``'s sessions share one mapping of it); an export whose graphs exceed protobuf's 2 GiB."""

import functools
import io
import os
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
import onnx  # noqa: E402
import onnxruntime  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.export import shared_weights  # noqa: E402
from graphprune.export.shared_weights import FILE, SharedWeights, external_initializers  # noqa: E402
from graphprune.testing import (  # noqa: E402
    idefics3_inputs,
    internvl_inputs,
    llava_inputs,
    llava_next_inputs,
    mllama_inputs,
    qwen2_vl_inputs,
    tiny_idefics3,
    tiny_internvl,
    tiny_llava,
    tiny_llava_next,
    tiny_mllama,
    tiny_qwen2_vl,
    tiny_video_llava,
    video_llava_inputs,
)

from .export_sizes import LOADED_ONCE, assert_weights_stored_once, ort_memory, parameter_bytes  # noqa: E402

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

FASTV, TRIM = gp.FastV(k=1, keep=0.5), gp.CrossAttentionTrim(keep=0.5, select="topk")
WIDE = dict(hidden_size=128, intermediate_size=256, vocab_size=16384)  # weights outweigh the graphs (their
# nodes carry the exporter's stack traces: ~0.3-0.4 MB per graph)
# LLaVA big enough that its ~270 MB of weights dominate ONNX Runtime's own memory (activations, arenas)
MEDIUM_LLAVA = dict(hidden_size=1024, intermediate_size=2752, num_layers=4, num_heads=8, num_kv_heads=8)
FAMILIES = {  # builder, method, inputs
    "llava": (functools.partial(tiny_llava, **MEDIUM_LLAVA, vocab_size=8192, seed=2), FASTV, llava_inputs),
    "llava-next": (functools.partial(tiny_llava_next, num_layers=2, **WIDE), FASTV, llava_next_inputs),
    "video-llava": (functools.partial(tiny_video_llava, num_layers=2, **WIDE), FASTV, video_llava_inputs),
    "internvl": (functools.partial(tiny_internvl, num_layers=2, **WIDE), FASTV, internvl_inputs),
    "smolvlm": (functools.partial(tiny_idefics3, version="smolvlm", num_layers=2, **WIDE), FASTV, idefics3_inputs),
    "qwen2-vl": (
        functools.partial(tiny_qwen2_vl, num_layers=2, mrope_section=(4, 6, 6), **WIDE),
        FASTV,
        qwen2_vl_inputs,
    ),
    "mllama": (
        functools.partial(tiny_mllama, num_layers=4, cross_attention_layers=(1, 3), **WIDE),
        TRIM,
        mllama_inputs,
    ),
}
SAMPLES = {
    "llava": [(7, 1, 3)],
    "llava-next": [(3, [(16, 32)], 4), (2, [(32, 32), (20, 12)], 3)],
    "video-llava": [(3, 1, 1, 4), (5, 1, 0, 2)],
    "internvl": [(3, [5], 4), (2, [3, 1], 3)],
    "smolvlm": [(3, [(2, 2)], 4), (2, [(1, 1), (1, 2)], 3)],
    "qwen2-vl": [(3, [(8, 8)], [], 4), (2, [(4, 8)], [(4, 4, 4)], 3)],
    "mllama": [(1, [4, 2], 3), (2, [2], 4)],
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def export(request, tmp_path_factory):
    """``(model, inputs, folder)``: a family's model, optimised, and its export (validated against PyTorch)."""
    build, method, make_inputs = FAMILIES[request.param]
    model = build()
    with gp.optimized(model, method):
        inputs = make_inputs(model, SAMPLES[request.param])
        folder = gp.export.onnx(model, tmp_path_factory.mktemp("export") / request.param, example_inputs=inputs)
        yield model, inputs, folder


def test_every_weight_is_stored_once_and_every_graph_loads_alone(export):
    """The folder takes at most 1.1 x the parameter bytes; prefill and decode point at the same bytes of
    ``weights.bin`` for the decoder; each graph passes ``onnx.checker`` and loads in a plain session."""
    model, inputs, folder = export
    assert gp.export.Manifest.read(folder).weights == FILE
    assert_weights_stored_once(model, folder)
    places = {}
    for graph in gp.export.Manifest.read(folder).graphs:
        path = folder / f"{graph}.onnx"
        onnx.checker.check_model(str(path))  # with the path: external data checked where it lies
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        places[graph] = {
            (location, offset, length) for location, offset, length, *_ in external_initializers(path).values()
        }
        assert {location for location, *_ in places[graph]} <= {FILE}  # masks.onnx: no weights
    assert places["decode"] <= places["prefill"]  # decode's weights are all prefill's (prefill has the ranking's)
    expected = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(gp.export.OrtGenerator(folder).generate(**inputs, max_new_tokens=3), expected)


def test_ort_generator_loads_the_weights_once(export, tmp_path):
    """Peak resident memory of a fresh process running ``OrtGenerator(folder).generate`` (2 new tokens), less
    what it held before creating the sessions (Python, numpy, onnxruntime, torch and graphprune imported), is at
    most 1.25 x (the parameter bytes + the KV cache's bytes at full length, unpruned): the sessions share one
    mapping of ``weights.bin`` (two sessions each loading the decoder take over 2 x). LLaVA only: its weights
    (~270 MB) dominate; the other families' tiny widths would measure ONNX Runtime's fixed costs."""
    model, inputs, folder = export
    if type(model).__name__ != "LlavaForConditionalGeneration":
        pytest.skip("measured on the medium LLaVA")
    memory = ort_memory(folder, inputs, max_new_tokens=2, work=tmp_path)
    text = model.config.text_config
    batch, length = inputs["input_ids"].shape
    head_dim = text.hidden_size // text.num_attention_heads
    kv_bytes = 2 * text.num_hidden_layers * batch * text.num_key_value_heads * head_dim * (length + 2) * 4
    used, allowed = memory["peak"] - memory["before"], LOADED_ONCE * (parameter_bytes(model) + kv_bytes)
    assert used <= allowed, f"OrtGenerator's peak {used / 2**20:.0f} MiB > {allowed / 2**20:.0f} MiB"
    assert memory["tokens"] == model.generate(**inputs, max_new_tokens=2, do_sample=False).tolist()


@pytest.mark.skipif(os.environ.get("GRAPHPRUNE_CI_STAGE") == "lowest-transformers", reason="CI's first stage runs it")
def test_an_export_over_2_gib_loads_and_runs(tmp_path):
    """LLaVA with LLaMA-7B's widths (hidden 4096, MLP 11008, vocab 32000) and 3 layers: 3.5 GB of float32
    weights, prefill.onnx's over 2 GiB. The export validates itself against PyTorch, OrtGenerator's tokens equal
    PyTorch's, the folder stores each weight once."""
    model = tiny_llava(
        hidden_size=4096, intermediate_size=11008, num_layers=3, num_heads=32, num_kv_heads=32, vocab_size=32000
    )
    with gp.optimized(model, FASTV):
        inputs = llava_inputs(model, [(5, 1, 3)])
        folder = gp.export.onnx(model, tmp_path / "big", example_inputs=inputs)
        prefill = external_initializers(folder / "prefill.onnx").values()
        assert sum(entry[2] for entry in prefill) > 2**31  # (location, offset, length, dtype, shape)
        assert_weights_stored_once(model, folder)
        expected = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert torch.equal(gp.export.OrtGenerator(folder).generate(**inputs, max_new_tokens=2), expected)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_equal_tensors_are_written_once_under_a_bar_if_it_takes_over_a_second(tmp_path, monkeypatch):
    """Two initializers with the same content (different names) share one place; a third differs. Writing
    that takes over a second (hashing slowed to 0.6 s a tensor) shows ``graphprune: weights file`` on a
    terminal; a fast one shows nothing."""
    import onnx_ir

    data = np.arange(1024, dtype=np.float32).reshape(32, 32)
    tensors = [onnx.numpy_helper.from_array(array, name) for name, array in (("a", data), ("b", data), ("c", -data))]
    graph = onnx.helper.make_graph([], "g", [], [], initializer=tensors)
    fast, slow = (onnx_ir.from_proto(onnx.helper.make_model(graph)) for _ in range(2))
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with SharedWeights(tmp_path) as weights:
        weights.add(fast)
        assert sys.stderr.getvalue() == ""
        sha256 = shared_weights.hashlib.sha256
        monkeypatch.setattr(shared_weights.hashlib, "sha256", lambda data: time.sleep(0.6) or sha256(data))
        weights.add(slow)
    assert "graphprune: weights file" in sys.stderr.getvalue()
    for model in (fast, slow):
        places = {name: (v.const_value.offset, v.const_value.length) for name, v in model.graph.initializers.items()}
        assert places["a"] == places["b"] != places["c"]
    assert (tmp_path / FILE).stat().st_size == 2 * data.nbytes
