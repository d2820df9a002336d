"""Gemma 3 in vLLM with FastV: refused at engine start, in one line that says why (sliding-window layers and
bidirectional image attention over the kept tokens); without the graphprune key vLLM serves it untouched."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")

from graphprune.testing import tiny_gemma3

from .helpers import engine_config


def test_fastv_on_gemma3_is_refused_at_engine_start_saying_why(tmp_path):
    config = tiny_gemma3(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2).config
    config.architectures = ["Gemma3ForConditionalGeneration"]
    config.save_pretrained(tmp_path)
    expected = (
        "graphprune: FastV in vLLM does not serve Gemma3ForConditionalGeneration: its sliding-window layers >= k would "
        "slide over the kept tokens' compacted KV instead of original positions, and its bidirectional image attention "
        "(vLLM's mm_prefix ranges) is not remapped to the kept image tokens; prune it with graphprune's HF path "
        "(gp.optimize)"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        engine_config(tmp_path, {"method": "fastv", "k": 2, "keep": 0.5})
    assert engine_config(tmp_path).model_config.architecture == "Gemma3ForConditionalGeneration"  # no key: no check
