"""The demo: optimise a small LLaVA-shaped model with FastV (or a small Mllama with CrossAttentionTrim) and
show what was pruned, what it saved and that the outputs agree with graphprune's eager reference."""

from __future__ import annotations

import math
import statistics
import time

import torch

from .explain import explain
from .methods import CrossAttentionTrim, FastV
from .reference import cross_attention_trim_reference, fastv_reference_generate, trimmed_mask_mode
from .runtime import optimize, restore
from .testing import features_per_tile, image_tokens_per_image, llava_inputs, mllama_inputs, tiny_llava, tiny_mllama

# the demo models' sizes (the command line checks its arguments against them before building a model)
LLAVA = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_layers=8,
    num_heads=8,
    num_kv_heads=8,
    vocab_size=1024,
    image_size=192,
    patch_size=8,
)
MLLAMA = dict(
    hidden_size=512,
    intermediate_size=1792,
    num_layers=10,
    cross_attention_layers=(2, 5, 8),
    num_heads=8,
    num_kv_heads=2,
    vocab_size=1024,
    image_size=448,
    patch_size=14,
)


def _prefill_ms(model, inputs, repeats: int) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first run warms up
            start = time.perf_counter()
            model(**inputs, logits_to_keep=1)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[1:])


def run(method: FastV, new_tokens: int = 12, repeats: int = 5) -> bool:
    """The demo on a small LLaVA with FastV; True if the greedy tokens equal the eager reference's."""
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    model = tiny_llava(**LLAVA)
    inputs = llava_inputs(model, [(20, 1, 40), (8, 1, 16)])
    text = model.config.text_config
    print(
        f"model: LlavaForConditionalGeneration (random weights), Llama decoder {text.num_hidden_layers} layers, "
        f"hidden {text.hidden_size}; {image_tokens_per_image(model)} visual tokens per image; "
        f"batch of {inputs['input_ids'].shape[0]}, left-padded to {inputs['input_ids'].shape[1]} tokens"
    )
    expected = fastv_reference_generate(model, method, **inputs, max_new_tokens=new_tokens)
    return _optimize_and_compare(model, method, inputs, expected, new_tokens, repeats, "eager FastV reference")


def run_mllama(method: CrossAttentionTrim, new_tokens: int = 12, repeats: int = 5) -> bool:
    """The demo on a small Mllama with CrossAttentionTrim; True if the greedy tokens equal the reference's."""
    model = tiny_mllama(**MLLAMA)
    inputs = mllama_inputs(model, [(1, [4], 40), (3, [2], 24)])
    text = model.config.text_config
    print(
        f"model: MllamaForConditionalGeneration (random weights), {text.num_hidden_layers} decoder layers with "
        f"cross-attention at {text.cross_attention_layers}, hidden {text.hidden_size}; {features_per_tile(model)} "
        f"features per tile; images of 4 and 2 tiles, left-padded to {inputs['input_ids'].shape[1]} tokens"
    )
    if method.select == "head_union":
        print(
            "note: the heads of a random model disagree, so head_union (the union of per-head top-k) keeps nearly "
            "every feature; trained checkpoints keep about half (arXiv 2504.00557). --select topk keeps ceil(keep*N)."
        )
    reference = cross_attention_trim_reference(model, method, **inputs)
    with trimmed_mask_mode(model, reference.kept), torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return _optimize_and_compare(model, method, inputs, expected, new_tokens, repeats, "mask-mode reference")


CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def explain_image(image_path: str, model_name: str, method, out: str) -> None:
    """``explain`` on a demo model (random weights) given the image at ``image_path``, printed, and its picture saved
    at ``out``. The image is made the model's input as CLIP's and Mllama's processors do it, in short: LLaVA: the
    shorter side resized (bicubic) to the tower's size and the centre cropped square; Mllama: resized to the tile
    grid (of those the model supports) nearest its aspect ratio and cut into tiles; then scaled to [0, 1] and
    normalised with CLIP's mean and standard deviation."""
    from PIL import Image

    image = Image.open(image_path).convert("RGB")
    if model_name == "mllama":
        model = tiny_mllama(**MLLAMA)
        grid, pixels = _tiles(image, model.config.vision_config)
        inputs = mllama_inputs(model, [(1, [len(pixels)], 24)])
        inputs["pixel_values"][0, 0, : len(pixels)] = pixels
        inputs["aspect_ratio_ids"][0, 0] = model.config.vision_config.supported_aspect_ratios.index(grid) + 1
    else:
        model = tiny_llava(**LLAVA)
        side = model.config.vision_config.image_size
        scale = side / min(image.size)
        image = image.resize(
            (max(side, round(image.width * scale)), max(side, round(image.height * scale))), Image.Resampling.BICUBIC
        )
        left, top = (image.width - side) // 2, (image.height - side) // 2
        inputs = llava_inputs(model, [(8, 1, 16)])
        inputs["pixel_values"] = _normalised(image.crop((left, top, left + side, top + side)))[None]
    optimize(model, method)
    report = explain(model, **inputs)
    print(report)
    report.plot(out)
    print(f"saved {out}")


def _tiles(image, vision) -> tuple[list[int], torch.Tensor]:
    """The supported ``[rows, cols]`` tile grid nearest the image's aspect ratio (then: the most tiles), and the
    image resized to it, as ``[rows * cols, 3, side, side]`` tiles, row-major."""
    from PIL.Image import Resampling

    aspect = image.width / image.height
    grid = min(vision.supported_aspect_ratios, key=lambda g: (abs(math.log(g[1] / g[0] / aspect)), -g[0] * g[1]))
    side = vision.image_size
    pixels = _normalised(image.resize((grid[1] * side, grid[0] * side), Resampling.BICUBIC))
    return grid, pixels.view(3, grid[0], side, grid[1], side).permute(1, 3, 0, 2, 4).reshape(-1, 3, side, side)


def _normalised(image) -> torch.Tensor:
    pixels = torch.tensor(list(image.getdata()), dtype=torch.float32).view(image.height, image.width, 3) / 255
    return ((pixels - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).permute(2, 0, 1)


def _optimize_and_compare(model, method, inputs, expected, new_tokens: int, repeats: int, reference: str) -> bool:
    before_ms = _prefill_ms(model, inputs, repeats)
    start = time.perf_counter()
    optimize(model, method)
    print(f"optimize: captured and rewrote the decoder graphs in {time.perf_counter() - start:.1f} s")
    report = explain(model, **inputs)
    print(report)
    after_ms = _prefill_ms(model, inputs, repeats)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    restore(model)

    print(
        f"  prefill (median of {repeats}, CPU): {before_ms:.1f} ms -> {after_ms:.1f} ms ({after_ms / before_ms:.2f}x)"
    )
    agree = torch.equal(generated, expected)
    print(f"  {new_tokens} greedy tokens per sample agree with the {reference}: {'yes' if agree else 'NO'}")
    print("restored: the model is unmodified again")
    return agree
