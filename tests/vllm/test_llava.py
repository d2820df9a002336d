"""FastV in vLLM on LLaVA-1.5: greedy tokens equal graphprune's HF path; layers >= k really run on fewer tokens."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import LlavaForConditionalGeneration

import graphprune as gp
from graphprune.testing import tiny_llava
from graphprune.tiny_checkpoints import random_image, save_llava

from .helpers import MAX_NEW_TOKENS, close, hf_tokens, make_llm, vllm_tokens

N_VISUAL = 16  # (32 / 8)² patches per image
# different prompt lengths and images; one request holds two images
REQUESTS = [
    ("w9 w10 <image> w11 w12 w13", [random_image(0, 32)]),
    ("w20 <image> w14 w15 w16 w17 w18 w19", [random_image(1, 32)]),
    ("w30 w31 w32 w33 <image> w40", [random_image(2, 32)]),
    ("w50 <image> w51 <image> w52 w53", [random_image(3, 32), random_image(4, 32)]),
]
TEXT_ONLY = ("w60 w61 w62 w63 w64", [])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_llava(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, vocab_size=128)
    return save_llava(model, tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module", params=[(1, 0.25), (2, 0.5), (1, 0.5), (2, 0.25)], ids=lambda p: f"k{p[0]}-keep{p[1]}")
def pruned(request, checkpoint):
    k, keep = request.param
    llm = make_llm(checkpoint, {"method": "fastv", "k": k, "keep": keep})
    yield llm, gp.FastV(k=k, keep=keep)
    close(llm)


def test_greedy_tokens_equal_hf_path(pruned, checkpoint):
    llm, method = pruned
    requests = [*REQUESTS, TEXT_ONLY]  # a text-only request beside image requests
    assert vllm_tokens(llm, requests) == hf_tokens(LlavaForConditionalGeneration, checkpoint, method, requests)


def _record(model) -> None:
    """Record, per attention call, the rows each layer computes and the sequence lengths it reads (the backend's
    ``impl.forward`` runs at every step, compiled or not), and which layers ran their Python forward (a pre-hook added
    after vLLM compiled the decoder fires only where the decoder runs eagerly)."""
    decoder = model.language_model.model
    model.recorded, model.recording = [], []

    def eager(index):
        return lambda layer, args: model.recorded.append(("eager", index, None))

    def attention_call(index, impl):
        forward = impl.forward

        def recording(layer, query, key, value, kv_cache, metadata, *args, **kwargs):
            model.recorded.append(("rows", index, metadata.num_actual_tokens))
            model.recorded.append(("seq_lens", index, metadata.seq_lens.tolist()))
            return forward(layer, query, key, value, kv_cache, metadata, *args, **kwargs)

        impl.forward = recording
        return lambda: delattr(impl, "forward")

    for index, layer in enumerate(decoder.layers):
        model.recording.append(layer.register_forward_pre_hook(eager(index)).remove)
        model.recording.append(attention_call(index, layer.self_attn.attn.impl))


def _stop(model) -> list:
    for remove in model.recording:
        remove()
    return model.recorded


def test_layers_from_k_compute_kept_tokens_and_decode_attends_kept_positions(pruned):
    llm, method = pruned
    llm.apply_model(_record)
    requests = REQUESTS[:3]
    vllm_tokens(llm, requests)
    recorded = llm.apply_model(_stop)[0]
    prompt_lens = [len(text.split()) - 1 + N_VISUAL for text, _ in requests]
    dropped = N_VISUAL - gp.methods.n_keep(method.keep, N_VISUAL)
    n_layers = 4
    attention = [event for event in recorded if event[0] != "eager"]
    prefill_rows = [value for kind, _, value in attention[: 2 * n_layers] if kind == "rows"]
    assert prefill_rows[: method.k] == [sum(prompt_lens)] * method.k
    assert prefill_rows[method.k :] == [sum(prompt_lens) - 3 * dropped] * (n_layers - method.k)
    decode = attention[-2 * n_layers :]  # the last step: every request decodes its last token
    full_lens = {tuple(value) for kind, index, value in decode if kind == "seq_lens" and index < method.k}
    pruned_lens = {tuple(value) for kind, index, value in decode if kind == "seq_lens" and index >= method.k}
    assert full_lens == {tuple(n + MAX_NEW_TOKENS - 1 for n in prompt_lens)}
    assert pruned_lens == {tuple(n + MAX_NEW_TOKENS - 1 - dropped for n in prompt_lens)}
    assert {value for kind, index, value in decode if kind == "rows"} == {3}
    # the prefill step ran the decoder eagerly (it ranks), the decode steps vLLM's compiled decoder
    assert len(attention) == 2 * n_layers * MAX_NEW_TOKENS
    assert [index for kind, index, _ in recorded if kind == "eager"] == list(range(n_layers))
    eager = [position for position, event in enumerate(recorded) if event[0] == "eager"]
    second_step = [position for position, event in enumerate(recorded) if event[0] != "eager"][2 * n_layers]
    assert max(eager) < second_step


def test_request_arriving_while_others_decode(pruned, checkpoint):
    from vllm import SamplingParams

    llm, method = pruned
    engine = llm.llm_engine
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, ignore_eos=True)

    def add(index: int) -> None:
        text, images = REQUESTS[index]
        engine.add_request(str(index), {"prompt": text, "multi_modal_data": {"image": images}}, params)

    add(0), add(1)
    finished = {}
    steps = 0
    while engine.has_unfinished_requests():
        steps += 1
        if steps == 3:  # requests 0 and 1 are decoding; request 2 prefills beside them
            add(2)
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = list(output.outputs[0].token_ids)
    expected = hf_tokens(LlavaForConditionalGeneration, checkpoint, method, REQUESTS[:3])
    assert [finished[str(i)] for i in range(3)] == expected
