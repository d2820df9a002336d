"""The demo: optimise a small LLaVA-shaped model with FastV and show what was pruned and what it saved."""

from __future__ import annotations

import statistics
import time

import torch

from . import FastV, explain, optimize, restore
from .reference import fastv_reference_generate
from .tiny import image_tokens_per_image, llava_inputs, tiny_llava


def _prefill_ms(model, inputs, repeats: int) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first run warms up
            start = time.perf_counter()
            model(**inputs, logits_to_keep=1)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[1:])


def run(k: int = 2, keep: float = 0.5, query: str = "last", new_tokens: int = 12, repeats: int = 5) -> bool:
    """Print the demo; True if the pruned model's greedy tokens equal the eager reference's."""
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    model = tiny_llava(
        hidden_size=512,
        intermediate_size=1376,
        num_layers=8,
        num_heads=8,
        num_kv_heads=8,
        vocab_size=1024,
        image_size=192,
        patch_size=8,
    )
    inputs = llava_inputs(model, [(20, 1, 40), (8, 1, 16)])
    text = model.config.text_config
    print(
        f"model: LlavaForConditionalGeneration (random weights), Llama decoder {text.num_hidden_layers} layers, "
        f"hidden {text.hidden_size}; {image_tokens_per_image(model)} visual tokens per image; "
        f"batch of {inputs['input_ids'].shape[0]}, left-padded to {inputs['input_ids'].shape[1]} tokens"
    )
    method = FastV(k=k, keep=keep, query=query)
    before_ms = _prefill_ms(model, inputs, repeats)
    expected = fastv_reference_generate(model, method, **inputs, max_new_tokens=new_tokens)

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
    print(f"  {new_tokens} greedy tokens per sample agree with the eager FastV reference: {'yes' if agree else 'NO'}")
    print("restored: the model is unmodified again")
    return agree
