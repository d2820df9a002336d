"""additional_config["graphprune"] at engine start: bad configs fail with gp.FastV's and gp.DART's messages (PDrop is
refused); safe settings forced; the info line names the method and its settings."""

from __future__ import annotations

import logging
import re

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import LlamaConfig
from vllm.config import CompilationConfig, CompilationMode, CUDAGraphMode

import graphprune as gp
from graphprune.testing import tiny_llava
from graphprune.tiny_checkpoints import save_llava

from .helpers import engine_config


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    model = tiny_llava(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, num_layers=4)
    return save_llava(model, tmp_path_factory.mktemp("llava"))


def fastv_message(**kwargs) -> str:
    with pytest.raises(ValueError) as error:
        gp.FastV(**kwargs).check_layers(4)
    return f"graphprune: {error.value}"


def dart_message(**kwargs) -> str:
    with pytest.raises(ValueError) as error:
        gp.DART(**kwargs).check_layers(4)
    return f"graphprune: {error.value}"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"k": 0}, fastv_message(k=0)),
        ({"k": 4}, fastv_message(k=4)),
        ({"keep": 0.0}, fastv_message(keep=0.0)),
        ({"keep": 1.5}, fastv_message(keep=1.5)),
        ({"query": "first"}, fastv_message(query="first")),
        ({"method": "sparsevlm"}, "graphprune: method must be one of ('fastv', 'dart') in vLLM; got 'sparsevlm'"),
        ({"k": 2, "ratio": 0.5}, "graphprune's FastV takes k, keep, query; got also ['ratio']"),
        ({"method": "pdrop"}, "graphprune: method must be one of ('fastv', 'dart') in vLLM; got 'pdrop'"),
        ({"method": ["fastv"]}, "graphprune: method must be one of ('fastv', 'dart') in vLLM; got ['fastv']"),
        ({"method": "dart", "pivots": 0}, dart_message(pivots=0)),
        ({"method": "dart", "k": 4}, dart_message(k=4)),
        (
            {"method": "dart", "query": "last"},
            "graphprune's DART takes k, keep, pivots, text_pivots; got also ['query']",
        ),
    ],
)
def test_bad_config_fails_at_engine_start_with_fastv_messages(llava, config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        engine_config(llava, {"method": "fastv", **config})


def test_unsupported_architecture_lists_supported(tmp_path):
    llama = LlamaConfig(hidden_size=128, num_attention_heads=4, num_hidden_layers=2, intermediate_size=256)
    llama.architectures = ["LlamaForCausalLM"]
    llama.save_pretrained(tmp_path)
    expected = (
        "graphprune does not support LlamaForCausalLM in vLLM; supported architectures: "
        "Idefics3ForConditionalGeneration, InternVLForConditionalGeneration, LlavaForConditionalGeneration, "
        "LlavaNextForConditionalGeneration, LlavaOnevisionForConditionalGeneration, Qwen2VLForConditionalGeneration, "
        "Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration, "
        "SmolVLMForConditionalGeneration"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        engine_config(tmp_path, {"method": "fastv"})
    assert engine_config(tmp_path).model_config.architecture == "LlamaForCausalLM"  # no key: no check


def test_safe_settings_are_forced_with_a_warning(llava):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("vllm.graphprune")  # under vLLM's logger: its handler and format
    logger.addHandler(handler)
    try:
        config = engine_config(
            llava,
            {"method": "fastv", "k": 2, "keep": 0.5},
            enable_chunked_prefill=True,
            enable_prefix_caching=True,
            enforce_eager=False,
            max_num_batched_tokens=128,
        )
    finally:
        logger.removeHandler(handler)
    assert not config.scheduler_config.enable_chunked_prefill
    scheduler = config.scheduler_config
    assert scheduler.max_num_batched_tokens >= config.model_config.max_model_len
    # the multimodal budgets follow (else the scheduler stops a prompt before an image that does not fit them)
    assert scheduler.max_num_encoder_input_tokens == scheduler.encoder_cache_size == scheduler.max_num_batched_tokens
    assert scheduler.disable_chunked_mm_input
    assert not config.cache_config.enable_prefix_caching
    # compilation stays as plain vLLM has it (CPU: one Dynamo trace, inductor): decode-only steps run compiled
    plain = engine_config(llava, enforce_eager=False)
    assert not config.model_config.enforce_eager
    assert config.compilation_config.mode == plain.compilation_config.mode == CompilationMode.DYNAMO_TRACE_ONCE
    assert config.compilation_config.backend == plain.compilation_config.backend == "inductor"
    assert config.model_config.architecture == "GraphpruneLlavaForConditionalGeneration"
    warned = " ".join(record.getMessage() for record in records if record.levelno == logging.WARNING)
    for setting in ("chunked prefill", "max_num_batched_tokens", "prefix caching"):
        assert setting in warned
    active = [record.getMessage() for record in records if record.levelno == logging.INFO]
    assert "enforce_eager" not in warned
    assert active == [
        "graphprune: FastV active on LlavaForConditionalGeneration: k=2, keep=0.5, query=last (layers 2-3 of 4 "
        "compute and hold KV blocks for every text token and ceil(keep * n_visual) visual tokens per request)"
    ]


@pytest.mark.parametrize(
    "mode, expected",
    [
        (None, CUDAGraphMode.PIECEWISE),  # unset: vLLM's default would add full decode graphs
        (CUDAGraphMode.FULL_DECODE_ONLY, CUDAGraphMode.PIECEWISE),
        (CUDAGraphMode.FULL_AND_PIECEWISE, CUDAGraphMode.PIECEWISE),
        (CUDAGraphMode.FULL, CUDAGraphMode.PIECEWISE),
        (CUDAGraphMode.PIECEWISE, CUDAGraphMode.PIECEWISE),
        (CUDAGraphMode.NONE, CUDAGraphMode.NONE),
    ],
)
def test_no_full_cuda_graphs(mode, expected):
    """A full CUDA graph replays the runner's attention metadata for layers >= k, not the kept tokens' (GPU hosts)."""
    from graphprune.vllm.config import _piecewise_cuda_graphs_only

    compilation = CompilationConfig(cudagraph_mode=mode)
    _piecewise_cuda_graphs_only(compilation)
    assert compilation.cudagraph_mode == expected


def test_without_the_key_settings_are_untouched(llava):
    config = engine_config(llava, enable_chunked_prefill=True, enable_prefix_caching=True, max_num_batched_tokens=128)
    assert config.scheduler_config.enable_chunked_prefill
    assert config.scheduler_config.max_num_batched_tokens == 128
    assert config.cache_config.enable_prefix_caching
    assert config.model_config.architecture == "LlavaForConditionalGeneration"


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"kv_transfer_config": {"kv_connector": "ExampleConnector", "kv_role": "kv_both"}},
            "graphprune: FastV in vLLM does not support KV connectors or KV offloading; leave them off",
        ),
        ({"kv_offloading_size": 1.0}, "graphprune: FastV in vLLM does not support KV connectors or KV offloading"),
        ({"enable_dbo": True}, "graphprune: FastV in vLLM does not support micro-batching (enable_dbo, ubatch_size)"),
        ({"ubatch_size": 2}, "graphprune: FastV in vLLM does not support micro-batching (enable_dbo, ubatch_size)"),
        ({"disable_hybrid_kv_cache_manager": True}, "graphprune: FastV in vLLM needs the hybrid KV cache manager"),
    ],
    ids=["kv-connector", "kv-offloading", "dbo", "ubatch", "no-hybrid-kv-cache-manager"],
)
def test_settings_that_skip_or_split_a_prefill_are_refused(llava, settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        engine_config(llava, {"method": "fastv"}, **settings)


def test_model_runner_v2_is_refused(llava, monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(ValueError, match=re.escape("graphprune: FastV in vLLM needs the V1 model runner")):
        engine_config(llava, {"method": "fastv"})


def test_dart_is_named_in_the_info_line_and_the_refusals(llava):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("vllm.graphprune")
    logger.addHandler(handler)
    try:
        config = engine_config(llava, {"method": "dart", "k": 2, "keep": 0.25, "pivots": 2, "text_pivots": 1})
    finally:
        logger.removeHandler(handler)
    assert config.model_config.architecture == "GraphpruneLlavaForConditionalGeneration"
    assert [record.getMessage() for record in records if record.levelno == logging.INFO] == [
        "graphprune: DART active on LlavaForConditionalGeneration: k=2, keep=0.25, pivots=2, text_pivots=1 (layers "
        "2-3 of 4 compute and hold KV blocks for every text token and ceil(keep * n_visual) visual tokens per request)"
    ]
    with pytest.raises(ValueError, match=re.escape("graphprune: DART in vLLM needs the hybrid KV cache manager")):
        engine_config(llava, {"method": "dart"}, disable_hybrid_kv_cache_manager=True)


def test_a_method_the_family_record_does_not_list_is_refused(llava, monkeypatch):
    from graphprune.vllm import config

    monkeypatch.setitem(config.FITTING, "LlavaForConditionalGeneration", (gp.FastV,))
    with pytest.raises(ValueError, match=re.escape("graphprune: DART does not fit LlavaForConditionalGeneration; its")):
        engine_config(llava, {"method": "dart"})
