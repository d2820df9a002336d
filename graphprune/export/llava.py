"""The files of a LLaVA export: vision encoder + projector, token embedding, decoder prefill and decode step.

The decoder graphs are the ones the runtime runs (``model._graphprune.decoder``), FastV's ranking
and gather nodes included (arXiv 2403.06764), with the LM head applied at the last position. With
``prune=False`` they are the same decoder captured without the pass: the unpruned baseline.
"""

from __future__ import annotations

import contextlib

import torch
from torch import fx, nn

from .. import ops
from ..capture import capture_decode, capture_prefill
from ..methods import n_keep
from ..passes import fastv_budget
from .graph_export import GraphExport

NEW_TOKENS = 2  # example decode length: 1 would specialise that axis


class _Vision(nn.Module):
    """LLaVA's vision tower and projector, as ``get_image_features``: ``pixel_values -> [images, T, hidden]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.model
        self.layers = model.config.vision_feature_layer
        self.strategy = model.config.vision_feature_select_strategy

    def forward(self, pixel_values):
        hidden = self.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        layers = [self.layers] if isinstance(self.layers, int) else self.layers
        selected = [hidden[i][:, 1:] if self.strategy == "default" else hidden[i] for i in layers]
        return self.model.multi_modal_projector(torch.cat(selected, dim=-1))


class _Embed(nn.Module):
    """Token embeddings with the image features placed at the image tokens, in order (LLaVA's ``masked_scatter``).

    ``(input_ids [B, T], image_features [n, hidden]) -> (inputs_embeds [B, T, hidden], visual_mask [B, T])``;
    decode steps pass ``n = 0`` features, so that a generated image token id gets its token embedding.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed_tokens = model.get_input_embeddings()
        self.image_token_id = model.config.image_token_id

    def forward(self, input_ids, image_features):
        visual = input_ids == self.image_token_id
        order = (visual.flatten().cumsum(0) - 1).view(input_ids.shape)
        placed = visual & (order < image_features.shape[0])  # decode: image token ids get their embedding
        rows = torch.cat([image_features, image_features.new_zeros(1, image_features.shape[1])])
        picked = rows[order.clamp(min=0, max=rows.shape[0] - 1)]
        return torch.where(placed[..., None], picked, self.embed_tokens(input_ids)), visual


class _LogitsAtLast(nn.Module):
    """A decoder graph, its hidden output replaced by the LM head's logits at the last position.

    With left padding the last position is every sample's last real token (also after pruning).
    Only the first ``n_outputs`` outputs are kept.
    """

    def __init__(self, graph: fx.GraphModule, lm_head: nn.Module, n_outputs: int):
        super().__init__()
        self.step = graph  # not "graph": exported programs are GraphModules, whose .graph is taken
        self.lm_head = lm_head
        self.n_outputs = n_outputs

    def forward(self, *args):
        outputs = self.step(*args)
        return (self.lm_head(outputs[0][:, -1]), *outputs[1 : self.n_outputs])


def generation_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids as HF ``generate`` gives them with left padding: real tokens count from 0, padding gets 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule over a copy of ``gm``'s graph, sharing its parameters and metadata."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    copy = fx.GraphModule(gm, graph)
    copy.meta.update(gm.meta)
    return copy


@contextlib.contextmanager
def _original_forward(decoder: nn.Module, original):
    """The decoder's own forward for the duration (capture of the unpruned baseline)."""
    pruned = decoder.__dict__["forward"]
    decoder.forward = original
    try:
        yield
    finally:
        decoder.forward = pruned


def _kv_names(prefix: str, num_layers: int) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value"))


def _defined(num_layers: int, first_pruned: int, real: torch.Tensor, slot_valid: torch.Tensor) -> dict:
    """Which cache positions of each ``present`` output hold defined values (not padding)."""
    names = _kv_names("present", num_layers)
    return {name: real if i // 2 < first_pruned else slot_valid for i, name in enumerate(names)}


def llava(model: nn.Module, state, example_inputs: dict, max_images: int | None, prune: bool):
    """The graphs of a LLaVA export and what the manifest records about the model; see ``export.onnx``."""
    input_ids, attention_mask = example_inputs["input_ids"], example_inputs["attention_mask"]
    pixel_values = example_inputs.get("pixel_values")
    if pixel_values is None or not bool((input_ids == model.config.image_token_id).any()):
        raise ValueError("example_inputs must hold at least one image (pixel_values and image tokens in input_ids)")
    visual_per_sample = int((input_ids == model.config.image_token_id).sum(-1).max())
    layout = state.adapter.layout(model)
    num_layers, method = layout.num_layers, state.method
    vision, embed = _Vision(model), _Embed(model)
    with torch.no_grad():
        features = vision(pixel_values)
        tokens_per_image = features.shape[1]
        embeds, visual = embed(input_ids, features.flatten(0, 1))
    most_images = -(-visual_per_sample // tokens_per_image)
    max_images = most_images if max_images is None else max_images
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < most_images:
        raise ValueError(
            f"max_images must be an int >= {most_images} (the most images a sample of example_inputs holds); "
            f"got {max_images!r}"
        )
    max_visual = max_images * tokens_per_image
    positions = generation_positions(attention_mask)

    if prune:
        prefill_graph = fastv_budget(_copy(state.decoder.prefill_graph), max_visual)
        decode_graph = state.decoder.decode_graph
        dropped = visual.sum(-1) - ops.keep_counts(visual, method.keep)
        slots = torch.arange(int((attention_mask.sum(-1) - dropped).max()))
        prefill_args = (embeds, attention_mask, positions, visual, slots)
        prefill_extra = ("graphprune_visual_mask", "graphprune_slots")
        prefill_out_extra = ("graphprune_keep_index", "graphprune_slot_valid")
    else:
        decoder = state.adapter.decoder(model)
        with _original_forward(decoder, state.decoder._original):
            prefill_graph, decode_graph = capture_prefill(decoder, layout), capture_decode(decoder, layout)
        prefill_args, prefill_extra, prefill_out_extra = (embeds, attention_mask, positions), (), ()
    dims, seq = {0: "images"}, {0: "batch", 1: "sequence"}
    prefill_module = _LogitsAtLast(prefill_graph, model.lm_head, 1 + 2 * num_layers + len(prefill_out_extra))
    with torch.no_grad():
        first = prefill_module(*prefill_args)
    real, first_pruned = attention_mask.bool(), method.k if prune else num_layers
    slot_valid = first[-1] if prune else real
    prefill = GraphExport(
        "prefill",
        prefill_module,
        prefill_args,
        ("inputs_embeds", "attention_mask", "position_ids", *prefill_extra),
        ("logits", *_kv_names("present", num_layers), *prefill_out_extra),
        {"inputs_embeds": seq, "attention_mask": seq, "position_ids": seq}
        | ({"graphprune_visual_mask": seq, "graphprune_slots": {0: "pruned_sequence"}} if prune else {}),
        _defined(num_layers, first_pruned, real, slot_valid),
    )
    text_token = (model.config.image_token_id + 1) % model.config.text_config.vocab_size
    new_ids = torch.full((input_ids.shape[0], NEW_TOKENS), text_token)
    with torch.no_grad():
        new_embeds, _ = embed(new_ids, features.new_zeros(0, features.shape[-1]))
    decode_mask = torch.cat([attention_mask, torch.ones_like(new_ids)], dim=1)
    decode_positions = generation_positions(decode_mask)[:, -NEW_TOKENS:]
    past_names = _kv_names("past", num_layers)
    past_axes = {
        name: {0: "batch", 2: "past" if i // 2 < first_pruned else "pruned_past"} for i, name in enumerate(past_names)
    }
    decode_args = (new_embeds, decode_mask, decode_positions, *first[1 : 1 + 2 * num_layers])
    decode_extra, decode_axes = (), {}
    if prune:
        decode_args = (*decode_args, first[-2], first[-1])
        decode_extra = ("graphprune_cache_index", "graphprune_cache_valid")
        decode_axes = {name: {0: "batch", 1: "pruned_past"} for name in decode_extra}
    step = {0: "batch", 1: "new_tokens"}
    fresh = torch.ones_like(new_ids, dtype=torch.bool)
    decode_defined = _defined(
        num_layers, first_pruned, torch.cat([real, fresh], dim=1), torch.cat([slot_valid, fresh], dim=1)
    )
    decode = GraphExport(
        "decode",
        _LogitsAtLast(decode_graph, model.lm_head, 1 + 2 * num_layers),
        decode_args,
        ("inputs_embeds", "attention_mask", "position_ids", *past_names, *decode_extra),
        ("logits", *_kv_names("present", num_layers)),
        {"inputs_embeds": step, "attention_mask": {0: "batch", 1: "total"}, "position_ids": step}
        | past_axes
        | decode_axes,
        decode_defined,
    )
    graphs = [
        GraphExport("vision", vision, (pixel_values,), ("pixel_values",), ("image_features",), {"pixel_values": dims}),
        GraphExport(
            "embed",
            embed,
            (input_ids, features.flatten(0, 1)),
            ("input_ids", "image_features"),
            ("inputs_embeds", "visual_mask"),
            {"input_ids": seq, "image_features": {0: "image_tokens"}},
        ),
        prefill,
        decode,
    ]
    text = model.config.text_config
    details = {
        "family": "llava",
        "model": {
            "class": type(model).__name__,
            "num_layers": num_layers,
            "num_kv_heads": layout.num_kv_heads,
            "head_dim": layout.head_dim,
            "hidden_size": text.hidden_size,
            "vocab_size": text.vocab_size,
            "image_token_id": model.config.image_token_id,
            "pad_token_id": model.generation_config.pad_token_id,
            "eos_token_id": model.generation_config.eos_token_id,
            "image_size": model.config.vision_config.image_size,
        },
        "visual_budget": {
            "tokens_per_image": tokens_per_image,
            "max_images": max_images,
            "max_visual": max_visual,
            "top_k": max(n_keep(method.keep, max_visual), 1) if prune else None,
        },
        "first_pruned_layer": method.k if prune else None,
    }
    return graphs, details
