"""The files of a Mllama (LLaMA-3.2-Vision) export with CrossAttentionTrim (arXiv 2504.00557).

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

import torch
from torch import nn

from .. import ops
from ..methods import n_keep, n_slots
from ..passes import cross_attention_budget
from .decoder_graphs import NEW_TOKENS, LogitsAtLast, copy_graph, generation_positions, kv_names, unpruned_graphs
from .graph_export import GraphExport


class _Vision(nn.Module):
    """Mllama's vision model and projector: ``(pixel_values, aspect_ratio_ids, aspect_ratio_mask) -> [B, F, d]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.model

    def forward(self, pixel_values, aspect_ratio_ids, aspect_ratio_mask):
        states = self.model.vision_model(
            pixel_values=pixel_values, aspect_ratio_ids=aspect_ratio_ids, aspect_ratio_mask=aspect_ratio_mask
        ).last_hidden_state
        states = self.model.multi_modal_projector(states)
        return states.reshape(pixel_values.shape[0], -1, states.shape[-1])


class _Masks(nn.Module):
    """The processor's ``cross_attention_mask [B, T, images, tiles]`` as the decoder takes it: HF's
    ``_prepare_cross_attention_mask`` (additive ``[B, 1, T, F]``, rows that see no tile all 0, and
    ``full_text_row_masked_out_mask [B, 1, T, 1]``), written without ``1.0 - tensor``, which the ONNX
    exporter cannot translate."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.patches = model.model.vision_model.num_patches
        self.dtype = model.dtype

    def forward(self, cross_attention_mask):
        batch, length = cross_attention_mask.shape[:2]
        seen = (cross_attention_mask == 1).repeat_interleave(self.patches, dim=3).view(batch, length, -1)[:, None]
        rows = seen.any(dim=-1, keepdim=True).to(self.dtype)
        hidden = torch.zeros_like(seen, dtype=self.dtype).masked_fill(~seen, torch.finfo(self.dtype).min)
        return hidden * rows, rows


def _refuse_head_union(method) -> None:
    if method.select != "topk":
        raise ValueError(
            f"CrossAttentionTrim(select={method.select!r}) cannot be exported: its kept-feature count depends on the "
            "scores, so the trimmed layers' shapes are data-dependent, which a fixed-size ONNX graph and TensorRT "
            f"cannot hold; optimize with graphprune.CrossAttentionTrim(keep={method.keep}, select='topk') to export"
        )


def mllama(model: nn.Module, state, example_inputs: dict, max_images: int | None, prune: bool):
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
    vision, masks, embed = _Vision(model).eval(), _Masks(model).eval(), model.get_input_embeddings()
    with torch.no_grad():
        states = vision(pixel_values, ratio_ids, ratio_mask)
        cross_mask, row_mask = masks(processor_mask)
        embeds = embed(input_ids)
    positions = generation_positions(attention_mask)
    decoder_inputs = ("inputs_embeds", "attention_mask", "position_ids")
    seq, cross = {0: "batch", 1: "sequence"}, ("cross_attention_mask", "full_text_row_masked_out_mask")

    if prune:
        prefill_graph = cross_attention_budget(copy_graph(state.decoder.prefill_graph), max_features)
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
    text = model.config.text_config
    details = {
        "family": "mllama",
        "model": {
            "class": type(model).__name__,
            "num_layers": num_layers,
            "cross_attention_layers": list(cross_layers),
            "num_kv_heads": layout.num_kv_heads,
            "head_dim": layout.head_dim,
            "hidden_size": text.hidden_size,
            "vocab_size": text.vocab_size,
            "pad_token_id": model.generation_config.pad_token_id,
            "eos_token_id": model.generation_config.eos_token_id,
            "image_size": model.config.vision_config.image_size,
        },
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
