"""The contract on inputs made by each family's real HF processor, as users call it: a WordLevel tokenizer built
with ``tokenizers`` (``graphprune.tiny_checkpoints.tokenizer``), the family's image processor (the PIL backend:
no torchvision), saved with ``save_pretrained`` and loaded back with ``AutoProcessor``; left padding and images of
different sizes in one batch (and a text-only prompt, except for Mllama). keep=1 equals the unmodified model
exactly; the pass equals the reference on kept sets, last logits and greedy tokens.

Qwen2-VL and Qwen2.5-VL: transformers (5.23) cannot build their processor without torchvision (its video
processor is checked even when none is given), so where torchvision is missing their inputs come from the same
image processor and tokenizer, saved and loaded with ``Qwen2VLImageProcessorPil`` / ``AutoTokenizer``, with each
``<|image_pad|>`` repeated and ``mm_token_type_ids`` made as the processor makes them. Video-LLaVA is not
here: its processor needs a video processor, which needs torchvision.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import replace

import pytest
import torch

import graphprune as gp
from graphprune import optimized

from .helpers import FAMILIES, LOGITS_RTOL, assert_clear_cut, reference_run, rel_error, visual_units

pytest.importorskip("PIL", reason="the processor tests need Pillow (in the dev extra)")

from transformers import AutoProcessor, AutoTokenizer  # noqa: E402

from graphprune.tiny_checkpoints import random_image, save_llava_next, save_llava_processor, tokenizer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.versions]  # the full tier; and with the lowest transformers (.ci/run)

NEW_TOKENS = 5
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def _llava(model, path):
    save_llava_processor(model.config, path)
    prompts = ["w9 w10 <image> w11 w12", "w20 <image> w30 <image> w31 w32", "w40 w41 w42"]
    return AutoProcessor.from_pretrained(path)(
        text=prompts, images=[random_image(0, 40), random_image(1, 24, 50), random_image(2, 32)], **_CALL
    )


def _llava_next(model, path):
    save_llava_next(model, path)
    prompts = ["w9 w10 <image> w11 w12", "w20 <image> w30 <image> w31", "w40 w41 w42"]
    return AutoProcessor.from_pretrained(path)(
        text=prompts, images=[random_image(0, 16, 32), random_image(1, 32), random_image(2, 20, 12)], **_CALL
    )


def _mllama(model, path):
    from transformers import MllamaImageProcessor, MllamaProcessor

    vision = model.config.vision_config
    image_processor = MllamaImageProcessor(
        size={"height": vision.image_size, "width": vision.image_size}, max_image_tiles=vision.max_num_tiles
    )
    words = tokenizer(model.config.text_config.vocab_size, image_token="<|image|>")
    MllamaProcessor(image_processor, words, chat_template=CHAT_TEMPLATE).save_pretrained(path)
    side = vision.image_size
    prompts = ["w9 <|image|> w11 w12", "<|image|> w30 w31 w40 w41 w50", "w60 <|image|> w61"]
    images = [[random_image(10, side, 4 * side)], [random_image(11, side, 2 * side)], [random_image(12, side)]]
    return AutoProcessor.from_pretrained(path)(text=prompts, images=images, **_CALL)


def _qwen2_vl(model, path):
    from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil

    vision = model.config.vision_config
    patch = vision.patch_size * vision.spatial_merge_size
    Qwen2VLImageProcessor(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        min_pixels=patch * patch,
        max_pixels=64 * patch * patch,
    ).save_pretrained(path)
    tokenizer(model.config.text_config.vocab_size, "<|image_pad|>", "<|video_pad|>").save_pretrained(path)
    prompts = [f"w9 {QWEN_IMAGE} w11", f"w20 {QWEN_IMAGE} w30 {QWEN_IMAGE}", "w40 w41 w42"]
    images = [random_image(0, 16), random_image(1, 8, 16), random_image(2, 12, 8)]
    if importlib.util.find_spec("torchvision") is not None:
        return AutoProcessor.from_pretrained(path)(text=prompts, images=images, **_CALL)
    # the PIL image processor, read from the saved folder (AutoImageProcessor needs torchvision in transformers 5.17)
    pixels = Qwen2VLImageProcessorPil.from_pretrained(path)(images=images, return_tensors="pt")
    counts = iter(math.prod(grid) // vision.spatial_merge_size**2 for grid in pixels["image_grid_thw"].tolist())
    prompts = [_expand(prompt, counts) for prompt in prompts]
    words = AutoTokenizer.from_pretrained(path)
    text = words(prompts, **_CALL)
    mm_token_type_ids = (text["input_ids"] == words.convert_tokens_to_ids("<|image_pad|>")).long()  # 1: image
    return {**text, "mm_token_type_ids": mm_token_type_ids, **pixels}


def _expand(prompt: str, counts) -> str:
    """The prompt with each ``<|image_pad|>`` repeated ``next(counts)`` times, as Qwen2-VL's processor does."""
    head, *rest = prompt.split("<|image_pad|>")
    return head + "".join("<|image_pad|>" * next(counts) + part for part in rest)


_CALL = dict(return_tensors="pt", padding=True, padding_side="left")
PROCESSORS = {
    "LlavaForConditionalGeneration": _llava,
    "LlavaNextForConditionalGeneration": _llava_next,
    "MllamaForConditionalGeneration": _mllama,
    "Qwen2VLForConditionalGeneration": _qwen2_vl,
    "Qwen2_5_VLForConditionalGeneration": _qwen2_vl,
}


@pytest.mark.parametrize("name", PROCESSORS)
def test_processor_inputs_meet_the_contract(family_models, tmp_path, name):
    model = family_models(name)
    assert_contract(model, dict(PROCESSORS[name](model, tmp_path)))


@torch.no_grad()
def assert_contract(model, inputs: dict) -> None:
    """On a left-padded batch with different visual counts: keep=1 equals unmodified exactly; the pass equals the
    reference on kept sets, last logits and greedy tokens."""
    units = [len(u) for u in visual_units(model, inputs)]
    assert len(set(units)) == len(units), f"visual counts {units}"
    assert not inputs["attention_mask"][:, -1].eq(0).any(), "left padding expected"
    method = FAMILIES[type(model).__name__].variants[0]
    plain = model(**inputs).logits
    plain_ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    with optimized(model, replace(method, keep=1.0)):
        assert torch.equal(model(**inputs).logits, plain)
        assert torch.equal(model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False), plain_ids)
    expected = reference_run(model, method, inputs, NEW_TOKENS)
    assert_clear_cut(expected.reference, method)
    with optimized(model, method):
        logits = model(**inputs).logits[:, -1]
        report = gp.explain(model, **inputs)
        ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert [k.tolist() for k in report.kept] == [k.tolist() for k in expected.reference.kept]
    assert not torch.equal(logits, plain[:, -1]), "nothing was pruned"
    assert rel_error(logits, expected.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, expected.ids)
