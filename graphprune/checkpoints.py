"""Loading a checkpoint, a hub id or a local folder, with its processor, for the command line and the sweep.

The model class comes from the config's ``architectures``, checked against the adapters' registry before any
weight is read; the processor is ``AutoProcessor``'s. Every failure is a one-line ``CheckpointError``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .models import supported_classes

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint graphprune cannot load: not found, an unsupported architecture, or no processor."""


def model_class(config) -> type:
    """The transformers class that ``config.architectures`` names, if graphprune supports it."""
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    supported = [name for name in names if name in supported_classes()]
    if not supported:
        got = ", ".join(names) or f"none (model_type {getattr(config, 'model_type', '?')!r})"
        raise CheckpointError(
            f"graphprune does not support the checkpoint's architecture {got}; supported: "
            + ", ".join(supported_classes())
        )
    return getattr(transformers, supported[0])


def load_config(source: str):
    """The config of the checkpoint at ``source`` (a hub id or a folder); else a one-line ``CheckpointError``."""
    from transformers import AutoConfig

    if not Path(source).is_dir() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise CheckpointError(f"graphprune: no checkpoint folder at {source!r} (nor is it a hub id: owner/name)")
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"graphprune cannot read a model config at {source!r}: {_first_line(error)}") from None


def load(name_or_path: str | Path, dtype: str | torch.dtype | None = None, device: str | None = None):
    """``(model, processor)`` of the checkpoint at ``name_or_path`` (a hub id or a folder), the model in eval
    mode in ``dtype`` (a ``DTYPES`` name or a torch dtype; default: the checkpoint's own) on ``device``."""
    from transformers import AutoProcessor

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise CheckpointError(f"graphprune: dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        dtype = DTYPES[dtype]
    source = str(name_or_path)
    cls = model_class(load_config(source))
    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, ImportError, TypeError) as error:
        raise CheckpointError(
            f"graphprune needs the checkpoint's processor (AutoProcessor) beside its model at {source!r}: "
            f"{_first_line(error)}"
        ) from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise CheckpointError(
            f"graphprune needs a multimodal processor (image processor and tokenizer) at {source!r}; "
            f"AutoProcessor found only a {type(processor).__name__}"
        )
    model = cls.from_pretrained(source, dtype=dtype or "auto")
    if device is not None:
        model.to(device)
    return model.eval(), processor


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def processor_inputs(model, processor, prompts: list[str], images: list[list]) -> dict:
    """A batch as ``processor`` makes it: each prompt after its images (``chat_prompt``), left padding; on
    ``model``'s device, floating tensors in its dtype."""
    texts = [chat_prompt(processor, prompt, len(pictures)) for prompt, pictures in zip(prompts, images, strict=True)]
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        inputs = processor(text=texts, images=images if any(images) else None, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    parameter = next(model.parameters())
    return {
        key: value.to(device=parameter.device, dtype=parameter.dtype if value.is_floating_point() else None)
        if isinstance(value, torch.Tensor)
        else value
        for key, value in inputs.items()
    }


def chat_prompt(processor, text: str, n_images: int) -> str:
    """``text`` after ``n_images`` images, as the processor's chat template writes a user turn (with the
    generation prompt); without a template, or one that does not place images, the images' placeholders then
    ``text``."""
    placeholder = image_placeholder(processor)
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if isinstance(prompt, str) and prompt.count(placeholder) == n_images:
            return prompt
    return " ".join([placeholder] * n_images + [text])


def image_placeholder(processor) -> str:
    """The text that stands for one image in a prompt the processor expands (Qwen's wrapped in its vision
    start and end tokens)."""
    token = processor.image_token
    vocab = processor.tokenizer.get_vocab()
    if token == "<|image_pad|>" and "<|vision_start|>" in vocab:
        return f"<|vision_start|>{token}<|vision_end|>"
    return token
