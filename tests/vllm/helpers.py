"""Helpers of the vLLM plugin tests: engines, their greedy tokens, and the HF path's tokens to compare with."""

from __future__ import annotations

import gc

import torch

import graphprune as gp

MAX_NEW_TOKENS = 8


def make_llm(path, graphprune: dict | None = None, **overrides):
    """An engine on the checkpoint at ``path``; ``graphprune`` is the additional_config entry (None: plain vLLM)."""
    from vllm import LLM

    settings = dict(
        model=str(path),
        dtype="float32",
        max_model_len=512,
        block_size=32,
        max_num_seqs=8,
        limit_mm_per_prompt={"image": 2},
        seed=0,
    )
    if graphprune is not None:
        settings["additional_config"] = {"graphprune": graphprune}
    return LLM(**(settings | overrides))


def engine_config(path, graphprune: dict | None = None, **settings):
    """The ``VllmConfig`` an engine on ``path`` would start with (where the plugin's config check runs)."""
    from vllm.engine.arg_utils import EngineArgs

    if graphprune is not None:
        settings["additional_config"] = {"graphprune": graphprune}
    return EngineArgs(model=str(path), dtype="float32", max_model_len=512, **settings).create_engine_config()


def close(llm) -> None:
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()


def multimodal_data(images: list, videos: list = ()) -> dict:
    """vLLM's ``multi_modal_data`` of a request: its images and videos (``[frames, H, W, 3]`` arrays), if any."""
    return {name: items for name, items in (("image", images), ("video", list(videos))) if items}


def vllm_tokens(llm, requests: list[tuple], max_new_tokens: int = MAX_NEW_TOKENS) -> list[list[int]]:
    """Greedy new tokens for ``(prompt, images[, videos])`` requests submitted together (one flattened batch)."""
    from vllm import SamplingParams

    prompts = [
        {"prompt": text, "multi_modal_data": multimodal_data(*media)} if any(media) else text
        for text, *media in requests
    ]
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, ignore_eos=True)
    return [list(out.outputs[0].token_ids) for out in llm.generate(prompts, params, use_tqdm=False)]


@torch.no_grad()
def hf_tokens(
    model_class, path, method: gp.FastV | None, requests: list[tuple], max_new_tokens: int = MAX_NEW_TOKENS
) -> list[list[int]]:
    """graphprune's HF path: the same checkpoint in transformers, ``gp.optimize`` (unless None), greedy ``generate``."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = model_class.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    if method is not None:
        gp.optimize(model, method)
    tokens = []
    for text, images, *videos in requests:
        videos = videos[0] if videos else None
        inputs = processor(text=text, images=images or None, videos=videos or None, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        tokens.append(out[0, inputs["input_ids"].shape[1] :].tolist())
    return tokens
