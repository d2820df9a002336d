"""The contract of tests/test_processors.py on inputs made by the real HF processors of the families added since:
LLaVA-OneVision, InternVL3, SmolVLM, Idefics3 and Qwen3-VL. The tiny model's config sets the processor's (tile or
crop size, patch and merge sizes, features per tile), so the processor's own token counts must be the adapter's.

Only Idefics3's processor is built as users build it: saved, loaded back with ``AutoProcessor`` (transformers 5.17,
whose ``AutoImageProcessor`` takes its PIL image processor for one that needs torchvision: from its saved parts).
The others name a video processor, which needs torchvision, and transformers checks it even when none is given
(5.17 and 5.23): their image processor (PIL backend) and tokenizer are saved and loaded back separately, and the
prompts are expanded by the processor class itself, built with ``video_processor=None`` (:func:`_without_video`).
``SmolVLMProcessor`` also needs num2words: its prompts are expanded by the function its ``replace_image_token``
calls (``get_image_prompt_string``), with the grids its image processor returns.
"""

from __future__ import annotations

import importlib

import pytest

pytest.importorskip("PIL", reason="the processor tests need Pillow (in the dev extra)")

import transformers  # noqa: E402
from transformers import AutoProcessor, AutoTokenizer  # noqa: E402

from graphprune.tiny_checkpoints import (  # noqa: E402
    idefics3_image_seq_len,
    random_image,
    save_idefics3_processor,
    save_internvl_processor,
    save_llava_onevision_processor,
    save_qwen3_vl_processor,
)

from .test_processors import _CALL, QWEN_IMAGE, assert_contract  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.versions]  # the full tier; and with the lowest transformers (.ci/run)


def _image_processor(path, family: str, name: str):
    """``name`` (a PIL-backend image processor of ``transformers.models.<family>``) loaded from ``path``."""
    module = importlib.import_module(f"transformers.models.{family}.image_processing_pil_{family}")
    return getattr(module, name).from_pretrained(path)


def _without_video(processor_class: type, image_processor, path, **settings):
    """``processor_class`` built without a video processor, from the image processor and the tokenizer saved in
    ``path``: the class check of the missing video processor is the only step skipped."""

    class Processor(processor_class):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name != "video_processor" or argument is not None:
                return super().check_argument_for_proper_class(argument_name, argument)
            return None

    words = AutoTokenizer.from_pretrained(path)
    return Processor(image_processor=image_processor, tokenizer=words, video_processor=None, **settings)


def _llava_onevision(model, path):
    config = model.config
    save_llava_onevision_processor(config, path)
    image_processor = _image_processor(path, "llava_onevision", "LlavaOnevisionImageProcessorPil")
    processor = _without_video(
        transformers.LlavaOnevisionProcessor,
        image_processor,
        path,
        num_image_tokens=(config.vision_config.image_size // config.vision_config.patch_size) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_aspect_ratio=config.vision_aspect_ratio,
    )
    prompts = ["w9 w10 <image> w11 w12", "w20 <image> w30 <image> w31", "w40 w41 w42"]
    images = [[random_image(0, 16, 32)], [random_image(1, 32), random_image(2, 20, 12)], []]
    return processor(text=prompts, images=images, **_CALL)


def _qwen3_vl(model, path):
    save_qwen3_vl_processor(model.config, path)
    image_processor = _image_processor(path, "qwen2_vl", "Qwen2VLImageProcessorPil")
    processor = _without_video(transformers.Qwen3VLProcessor, image_processor, path)
    prompts = [f"w9 {QWEN_IMAGE} w11", f"w20 {QWEN_IMAGE} w30 {QWEN_IMAGE}", "w40 w41 w42"]
    images = [random_image(0, 16), random_image(1, 8, 16), random_image(2, 12, 8)]
    return processor(text=prompts, images=images, **_CALL)


def _internvl(model, path):
    config = model.config
    save_internvl_processor(config, path)
    vision = config.vision_config
    processor = _without_video(
        transformers.InternVLProcessor,
        _image_processor(path, "got_ocr2", "GotOcr2ImageProcessorPil"),
        path,
        image_seq_length=int((vision.image_size[0] // vision.patch_size[0] * config.downsample_ratio) ** 2),
    )
    prompts = ["w9 <IMG_CONTEXT> w11", "w20 <IMG_CONTEXT> w30 <IMG_CONTEXT> w31", "w40 w41 w42"]
    images = [random_image(0, 16, 64), random_image(1, 16), random_image(2, 32, 16)]
    return processor(text=prompts, images=images, **_CALL)


IDEFICS3_PROMPTS = ["w9 <image> w11 w12", "w20 <image> w30 <image> w31", "w40 w41 w42"]


def _idefics3_images():
    return [[random_image(0, 20)], [random_image(1, 16, 32), random_image(2, 32, 8)], []]


def _idefics3(model, path):
    save_idefics3_processor(model.config, path)
    if not getattr(transformers.Idefics3ImageProcessorPil, "is_dummy", False):
        processor = AutoProcessor.from_pretrained(path)
    else:  # transformers 5.17 takes this PIL image processor for one that needs torchvision: the parts, loaded
        processor = transformers.Idefics3Processor(
            _image_processor(path, "idefics3", "Idefics3ImageProcessorPil"),
            AutoTokenizer.from_pretrained(path),
            image_seq_len=idefics3_image_seq_len(model.config),
        )
    return processor(text=IDEFICS3_PROMPTS, images=_idefics3_images(), **_CALL)


def _smolvlm(model, path):
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    save_idefics3_processor(model.config, path)
    image_processor = _image_processor(path, "smolvlm", "SmolVLMImageProcessorPil")
    pixels = image_processor(_idefics3_images(), return_row_col_info=True, return_tensors="pt")
    grids = iter(zip(sum(pixels.pop("rows"), []), sum(pixels.pop("cols"), []), strict=True))
    per_tile = idefics3_image_seq_len(model.config)
    tokens = ("<fake_token_around_image>", "<image>", "<global-img>")

    def expand(prompt: str) -> str:
        head, *rest = prompt.split("<image>")
        return head + "".join(get_image_prompt_string(*next(grids), per_tile, *tokens) + part for part in rest)

    prompts = [expand(prompt) for prompt in IDEFICS3_PROMPTS]
    return {**AutoTokenizer.from_pretrained(path)(prompts, **_CALL), **pixels}


PROCESSORS = {
    "LlavaOnevisionForConditionalGeneration": _llava_onevision,
    "Qwen3VLForConditionalGeneration": _qwen3_vl,
    "InternVLForConditionalGeneration": _internvl,
    "Idefics3ForConditionalGeneration": _idefics3,
    "SmolVLMForConditionalGeneration": _smolvlm,
}


@pytest.mark.parametrize("name", PROCESSORS)
def test_processor_inputs_meet_the_contract(family_models, tmp_path, name):
    model = family_models(name)
    assert_contract(model, dict(PROCESSORS[name](model, tmp_path)))
