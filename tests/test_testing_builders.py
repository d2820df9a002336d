"""The tiny builders share one decoder description (``graphprune.testing.TinyDecoder``): every builder takes its
keywords, and misuse is a one-line graphprune error raised before anything is built."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from graphprune import testing

BUILDERS = {
    "llava": testing.tiny_llava,
    "llava_next": testing.tiny_llava_next,
    "video_llava": testing.tiny_video_llava,
    "qwen2_vl": testing.tiny_qwen2_vl,
    "qwen3_vl": testing.tiny_qwen3_vl,
    "llava_onevision": testing.tiny_llava_onevision,
    "internvl": testing.tiny_internvl,
    "idefics3": testing.tiny_idefics3,
    "mllama": functools.partial(testing.tiny_mllama, cross_attention_layers=(1,)),
    "gemma3": testing.tiny_gemma3,
}
SHARED = dict(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2, num_kv_heads=1, vocab_size=64)
SHARED |= dict(attn_implementation="eager", dtype=torch.bfloat16, device="cpu", seed=1, qk_gain=1.5)


def one_line_graphprune_error(info: pytest.ExceptionInfo, *names: str) -> None:
    message = str(info.value)
    assert message.startswith("graphprune") and "\n" not in message, message
    assert all(name in message for name in names), message


@pytest.mark.parametrize("family", BUILDERS)
def test_every_builder_takes_the_shared_decoder_keywords(family):
    assert set(SHARED) == {field.name for field in dataclasses.fields(testing.TinyDecoder)}
    model = BUILDERS[family](**SHARED)
    text = model.config.get_text_config(decoder=True)
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (32, 2, 64)
    assert (text.num_attention_heads, text.num_key_value_heads) == (2, 1)
    assert model.config._attn_implementation == "eager"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training


@pytest.mark.parametrize("family", BUILDERS)
def test_an_unknown_keyword_is_named(family):
    with pytest.raises(TypeError) as info:
        BUILDERS[family](hiden_size=32)
    one_line_graphprune_error(info, "hiden_size", "hidden_size")


@pytest.mark.parametrize("family", BUILDERS)
@pytest.mark.parametrize(
    "shape", [dict(num_heads=3), dict(num_kv_heads=3), dict(num_layers=0)], ids=["heads", "kv_heads", "layers"]
)
def test_an_impossible_shape_is_refused(family, shape):
    with pytest.raises(ValueError) as info:
        BUILDERS[family](**shape)
    one_line_graphprune_error(info, *shape)


@pytest.mark.parametrize("builder", [testing.tiny_qwen2_vl, testing.tiny_qwen3_vl])
def test_an_mrope_section_off_the_head_dim_is_refused(builder):
    with pytest.raises(ValueError) as info:
        builder(mrope_section=(2, 2, 2))
    one_line_graphprune_error(info, "mrope_section", "16")


@pytest.mark.parametrize("builder", [testing.tiny_qwen2_vl, testing.tiny_idefics3])
def test_an_unknown_version_is_refused(builder):
    with pytest.raises(ValueError) as info:
        builder(version="3")
    one_line_graphprune_error(info, "version", "'3'")


def test_gemma3_lays_out_a_global_layer_every_global_every_layers():
    model = testing.tiny_gemma3(num_layers=6, global_every=3, head_dim=8)
    text = model.config.text_config
    assert text.layer_types == ["sliding_attention", "sliding_attention", "full_attention"] * 2
    assert text.head_dim == text.query_pre_attn_scalar == 8
    with pytest.raises(ValueError) as info:
        testing.tiny_gemma3(global_every=0)
    one_line_graphprune_error(info, "global_every")
