"""Tiny random-weight VLMs saved as hub-layout checkpoint folders with a real processor (vLLM tests, benchmarks).

vLLM loads models from a folder: ``config.json``, safetensors in the hub's key layout (LLaVA's vision tower under
``vision_tower.vision_model.*``, which transformers 5 no longer writes) and the processor files. The tokenizer is a
``tokenizers`` WordLevel model over ``<pad> <s> </s> <image> <video> <|vision_start|> <|vision_end|> ... w8 w9 ...``
(token ``wN`` is id N), split on whitespace, so ``prompt_ids`` and ``prompt_text`` convert both ways.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import PreTrainedTokenizerFast

from .testing import (
    FIRST_TEXT_ID,
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    VIDEO_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
)

SPECIAL = {
    PAD_TOKEN_ID: "<pad>",
    1: "<s>",
    2: "</s>",
    IMAGE_TOKEN_ID: "<image>",
    VIDEO_TOKEN_ID: "<video>",
    VISION_START_TOKEN_ID: "<|vision_start|>",
    VISION_END_TOKEN_ID: "<|vision_end|>",
    7: "<unk>",
}


def tokenizer(
    vocab_size: int,
    image_token: str = "<image>",
    video_token: str = "<video>",
    named: dict[str, str] | None = None,
    vision_bounds: tuple[str, str] = ("<|vision_start|>", "<|vision_end|>"),
) -> PreTrainedTokenizerFast:
    """The WordLevel tokenizer described in the module docstring; the visual placeholders and the tokens around
    an image (``vision_bounds``) get the given names. ``named`` maps tokenizer attributes to special tokens
    (InternVL's ``start_image_token``: ``<img>``, ...); a token not in the vocab yet takes the place of the highest
    ``wN``."""
    start, end = vision_bounds
    names = dict(SPECIAL) | {
        IMAGE_TOKEN_ID: image_token,
        VIDEO_TOKEN_ID: video_token,
        VISION_START_TOKEN_ID: start,
        VISION_END_TOKEN_ID: end,
    }
    added = [token for token in dict.fromkeys((named or {}).values()) if token not in names.values()]
    names |= {vocab_size - len(added) + i: token for i, token in enumerate(added)}
    vocab = {names.get(i, f"w{i}"): i for i in range(vocab_size)}
    model = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=named or {},
    )
    fast.add_special_tokens({"additional_special_tokens": [names[i] for i in sorted(names) if i > 2 and i != 7]})
    return fast


def prompt_text(ids: list[int]) -> str:
    """Text whose tokens are ``ids`` (text ids only, each >= ``FIRST_TEXT_ID``)."""
    assert all(i >= FIRST_TEXT_ID for i in ids)
    return " ".join(f"w{i}" for i in ids)


def save_llava(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_llava`` model and its ``LlavaProcessor`` to ``path`` in the hub layout; returns ``path``."""
    path = Path(path)
    model.save_pretrained(path)
    _rewrite_keys(path, lambda key: key.replace("vision_tower.", "vision_tower.vision_model.", 1))
    save_llava_processor(model.config, path)
    return path


def save_llava_processor(config, path: str | Path) -> None:
    """Save the ``LlavaProcessor`` (CLIP image processor, WordLevel tokenizer) that fits a ``LlavaConfig``."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    vision = config.vision_config
    size = vision.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer(config.text_config.vocab_size),
        patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )
    processor.save_pretrained(path)


def save_llava_next(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_llava_next`` model and its ``LlavaNextProcessor`` to ``path`` in the hub layout."""
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    path = Path(path)
    model.save_pretrained(path)
    _rewrite_keys(path, lambda key: key.replace("vision_tower.", "vision_tower.vision_model.", 1))
    config, size = model.config, model.config.vision_config.image_size
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=config.image_grid_pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer(config.text_config.vocab_size),
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )
    processor.save_pretrained(path)
    return path


def save_qwen2_vl(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_qwen2_vl`` model (either version) and its processor to ``path``; returns ``path``."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    path = Path(path)
    model.save_pretrained(path)
    vision = model.config.vision_config
    patch = vision.patch_size * vision.spatial_merge_size
    sizes = dict(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        min_pixels=patch * patch,
        max_pixels=64 * patch * patch,
    )
    vocab = model.config.text_config.vocab_size
    processor_class = Qwen2_5_VLProcessor if model.config.model_type == "qwen2_5_vl" else Qwen2VLProcessor
    processor = processor_class(
        image_processor=Qwen2VLImageProcessor(**sizes),
        video_processor=Qwen2VLVideoProcessor(**sizes),
        tokenizer=tokenizer(vocab, image_token="<|image_pad|>", video_token="<|video_pad|>"),
        chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )
    processor.save_pretrained(path)
    return path


# InternVL's and Idefics3's processors read these tokenizer attributes (or these default names)
INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
IDEFICS3_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}


def save_llava_onevision(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_llava_onevision`` model and its full ``LlavaOnevisionProcessor`` (with its video processor,
    which needs torchvision: the vLLM venv has it) to ``path`` in the hub layout; returns ``path``."""
    from transformers import LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    path = Path(path)
    model.save_pretrained(path)
    _rewrite_keys(path, lambda key: key.replace("vision_tower.", "vision_tower.vision_model.", 1))
    config, side = model.config, model.config.vision_config.image_size
    size = {"height": side, "width": side}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(size=size, image_grid_pinpoints=config.image_grid_pinpoints),
        tokenizer=tokenizer(config.text_config.vocab_size),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(side // config.vision_config.patch_size) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_aspect_ratio=config.vision_aspect_ratio,
        chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )
    processor.save_pretrained(path)
    return path


def save_llava_onevision_processor(config, path: str | Path) -> None:
    """Save the image processor (PIL backend) and tokenizer of the ``LlavaOnevisionProcessor`` that fits a
    ``LlavaOnevisionConfig``: one crop is the tower's image size, the any-resolution grids are the config's."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    side = config.vision_config.image_size
    size = {"height": side, "width": side}
    LlavaOnevisionImageProcessorPil(size=size, image_grid_pinpoints=config.image_grid_pinpoints).save_pretrained(path)
    tokenizer(config.text_config.vocab_size).save_pretrained(path)


def save_qwen3_vl_processor(config, path: str | Path) -> None:
    """Save the image processor (PIL backend) and tokenizer of the ``Qwen3VLProcessor`` that fits a
    ``Qwen3VLConfig``: its patch, temporal patch and merge sizes; 1 to 64 merged patches per image."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vision = config.vision_config
    patch = vision.patch_size * vision.spatial_merge_size
    Qwen2VLImageProcessorPil(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        size={"shortest_edge": patch * patch, "longest_edge": 64 * patch * patch},
    ).save_pretrained(path)
    tokenizer(config.text_config.vocab_size, "<|image_pad|>", "<|video_pad|>").save_pretrained(path)


def save_qwen3_vl(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_qwen3_vl`` model (dense or MoE: experts in the hub's layout) and its full ``Qwen3VLProcessor``
    (with its video processor, which needs torchvision: the vLLM venv has it) to ``path``; returns ``path``."""
    from transformers import AutoTokenizer, Qwen3VLProcessor, Qwen3VLVideoProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(path)
    if model.config.model_type == "qwen3_vl_moe":  # HF always renormalises the top-k weights; vLLM reads this key
        model.config.text_config.norm_topk_prob = True
    model.save_pretrained(path)
    if model.config.model_type == "qwen3_vl_moe":  # the hub's fused experts: [E, H, 2I] and [E, I, H]
        experts = ("experts.gate_up_proj", "experts.down_proj")
        _rewrite_keys(path, str, lambda key, tensor: tensor.transpose(1, 2) if key.endswith(experts) else tensor)
    save_qwen3_vl_processor(model.config, path)
    vision = model.config.vision_config
    patch = vision.patch_size * vision.spatial_merge_size
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(path),
        video_processor=Qwen3VLVideoProcessor(
            size={"shortest_edge": patch * patch, "longest_edge": 64 * patch * patch},
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            merge_size=vision.spatial_merge_size,
        ),
        chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )
    processor.save_pretrained(path)
    return path


def save_internvl_processor(config, path: str | Path) -> None:
    """Save the image processor (GOT-OCR2's, PIL backend) and tokenizer of the ``InternVLProcessor`` that fits an
    ``InternVLConfig``: tiles of the tower's image size, 1 to 6 tiles (and a thumbnail) per image."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    side = config.vision_config.image_size[0]
    size = {"height": side, "width": side}
    GotOcr2ImageProcessorPil(size=size, crop_to_patches=True, min_patches=1, max_patches=6).save_pretrained(path)
    tokenizer(config.text_config.vocab_size, "<IMG_CONTEXT>", named=INTERNVL_TOKENS).save_pretrained(path)


def save_internvl(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_internvl`` model and its full ``InternVLProcessor`` (with its video processor, which needs
    torchvision: the vLLM venv has it) to ``path``; returns ``path``."""
    from transformers import InternVLProcessor, InternVLVideoProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    path = Path(path)
    model.save_pretrained(path)
    config, vision = model.config, model.config.vision_config
    size = {"height": vision.image_size[0], "width": vision.image_size[1]}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessorPil(size=size, crop_to_patches=True, min_patches=1, max_patches=6),
        tokenizer=tokenizer(config.text_config.vocab_size, "<IMG_CONTEXT>", named=INTERNVL_TOKENS),
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=int((vision.image_size[0] // vision.patch_size[0] * config.downsample_ratio) ** 2),
        chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )
    processor.save_pretrained(path)
    return path


def idefics3_image_seq_len(config) -> int:
    """Features per tile of an Idefics3 / SmolVLM config: the tile's patches, pixel-shuffled by ``scale_factor``."""
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2


def save_idefics3(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_idefics3`` model and its processor to ``path``: ``Idefics3Processor``, or for SmolVLM the full
    ``SmolVLMProcessor`` (its video processor needs torchvision, the processor num2words); returns ``path``."""
    path = Path(path)
    model.save_pretrained(path)
    save_idefics3_processor(model.config, path)
    if model.config.model_type == "smolvlm":
        from transformers import AutoTokenizer, SmolVLMProcessor, SmolVLMVideoProcessor
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

        processor = SmolVLMProcessor(
            image_processor=SmolVLMImageProcessorPil.from_pretrained(path),
            tokenizer=AutoTokenizer.from_pretrained(path),
            video_processor=SmolVLMVideoProcessor(),
            image_seq_len=idefics3_image_seq_len(model.config),
            chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
        )
        processor.save_pretrained(path)
    return path


def save_idefics3_processor(config, path: str | Path) -> None:
    """Save the processor that fits an ``Idefics3Config`` (tiles of the tower's image size, images resized to a
    longest edge of two tiles); for a ``SmolVLMConfig`` only its image processor and tokenizer (transformers
    cannot build ``SmolVLMProcessor`` without torchvision and num2words). PIL backend."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    side = config.vision_config.image_size
    sizes = dict(max_image_size={"longest_edge": side}, size={"longest_edge": 2 * side})
    words = tokenizer(config.text_config.vocab_size, named=IDEFICS3_TOKENS)
    if config.model_type == "smolvlm":
        SmolVLMImageProcessorPil(**sizes).save_pretrained(path)
        words.save_pretrained(path)
        return
    image_processor = Idefics3ImageProcessorPil(**sizes)
    chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    processor = Idefics3Processor(image_processor, words, idefics3_image_seq_len(config), chat_template=chat_template)
    processor.save_pretrained(path)


GEMMA3_TOKENS = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}


def save_gemma3_processor(config, path: str | Path) -> None:
    """Save the ``Gemma3Processor`` (PIL image processor: images resized to the tower's size, no pan-and-scan;
    ``mm_tokens_per_image`` tokens per image) that fits a ``Gemma3Config``; ``<start_of_image>`` and
    ``<end_of_image>`` are the config's ``boi_token_index`` and ``eoi_token_index``."""
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    side = config.vision_config.image_size
    words = tokenizer(
        config.text_config.vocab_size,
        image_token=GEMMA3_TOKENS["image_token"],
        named=GEMMA3_TOKENS,
        vision_bounds=(GEMMA3_TOKENS["boi_token"], GEMMA3_TOKENS["eoi_token"]),
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": side, "width": side})
    chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    processor = Gemma3Processor(image_processor, words, chat_template, image_seq_length=config.mm_tokens_per_image)
    processor.save_pretrained(path)


def _rewrite_keys(path: Path, rename, convert=lambda key, tensor: tensor) -> None:
    """Rename every saved tensor's key (``rename(key)``) and convert it (``convert(key, tensor)``, the old key)."""
    from safetensors import safe_open

    for file in path.glob("*.safetensors"):
        with safe_open(file, "pt") as handle:
            tensors = {rename(key): convert(key, handle.get_tensor(key)) for key in handle.keys()}  # noqa: SIM118
        save_file({key: value.contiguous() for key, value in tensors.items()}, file, metadata={"format": "pt"})


def random_image(seed: int, size: int, width: int | None = None):
    """A random RGB PIL image, ``size`` pixels high and ``width`` (default: ``size``) wide."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, width or size, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())
