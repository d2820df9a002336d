"""DART in vLLM on LLaVA-1.5, Qwen2-VL and Qwen3-VL: greedy tokens equal graphprune's HF path (LLaVA: and its eager
reference) for a batch of requests (prompts ending with a visual token, a text-only request) and under preemption, and
layers >= k run on the positions the HF path keeps."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import AutoProcessor, LlavaForConditionalGeneration

import graphprune as gp
from graphprune.reference import dart_reference_generate
from graphprune.testing import tiny_llava
from graphprune.tiny_checkpoints import save_llava

from .helpers import MAX_NEW_TOKENS, close, hf_tokens, make_llm, vllm_tokens
from .test_last_position import REQUESTS as ENDING_VISUAL
from .test_llava import REQUESTS, TEXT_ONLY

IMAGE_REQUESTS = [*REQUESTS, *ENDING_VISUAL]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_llava(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, vocab_size=128)
    return save_llava(model, tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    return LlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()


# the second: fewer pivots, one text pivot, a keep that leaves fewer kept visual tokens than the first's pivots
@pytest.fixture(
    scope="module",
    params=[gp.DART(k=2, keep=0.5), gp.DART(k=1, keep=0.25, pivots=2, text_pivots=1)],
    ids=lambda method: f"k{method.k}-keep{method.keep}-pivots{method.pivots}+{method.text_pivots}",
)
def pruned(request, checkpoint):
    method = request.param
    llm = make_llm(checkpoint, {"method": "dart", **asdict(method)})
    yield llm, method
    close(llm)


@torch.no_grad()
def test_greedy_tokens_equal_hf_path_and_reference(pruned, checkpoint, hf_model):
    llm, method = pruned
    requests = [*IMAGE_REQUESTS, TEXT_ONLY]  # one flattened batch, a text-only request among them
    tokens = vllm_tokens(llm, requests)
    expected = hf_tokens(LlavaForConditionalGeneration, checkpoint, method, requests)
    assert expected[:-1] != hf_tokens(LlavaForConditionalGeneration, checkpoint, None, requests[:-1])  # pruning shows
    assert tokens == expected
    processor = AutoProcessor.from_pretrained(checkpoint)
    for (text, images), request_tokens in zip(IMAGE_REQUESTS, tokens, strict=False):
        inputs = processor(text=text, images=images, return_tensors="pt")
        ids = dart_reference_generate(hf_model, method, **inputs, max_new_tokens=MAX_NEW_TOKENS)
        assert ids[0, inputs["input_ids"].shape[1] :].tolist() == request_tokens, text


def _record_kept_rows(model) -> None:
    """A hook on layer k, after graphprune's: the rows of the flattened batch that layers >= k compute per step."""
    model.kept_rows = []
    fastv = model.fastv

    def hook(module, args):
        model.kept_rows.append(None if fastv.plan is None else fastv.plan.index.tolist())

    model.recording = model.language_model.model.layers[fastv.method.k].register_forward_pre_hook(hook)


def _stop(model) -> list:
    model.recording.remove()
    return model.kept_rows


@torch.no_grad()
def test_layers_from_k_run_on_the_hf_paths_kept_positions(pruned, checkpoint, hf_model):
    """Each prompt alone: its prefill step's kept rows are its text positions and the visual positions that
    ``gp.explain`` reports on the HF path (not FastV's, whose scores differ)."""
    llm, method = pruned
    processor = AutoProcessor.from_pretrained(checkpoint)
    with gp.optimized(hf_model, method):
        for text, images in IMAGE_REQUESTS:
            llm.apply_model(_record_kept_rows)
            vllm_tokens(llm, [(text, images)], max_new_tokens=1)
            [kept_rows] = llm.apply_model(_stop)[0]
            inputs = processor(text=text, images=images, return_tensors="pt")
            visual = inputs["input_ids"][0] == hf_model.config.image_token_index
            kept_visual = gp.explain(hf_model, **inputs).kept[0].tolist()
            assert kept_rows == sorted((~visual).nonzero().flatten().tolist() + kept_visual), text


@pytest.fixture(
    scope="module", params=[gp.DART(k=2, keep=0.5), gp.DART(k=1, keep=0.25, pivots=2, text_pivots=1)], ids=str
)
def qwen2_vl(request, tmp_path_factory):
    from graphprune.testing import tiny_qwen2_vl
    from graphprune.tiny_checkpoints import save_qwen2_vl

    model = tiny_qwen2_vl(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, mrope_section=(4, 6, 6))
    path = save_qwen2_vl(model, tmp_path_factory.mktemp("qwen2_vl"))
    llm = make_llm(path, {"method": "dart", **asdict(request.param)})
    yield llm, path, request.param
    close(llm)


def test_qwen2_vl_greedy_tokens_equal_hf_path(qwen2_vl):
    """M-RoPE: layers >= k get all three position rows of the kept tokens, as for FastV."""
    from transformers import Qwen2VLForConditionalGeneration

    from .test_qwen2_vl import REQUESTS as QWEN2_VL_REQUESTS

    llm, path, method = qwen2_vl
    expected = hf_tokens(Qwen2VLForConditionalGeneration, path, method, QWEN2_VL_REQUESTS)
    assert expected[:3] != hf_tokens(Qwen2VLForConditionalGeneration, path, None, QWEN2_VL_REQUESTS[:3])
    assert vllm_tokens(llm, QWEN2_VL_REQUESTS) == expected


def test_preempted_requests_give_hf_tokens(checkpoint):
    """Under KV pressure (``test_preemption``'s setting) a recomputed request is ranked on its prompt part: DART's
    first selection again, so the tokens stay the HF path's."""
    from . import test_preemption as preemption

    method = gp.DART(k=2, keep=0.5)
    llm = make_llm(checkpoint, {"method": "dart", **asdict(method)}, max_model_len=256, num_gpu_blocks_override=20)
    try:
        llm.apply_model(preemption._record_prefills)
        tokens = vllm_tokens(llm, REQUESTS, preemption.MAX_NEW_TOKENS)
        prefills = llm.apply_model(preemption._stop)[0]
    finally:
        close(llm)
    assert len(prefills) > len(REQUESTS), f"no request was preempted and recomputed (prefill lengths {prefills})"
    expected = hf_tokens(LlavaForConditionalGeneration, checkpoint, method, REQUESTS, preemption.MAX_NEW_TOKENS)
    assert tokens == expected


def test_qwen3_vl_greedy_tokens_equal_hf_path(tmp_path):
    """DeepStack: the hidden states entering layer k hold the level added after layer k-1 (k=2: inside levels 0-2),
    as on the HF path."""
    from transformers import Qwen3VLForConditionalGeneration

    from graphprune.testing import tiny_qwen3_vl
    from graphprune.tiny_checkpoints import save_qwen3_vl

    from .test_qwen3_vl import REQUESTS as QWEN3_VL_REQUESTS

    method = gp.DART(k=2, keep=0.5, pivots=2, text_pivots=2)
    model = tiny_qwen3_vl(hidden_size=128, intermediate_size=192, num_heads=4, num_kv_heads=2, mrope_section=(6, 5, 5))
    path = save_qwen3_vl(model, tmp_path)
    expected = hf_tokens(Qwen3VLForConditionalGeneration, path, method, QWEN3_VL_REQUESTS)
    assert expected[:3] != hf_tokens(Qwen3VLForConditionalGeneration, path, None, QWEN3_VL_REQUESTS[:3])
    llm = make_llm(path, {"method": "dart", **asdict(method)}, limit_mm_per_prompt={"image": 2, "video": 0})
    try:
        assert vllm_tokens(llm, QWEN3_VL_REQUESTS) == expected
    finally:
        close(llm)
