"""The Mllama (LLaMA-3.2-Vision) export family with CrossAttentionTrim (arXiv 2504.00557).

``vision.onnx`` (vision model + projector → ``cross_attention_states [B, F, d]``), ``masks.onnx``
(the processor's ``cross_attention_mask [B, T, images, tiles]`` → ``decoder_cross_attention_mask``, the
additive ``[B, 1, T, F]`` mask that the decoder graphs take as ``cross_attention_mask``, and
``full_text_row_masked_out_mask``, as HF's ``_prepare_cross_attention_mask``: a graph, so the host
needs neither the patch count nor the dtype's minimum), ``embed.onnx`` (token embeddings), and the
decoder graphs the runtime runs (``model._graphprune.decoder``): ``prefill.onnx`` with the ranking
and gather nodes inside and the LM head at the last position, and ``decode.onnx``, where the first
cross-attention layer's past holds all F features and every later one's the K' kept ones.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ... import ops
from ...export.decoder_graphs import (
    NEW_TOKENS,
    LogitsAtLast,
    copy_graph,
    generation_positions,
    kv_names,
    model_details,
    unpruned_graphs,
)
from ...export.family import DECODER_KEYS, ExportFamily, as_numpy
from ...export.fastv_family import OPT_TEXT
from ...export.graph_export import GraphExport
from ...export.mllama_vision import MllamaMasks, MllamaVision
from ...methods import n_keep, n_slots
from ...runtime import optimize

IMAGE_INPUTS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")


def _refuse_head_union(method) -> None:
    if method.select != "topk":
        raise ValueError(
            f"CrossAttentionTrim(select={method.select!r}) cannot be exported: its kept-feature count depends on the "
            "scores, so the trimmed layers' shapes are data-dependent, which a fixed-size ONNX graph and TensorRT "
            f"cannot hold; optimize with graphprune.CrossAttentionTrim(keep={method.keep}, select='topk') to export"
        )


def _export_graphs(model: nn.Module, state, example_inputs: dict, max_images: int | None, prune: bool):
    """The graphs of a Mllama export and what the manifest records about the model; see ``export.onnx``."""
    method = state.method
    if prune:
        _refuse_head_union(method)
    if example_inputs.get("pixel_values") is None or example_inputs.get("cross_attention_mask") is None:
        raise ValueError(
            "example_inputs must hold at least one image (pixel_values, aspect_ratio_*, cross_attention_mask)"
        )
    input_ids, attention_mask = example_inputs["input_ids"], example_inputs["attention_mask"]
    pixel_values = example_inputs["pixel_values"]
    ratio_ids, ratio_mask = example_inputs["aspect_ratio_ids"], example_inputs["aspect_ratio_mask"]
    processor_mask = example_inputs["cross_attention_mask"]
    images = pixel_values.shape[1]
    max_images = images if max_images is None else max_images
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < images:
        raise ValueError(
            f"max_images must be an int >= {images} (the image slots of example_inputs); got {max_images!r}"
        )
    layout = state.adapter.layout(model)
    num_layers, cross_layers = layout.num_layers, layout.cross_attention_layers
    tiles, patches = state.adapter.feature_grid(model)
    max_features = max_images * tiles * patches
    vision, masks, embed = MllamaVision(model).eval(), MllamaMasks(model).eval(), model.get_input_embeddings()
    with torch.no_grad():
        states = vision(pixel_values, ratio_ids, ratio_mask)
        cross_mask, row_mask = masks(processor_mask)
        embeds = embed(input_ids)
    positions = generation_positions(attention_mask)
    decoder_inputs = ("inputs_embeds", "attention_mask", "position_ids")
    seq, cross = {0: "batch", 1: "sequence"}, ("cross_attention_mask", "full_text_row_masked_out_mask")

    if prune:
        prefill_graph = state.handler.budget_pass(copy_graph(state.decoder.prefill_graph), max_features)
        decode_graph = state.decoder.decode_graph
        valid = ops.valid_features(cross_mask, row_mask, attention_mask).sum(-1)
        slots = torch.arange(n_slots(method.keep, valid, valid), device=input_ids.device)
        prefill_extra, prefill_args_extra = ("graphprune_slots",), (slots,)
        prefill_out_extra = ("graphprune_keep_index", "graphprune_slot_valid")
    else:
        prefill_graph, decode_graph = unpruned_graphs(model, state)
        prefill_extra, prefill_args_extra, prefill_out_extra = (), (), ()
    trimmed = set(cross_layers[1:]) if prune else set()
    cache_axis = {i: "features" if i in cross_layers else "sequence" for i in range(num_layers)}
    cache_axis |= dict.fromkeys(trimmed, "trimmed_features")
    prefill_module = LogitsAtLast(prefill_graph, model.lm_head, 1 + 2 * num_layers + len(prefill_out_extra))
    prefill_args = (embeds, attention_mask, positions, states, cross_mask, row_mask, *prefill_args_extra)
    with torch.no_grad():
        first = prefill_module(*prefill_args)
    real = attention_mask.bool()
    names = kv_names("present", num_layers)
    prefill = GraphExport(
        "prefill",
        prefill_module,
        prefill_args,
        (*decoder_inputs, "cross_attention_states", *cross, *prefill_extra),
        ("logits", *names, *prefill_out_extra),
        dict.fromkeys(decoder_inputs, seq)
        | {
            "cross_attention_states": {0: "batch", 1: "features"},
            "cross_attention_mask": {0: "batch", 2: "sequence", 3: "features"},
            "full_text_row_masked_out_mask": {0: "batch", 2: "sequence"},
        }
        | ({"graphprune_slots": {0: "trimmed_features"}} if prune else {}),
        {name: real for i, name in enumerate(names) if i // 2 not in cross_layers},
    )
    new_token = (model.config.image_token_index + 1) % embed.num_embeddings
    new_ids = torch.full((input_ids.shape[0], NEW_TOKENS), new_token, device=input_ids.device)
    step_mask = processor_mask[:, -1:].expand(-1, NEW_TOKENS, -1, -1)  # HF generate: new tokens repeat the last row
    with torch.no_grad():
        new_embeds = embed(new_ids)
        step_cross, step_rows = masks(step_mask)
    decode_mask = torch.cat([attention_mask, torch.ones_like(new_ids)], dim=1)
    past_names = kv_names("past", num_layers)
    past_axes = {
        name: {0: "batch", 2: cache_axis[i // 2].replace("sequence", "past")} for i, name in enumerate(past_names)
    }
    decode_args = (new_embeds, decode_mask, generation_positions(decode_mask)[:, -NEW_TOKENS:], step_cross, step_rows)
    decode_args += tuple(first[1 : 1 + 2 * num_layers])
    decode_extra = ("graphprune_cache_index", "graphprune_cache_valid") if prune else ()
    decode_args += tuple(first[-2:]) if prune else ()
    step = {0: "batch", 1: "new_tokens"}
    fresh = torch.cat([real, torch.ones_like(new_ids, dtype=torch.bool)], dim=1)
    decode = GraphExport(
        "decode",
        LogitsAtLast(decode_graph, model.lm_head, 1 + 2 * num_layers),
        decode_args,
        (*decoder_inputs, *cross, *past_names, *decode_extra),
        ("logits", *names),
        {"inputs_embeds": step, "attention_mask": {0: "batch", 1: "total"}, "position_ids": step}
        | {"cross_attention_mask": {0: "batch", 2: "new_tokens", 3: "features"}}
        | {"full_text_row_masked_out_mask": {0: "batch", 2: "new_tokens"}}
        | past_axes
        | dict.fromkeys(decode_extra, {0: "batch", 1: "trimmed_features"}),
        {name: fresh for i, name in enumerate(names) if i // 2 not in cross_layers},
    )
    image_axes = {0: "batch", 1: "images"}
    graphs = [
        GraphExport(
            "vision",
            vision,
            (pixel_values, ratio_ids, ratio_mask),
            ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"),
            ("cross_attention_states",),
            {"pixel_values": image_axes, "aspect_ratio_ids": image_axes, "aspect_ratio_mask": image_axes},
        ),
        GraphExport(
            "masks",
            masks,
            (processor_mask,),
            ("cross_attention_mask",),
            ("decoder_cross_attention_mask", "full_text_row_masked_out_mask"),
            {"cross_attention_mask": {0: "batch", 1: "sequence", 2: "images"}},
        ),
        GraphExport("embed", embed, (input_ids,), ("input_ids",), ("inputs_embeds",), {"input_ids": seq}),
        prefill,
        decode,
    ]
    details = {
        "family": "mllama",
        "model": model_details(
            model, state, cross_attention_layers=list(cross_layers), image_size=model.config.vision_config.image_size
        ),
        "visual_budget": {
            "max_num_tiles": tiles,
            "features_per_tile": patches,
            "max_images": max_images,
            "max_features": max_features,
            "top_k": max(n_keep(method.keep, max_features), 1) if prune else None,
        },
        "first_pruned_layer": cross_layers[1] if prune else None,
    }
    return graphs, details


class MllamaExport(ExportFamily):
    """Mllama (CrossAttentionTrim ``topk``): ``vision``, ``masks``, ``embed``, ``prefill``, ``decode``; the
    budget is ``max_images`` per sample (of ``max_num_tiles`` tiles of ``features_per_tile`` features)."""

    name, demo_names = "mllama", ("mllama",)
    graphs = ("vision", "masks", "embed", "prefill", "decode")
    budget = "max_images"
    model_keys = (*DECODER_KEYS, "cross_attention_layers", "image_size")
    budget_keys = ("max_num_tiles", "features_per_tile", "max_images", "max_features", "top_k")
    export_graphs = staticmethod(_export_graphs)

    @classmethod
    def host_inputs(cls, runner, input_ids, mask, images: dict) -> tuple[dict, dict]:
        """Embeddings, vision features, the decoder's cross-attention masks, the trimmed slots; fixed decode
        inputs: the masks of a new token, whose processor mask row repeats the prompt's last one (as HF
        ``generate`` extends it)."""
        if any(images.get(name) is None for name in IMAGE_INPUTS):
            raise ValueError(
                f"a Mllama export runs prompts with images: pass {', '.join(IMAGE_INPUTS)} as the processor "
                "makes them (text-only prompts skip the cross-attention layers: run the PyTorch model)"
            )
        budget = runner.manifest.visual_budget
        processor_mask = as_numpy(images["cross_attention_mask"], np.int64)
        if processor_mask.shape[2] > budget["max_images"]:
            raise ValueError(
                f"the inputs hold {processor_mask.shape[2]} image slots per sample; this export takes at most "
                f"{budget['max_images']}: export again with a larger max_images"
            )
        vision = {"pixel_values": as_numpy(images["pixel_values"], runner.dtype)}
        vision |= {name: as_numpy(images[name], np.int64) for name in ("aspect_ratio_ids", "aspect_ratio_mask")}
        values = runner.run("embed", {"input_ids": input_ids})
        values |= runner.run("vision", vision)
        values |= cls._masks(runner, processor_mask)
        fixed = cls._masks(runner, processor_mask[:, -1:])
        method = runner.manifest.method
        if method is not None:
            seen = ((processor_mask == 1) & (mask[:, :, None, None] == 1)).any(axis=1)  # [B, images, tiles]
            valid = seen.sum(axis=(1, 2)) * budget["features_per_tile"]
            values["graphprune_slots"] = np.arange(n_slots(method["keep"], valid, valid))
        return values, fixed

    @staticmethod
    def _masks(runner, processor_mask: np.ndarray) -> dict:
        out = runner.run("masks", {"cross_attention_mask": processor_mask})
        return {
            "cross_attention_mask": out["decoder_cross_attention_mask"],
            "full_text_row_masked_out_mask": out["full_text_row_masked_out_mask"],
        }

    @classmethod
    def trt_axes(cls, manifest, max_batch: int, max_text: int, max_new_tokens: int) -> dict:
        """The text axes hold text only; ``features`` is images x tiles x patches (padding tiles included),
        ``trimmed_features`` at most the top-k K."""
        budget = manifest.visual_budget
        per_image = budget["max_num_tiles"] * budget["features_per_tile"]
        trimmed = n_keep(manifest.method["keep"], per_image) if manifest.method else per_image
        opt_text = min(OPT_TEXT, max_text)
        return {
            "batch": (1, 1, max_batch),
            "images": (1, 1, budget["max_images"]),
            "sequence": (1, opt_text, max_text),
            "features": (per_image, per_image, budget["max_features"]),
            "trimmed_features": (1, trimmed, budget["top_k"] or budget["max_features"]),
            "new_tokens": (1, 1, 1),
            "past": (1, opt_text, max_text + max_new_tokens - 1),
            "total": (2, opt_text + 1, max_text + max_new_tokens),
        }

    @classmethod
    def recipe_notes(cls, manifest) -> tuple[str, str, str]:
        budget, method = manifest.visual_budget, manifest.method
        pruning = (
            f"CrossAttentionTrim keep={method['keep']} select={method['select']}: the ranking (TopK with a constant "
            f"K={budget['top_k']}, sorted) and gather nodes sit inside prefill.onnx after the first cross-attention "
            "layer."
            if method
            else "none (an unpruned baseline export)."
        )
        visual = (
            f"at most {budget['max_images']} image(s) of {budget['max_num_tiles']} tiles x "
            f"{budget['features_per_tile']} features per sample"
        )
        cache = (
            f" Cross-attention layers >= {manifest.first_pruned_layer} hold only the kept features;\n"
            "`graphprune_cache_index` / `graphprune_cache_valid` (the prefill's `graphprune_keep_index` /\n"
            "`graphprune_slot_valid`, unchanged while decoding) say which."
            if method
            else ""
        )
        return pruning, visual, cache

    @classmethod
    def demo(cls, method, name: str):
        from .testing import mllama_inputs, tiny_mllama

        model = optimize(tiny_mllama(), method)
        return model, mllama_inputs(model, [(1, [4, 2], 3), (2, [2], 4)])
