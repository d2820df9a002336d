"""Under KV pressure vLLM preempts requests and recomputes them as one prefill of prompt + generated tokens.

FastV must rank such a prefill on its prompt part only (layer k-1's row of the last prompt position, or the mean over
the prompt's rows): causal attention makes that the first selection again, so the tokens stay graphprune's HF path's
whatever the load. A KV cache of 20 blocks of 32 positions, in two groups of 2 layers (layers 0-1, layers 2-3: the
kept tokens' group), for 4 requests of up to 133 positions (at least 8 blocks each) forces preemptions.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import LlavaForConditionalGeneration

import graphprune as gp
from graphprune.testing import tiny_llava
from graphprune.tiny_checkpoints import save_llava

from .helpers import close, hf_tokens, make_llm, vllm_tokens
from .test_llava import REQUESTS

MAX_NEW_TOKENS = 96


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_llava(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, vocab_size=128)
    return save_llava(model, tmp_path_factory.mktemp("llava"))


def _record_prefills(model) -> None:
    """A hook on layer k-1's attention that logs the length of every whole-sequence prefill row of each step."""
    from vllm.forward_context import get_forward_context

    attention = model.language_model.model.layers[model.fastv.method.k - 1].self_attn.attn
    model.prefills = []

    def hook(module, args):
        metadata = get_forward_context().attn_metadata[attention.layer_name]
        lengths = metadata.query_start_loc.diff().tolist()
        model.prefills += [
            n for n, seq in zip(lengths, metadata.seq_lens[: len(lengths)].tolist(), strict=True) if n == seq
        ]

    model.recording = attention.register_forward_pre_hook(hook)


def _stop(model) -> list[int]:
    model.recording.remove()
    return model.prefills


@pytest.mark.parametrize("query", ["last", "mean"])
def test_preempted_requests_give_hf_tokens(checkpoint, query):
    method = gp.FastV(k=2, keep=0.5, query=query)
    llm = make_llm(
        checkpoint,
        {"method": "fastv", "k": method.k, "keep": method.keep, "query": query},
        max_model_len=256,
        num_gpu_blocks_override=20,
    )
    try:
        llm.apply_model(_record_prefills)
        tokens = vllm_tokens(llm, REQUESTS, MAX_NEW_TOKENS)
        prefills = llm.apply_model(_stop)[0]
    finally:
        close(llm)
    assert len(prefills) > len(REQUESTS), f"no request was preempted and recomputed (prefill lengths {prefills})"
    assert tokens == hf_tokens(LlavaForConditionalGeneration, checkpoint, method, REQUESTS, MAX_NEW_TOKENS)
