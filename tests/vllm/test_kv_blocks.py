"""KV blocks for the kept tokens only: layers >= k form their own KV cache group(s), sized from the kept count.

Each request holds 3 text and 64 visual tokens; FastV(k=1, keep=0.25) drops 48 of them from layers 1-3. Plain vLLM and
FastV get KV caches of the same bytes (12 blocks of 4 layers; FastV's groups hold 1 layer each, so 48 blocks), one
block of which is vLLM's null block: plain vLLM runs 3 such requests at once (3 blocks each), FastV 7 (3 blocks for
layer 0, 1 for each of layers 1-3).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import LlavaForConditionalGeneration

import graphprune as gp
from graphprune.testing import tiny_llava
from graphprune.tiny_checkpoints import random_image, save_llava

from .helpers import MAX_NEW_TOKENS, close, hf_tokens, make_llm, vllm_tokens

METHOD = gp.FastV(k=1, keep=0.25)
N_DROPPED = 64 - 16
BLOCK_SIZE = 32
PLAIN_BLOCKS = 12
REQUESTS = [(f"w{i} <image> w{i + 1} w{i + 2}", [random_image(10 + i, 64)]) for i in range(8)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_llava(
        image_size=64, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, vocab_size=128
    )
    return save_llava(model, tmp_path_factory.mktemp("llava"))


def _run(llm) -> tuple[dict[str, list[int]], int, list[tuple[int, tuple[int, ...]]]]:
    """Submit every request at once and step the engine: tokens per request, the most requests running at once, and
    (computed tokens, blocks per KV cache group) of every running request after every step."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, ignore_eos=True)
    for index, (text, images) in enumerate(REQUESTS):
        engine.add_request(str(index), {"prompt": text, "multi_modal_data": {"image": images}}, params)
    tokens, most_running, blocks = {}, 0, []
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                tokens[output.request_id] = list(output.outputs[0].token_ids)
        most_running = max(most_running, len(scheduler.running))
        for request in scheduler.running:
            groups = scheduler.kv_cache_manager.get_block_ids(request.request_id)
            blocks.append((request.num_computed_tokens, tuple(len(ids) for ids in groups)))
    return tokens, most_running, blocks


def _kv_bytes(llm) -> int:
    """The KV cache's bytes: every group's tensor aliases one backing allocation of ``size`` bytes."""
    config = llm.llm_engine.engine_core.engine_core.scheduler.kv_cache_config
    [size] = {tensor.size for tensor in config.kv_cache_tensors}
    return size


def _group_specs(llm) -> list[tuple[str, list[str]]]:
    config = llm.llm_engine.engine_core.engine_core.scheduler.kv_cache_config
    return [(type(group.kv_cache_spec).__name__, group.layer_names) for group in config.kv_cache_groups]


def test_kept_tokens_get_their_own_blocks_and_more_requests_run(checkpoint):
    settings = dict(max_model_len=256, limit_mm_per_prompt={"image": 1})
    plain = make_llm(checkpoint, num_gpu_blocks_override=PLAIN_BLOCKS, **settings)
    try:
        plain_bytes = _kv_bytes(plain)
        _, plain_running, _ = _run(plain)
    finally:
        close(plain)
    graphprune = {"method": "fastv", "k": METHOD.k, "keep": METHOD.keep}
    pruned = make_llm(checkpoint, graphprune, num_gpu_blocks_override=4 * PLAIN_BLOCKS, **settings)
    try:
        groups, pruned_bytes = _group_specs(pruned), _kv_bytes(pruned)
        tokens, pruned_running, blocks = _run(pruned)
    finally:
        close(pruned)
    layer_names = [name for _, names in groups for name in names]
    assert [kind for kind, _ in groups] == ["FullAttentionSpec"] + ["KeptTokensSpec"] * 3
    assert [names for _, names in groups][0] == [name for name in layer_names if ".layers.0." in name]
    assert pruned_bytes == plain_bytes
    assert blocks and all(
        groups == (-(-n // BLOCK_SIZE),) + (-(-(n - N_DROPPED) // BLOCK_SIZE),) * 3 for n, groups in blocks
    )
    assert (plain_running, pruned_running) == (3, 7)
    expected = hf_tokens(LlavaForConditionalGeneration, checkpoint, METHOD, REQUESTS)
    assert [tokens[str(index)] for index in range(len(REQUESTS))] == expected


def test_a_scheduler_kept_count_other_than_the_workers_fails_loudly(checkpoint, monkeypatch):
    from graphprune.vllm.kv_cache import KeptTokensSpec

    monkeypatch.setattr(KeptTokensSpec, "n_dropped", lambda spec, prompt_token_ids: 0)  # a scheduler unaware of FastV
    graphprune = {"method": "fastv", "k": METHOD.k, "keep": METHOD.keep}
    llm = make_llm(checkpoint, graphprune, max_model_len=256, limit_mm_per_prompt={"image": 1})
    try:
        with pytest.raises(Exception) as error:
            vllm_tokens(llm, REQUESTS[:1])
    finally:
        close(llm)
    message = "".join(str(cause) for cause in (error.value, error.value.__cause__, error.value.__context__))
    assert "graphprune: layers >= k need [1] KV blocks per request this step, the scheduler gave [3]" in message
