"""The decoder files of a self-attention VLM export (FastV, arXiv 2403.06764): ``prefill`` and ``decode``.

The graphs are the ones the runtime runs (``model._graphprune.decoder``), FastV's ranking and gather
nodes included, with the LM head applied at the last position. With ``prune=False`` they are the
same decoder captured without the pass: the unpruned baseline. Also here: what every family's
export shares (the LM-head wrapper, cache names, example positions, the embedding graph).
"""

from __future__ import annotations

import contextlib

import torch
from torch import fx, nn

from ..capture import capture_decode, capture_prefill, deepstack_names
from ..methods import n_keep, n_slots
from ..ops import clamp_int, running_count
from .graph_export import GraphExport

NEW_TOKENS = 2  # example decode length: 1 would specialise that axis


class FeatureEmbedding(nn.Module):
    """Token embeddings with visual features placed at their placeholder tokens, in order (HF's ``masked_scatter``).

    ``(input_ids [B, T], *features) -> (inputs_embeds [B, T, hidden], visual_mask [B, T])``, one
    ``features [n, hidden]`` per placeholder id of ``token_ids``; decode steps pass ``n = 0``
    features, so that a generated placeholder id gets its token embedding. With ``deepstack`` names
    (Qwen3-VL), features are ``[n, 1 + D, hidden]``: row 0 is placed in ``inputs_embeds``, rows ``1 .. D``
    in the D DeepStack outputs ``[B, T, hidden]`` (zeros at other positions).
    """

    def __init__(self, model: nn.Module, token_ids: tuple[int, ...], deepstack: tuple[str, ...] = ()):
        super().__init__()
        self.embed_tokens = model.get_input_embeddings()
        self.token_ids = token_ids
        self.outputs = ("inputs_embeds", "visual_mask", *deepstack)

    def forward(self, input_ids, *features):
        embeds = self.embed_tokens(input_ids)
        layers = len(self.outputs) - 2
        added = embeds.new_zeros(*embeds.shape[:2], layers, embeds.shape[-1]) if layers else None
        visual = torch.zeros_like(input_ids, dtype=torch.bool)
        for token_id, rows in zip(self.token_ids, features, strict=True):
            placeholder = input_ids == token_id
            order = (running_count(placeholder.flatten(), 0) - 1).view(input_ids.shape)
            placed = placeholder & (order < rows.shape[0])  # decode: placeholder ids get their embedding
            rows = torch.cat([rows, rows.new_zeros(1, *rows.shape[1:])])
            picked = rows[order * placed]  # in range (row 0 where not placed) without an integer Clip
            if layers:
                added = torch.where(placed[..., None, None], picked[..., 1:, :], added)
                picked = picked[..., 0, :]
            embeds = torch.where(placed[..., None], picked, embeds)
            visual = visual | placeholder
        return embeds, visual, *(added.unbind(2) if layers else ())


class LogitsAtLast(nn.Module):
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


def embed_graph(embed: FeatureEmbedding, input_ids: torch.Tensor, features: dict[str, torch.Tensor]) -> GraphExport:
    """The ``embed`` graph: ``input_ids`` plus one feature input per placeholder id (``{name: example rows}``)."""
    axes = {name: {0: name.replace("_features", "_tokens")} for name in features}
    return GraphExport(
        "embed",
        embed,
        (input_ids, *features.values()),
        ("input_ids", *features),
        embed.outputs,
        {"input_ids": {0: "batch", 1: "sequence"}} | axes,
    )


def model_details(model: nn.Module, state, **family: object) -> dict:
    """What a manifest records about the model: the decoder's shape, vocabulary and special tokens, plus
    the ``family`` entries."""
    layout, text = state.adapter.layout(model), model.config.text_config
    return {
        "class": type(model).__name__,
        "num_layers": layout.num_layers,
        "num_kv_heads": layout.num_kv_heads,
        "head_dim": layout.head_dim,
        "hidden_size": text.hidden_size,
        "vocab_size": text.vocab_size,
        **family,
        "pad_token_id": model.generation_config.pad_token_id,
        "eos_token_id": model.generation_config.eos_token_id,
    }


def fastv_details(model: nn.Module, state, prune: bool, budget: dict, **model_entries: object) -> dict:
    """What a FastV family's manifest records: the family, ``model_details`` with the placeholder ids, the
    visual ``budget`` and the first pruned layer (None unpruned)."""
    placeholders = {name: getattr(model.config, name, None) for name in ("image_token_id", "video_token_id")}
    return {
        "family": state.adapter.name,
        "model": model_details(
            model, state, **{name: value for name, value in placeholders.items() if value is not None}, **model_entries
        ),
        "visual_budget": budget,
        "first_pruned_layer": state.method.k if prune else None,
    }


def example_decoders(
    model: nn.Module,
    state,
    embed: FeatureEmbedding,
    example: tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]],
    max_visual: int,
    prune: bool,
    positions: torch.Tensor | None = None,
) -> tuple[list[GraphExport], int | None]:
    """``decoder_graphs`` on an example prompt and ``NEW_TOKENS`` text tokens after it.

    ``example`` is ``(input_ids, attention_mask, features)``, one ``[n, hidden]`` per placeholder id of
    ``embed``. Positions are HF ``generate``'s unless ``positions`` (M-RoPE, ``[3, B, N]``) are given;
    then the new tokens continue each row from the last prompt position.
    """
    input_ids, attention_mask, features = example
    new_token = (max(embed.token_ids) + 1) % model.config.text_config.vocab_size
    new_ids = torch.full((input_ids.shape[0], NEW_TOKENS), new_token, device=input_ids.device)
    with torch.no_grad():
        embeds, visual, *deepstack = embed(input_ids, *features)
        new_embeds = embed(new_ids, *(rows[:0] for rows in features))[0]
    if positions is None:
        decode_mask = torch.cat([attention_mask, torch.ones_like(new_ids)], dim=1)
        positions, new_positions = generation_positions(attention_mask), generation_positions(decode_mask)
        new_positions = new_positions[:, -NEW_TOKENS:]
    else:
        new_positions = positions[..., -1:] + torch.arange(1, NEW_TOKENS + 1, device=input_ids.device)
    prompt, step = (embeds, attention_mask, positions, visual, tuple(deepstack)), (new_embeds, new_positions)
    return decoder_graphs(model, state, prompt, step, max_visual, prune)


def token_budget(input_ids: torch.Tensor, visual_ids: tuple[int, ...], max_visual_tokens: int | None) -> int:
    """The visual budget in tokens per sample: ``max_visual_tokens``, at least (and by default) the most
    visual tokens a sample of ``input_ids`` holds."""
    most = int(torch.isin(input_ids, torch.tensor(visual_ids, device=input_ids.device)).sum(-1).max())
    budget = most if max_visual_tokens is None else max_visual_tokens
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < most:
        raise ValueError(
            f"max_visual_tokens must be an int >= {most} (the most visual tokens a sample of example_inputs "
            f"holds); got {budget!r}"
        )
    return budget


def generation_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids as HF ``generate`` gives them with left padding: real tokens count from 0, padding gets 0."""
    return clamp_int(running_count(attention_mask.bool(), -1) - 1, low=0)


def copy_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule over a copy of ``gm``'s graph, sharing its parameters and metadata."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    copy = fx.GraphModule(gm, graph)
    copy.meta.update(gm.meta)
    return copy


@contextlib.contextmanager
def original_forward(decoder: nn.Module, original):
    """The decoder's own forward for the duration (capture of the unpruned baseline)."""
    pruned = decoder.__dict__["forward"]
    decoder.forward = original
    try:
        yield
    finally:
        decoder.forward = pruned


def unpruned_graphs(model: nn.Module, state) -> tuple[fx.GraphModule, fx.GraphModule]:
    """The decoder's prefill and decode steps captured without any pass (``prune=False``)."""
    decoder = state.adapter.decoder(model)
    layout = state.adapter.layout(model)
    with original_forward(decoder, state.decoder._original):
        return capture_prefill(decoder, layout), capture_decode(decoder, layout)


def kv_names(prefix: str, num_layers: int) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value"))


def _position_axes(positions: torch.Tensor, length: str) -> dict[int, str]:
    """``[B, N]`` or, one row per RoPE axis, ``[R, B, N]`` (M-RoPE)."""
    rows = positions.dim() - 2
    return {rows: "batch", rows + 1: length}


def _defined(num_layers: int, first_pruned: int, real: torch.Tensor, slot_valid: torch.Tensor) -> dict:
    """Which cache positions of each ``present`` output hold defined values (not padding)."""
    names = kv_names("present", num_layers)
    return {name: real if i // 2 < first_pruned else slot_valid for i, name in enumerate(names)}


def decoder_graphs(
    model: nn.Module,
    state,
    prompt: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]],
    step: tuple[torch.Tensor, torch.Tensor],
    max_visual: int,
    prune: bool,
) -> tuple[list[GraphExport], int | None]:
    """The ``prefill`` and ``decode`` graphs of a FastV export, and FastV's top-k K (None unpruned).

    ``prompt`` is ``(inputs_embeds, attention_mask, position_ids, visual_mask, deepstack)`` of the example
    batch (left-padded; ``deepstack``: the ``deepstack_names`` inputs, if any), ``step`` the
    ``(inputs_embeds, position_ids)`` of ``NEW_TOKENS`` tokens after it. ``max_visual`` visual tokens per
    sample make the top-k K a constant (the method's ``budget_pass``).
    """
    embeds, attention_mask, positions, visual, deepstack = prompt
    new_embeds, new_positions = step
    layout = state.adapter.layout(model)
    method, num_layers, deepstack_inputs = state.method, layout.num_layers, deepstack_names(layout)
    if prune:
        prefill_graph = state.handler.budget_pass(copy_graph(state.decoder.prefill_graph), max_visual)
        decode_graph = state.decoder.decode_graph
        slots = torch.arange(n_slots(method.keep, attention_mask.sum(-1), visual.sum(-1)), device=embeds.device)
        prefill_args = (embeds, attention_mask, positions, *deepstack, visual, slots)
        prefill_extra = ("graphprune_visual_mask", "graphprune_slots")
        prefill_out_extra = ("graphprune_keep_index", "graphprune_slot_valid")
    else:
        prefill_graph, decode_graph = unpruned_graphs(model, state)
        prefill_args, prefill_extra, prefill_out_extra = (embeds, attention_mask, positions, *deepstack), (), ()
    seq = {0: "batch", 1: "sequence"}
    prefill_module = LogitsAtLast(prefill_graph, model.lm_head, 1 + 2 * num_layers + len(prefill_out_extra))
    with torch.no_grad():
        first = prefill_module(*prefill_args)
    real, first_pruned = attention_mask.bool(), method.k if prune else num_layers
    slot_valid = first[-1] if prune else real
    prefill = GraphExport(
        "prefill",
        prefill_module,
        prefill_args,
        ("inputs_embeds", "attention_mask", "position_ids", *deepstack_inputs, *prefill_extra),
        ("logits", *kv_names("present", num_layers), *prefill_out_extra),
        {"inputs_embeds": seq, "attention_mask": seq, "position_ids": _position_axes(positions, "sequence")}
        | dict.fromkeys(deepstack_inputs, seq)
        | ({"graphprune_visual_mask": seq, "graphprune_slots": {0: "pruned_sequence"}} if prune else {}),
        _defined(num_layers, first_pruned, real, slot_valid),
    )
    fresh = torch.ones(new_embeds.shape[:2], dtype=torch.bool, device=new_embeds.device)
    decode_mask = torch.cat([attention_mask, fresh.long()], dim=1)
    past_names = kv_names("past", num_layers)
    past_axes = {
        name: {0: "batch", 2: "past" if i // 2 < first_pruned else "pruned_past"} for i, name in enumerate(past_names)
    }
    decode_args = (new_embeds, decode_mask, new_positions, *first[1 : 1 + 2 * num_layers])
    decode_extra, decode_axes = (), {}
    if prune:
        decode_args = (*decode_args, first[-2], first[-1])
        decode_extra = ("graphprune_cache_index", "graphprune_cache_valid")
        decode_axes = {name: {0: "batch", 1: "pruned_past"} for name in decode_extra}
    decode = GraphExport(
        "decode",
        LogitsAtLast(decode_graph, model.lm_head, 1 + 2 * num_layers),
        decode_args,
        ("inputs_embeds", "attention_mask", "position_ids", *past_names, *decode_extra),
        ("logits", *kv_names("present", num_layers)),
        {
            "inputs_embeds": {0: "batch", 1: "new_tokens"},
            "attention_mask": {0: "batch", 1: "total"},
            "position_ids": _position_axes(new_positions, "new_tokens"),
        }
        | past_axes
        | decode_axes,
        _defined(
            num_layers, first_pruned, torch.cat([real, fresh], dim=1), torch.cat([slot_valid.bool(), fresh], dim=1)
        ),
    )
    return [prefill, decode], max(n_keep(method.keep, max_visual), 1) if prune else None
