"""Without the graphprune key vLLM is untouched; keep=1.0 gives plain vLLM's tokens; the pruned path is not vacuous."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import LlavaForConditionalGeneration

import graphprune as gp

from .helpers import close, hf_tokens, make_llm, vllm_tokens
from .test_llava import REQUESTS, TEXT_ONLY, checkpoint  # noqa: F401  (module-scoped checkpoint fixture)

ALL = [*REQUESTS, TEXT_ONLY]


@pytest.fixture(scope="module")
def plain_tokens(checkpoint):  # noqa: F811
    llm = make_llm(checkpoint)
    try:
        model_class = llm.apply_model(lambda model: type(model))[0]
        config = llm.llm_engine.vllm_config
        yield vllm_tokens(llm, ALL), model_class, config
    finally:
        close(llm)


def test_plain_vllm_is_untouched(plain_tokens, checkpoint):  # noqa: F811
    from vllm.model_executor.models.llava import LlavaForConditionalGeneration as VllmLlava

    tokens, model_class, config = plain_tokens
    assert model_class is VllmLlava
    assert config.model_config.architecture == "LlavaForConditionalGeneration"
    assert config.scheduler_config.enable_chunked_prefill
    assert tokens == hf_tokens(LlavaForConditionalGeneration, checkpoint, None, ALL)


def test_keep_one_equals_plain_vllm(plain_tokens, checkpoint):  # noqa: F811
    llm = make_llm(checkpoint, {"method": "fastv", "k": 2, "keep": 1.0})
    try:
        assert llm.apply_model(lambda model: type(model).__name__)[0] == "FastVLlava"
        assert vllm_tokens(llm, ALL) == plain_tokens[0]
    finally:
        close(llm)


@pytest.mark.parametrize("k, keep", [(1, 0.25), (2, 0.5), (1, 0.5), (2, 0.25)])
def test_pruning_changes_tokens(plain_tokens, checkpoint, k, keep):  # noqa: F811
    """The equality tests in test_llava.py are not vacuous: FastV's tokens differ from the unpruned model's."""
    pruned = hf_tokens(LlavaForConditionalGeneration, checkpoint, gp.FastV(k=k, keep=keep), REQUESTS)
    assert pruned != plain_tokens[0][: len(REQUESTS)]
