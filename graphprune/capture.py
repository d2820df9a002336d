"""Decoder capture: a VLM's decoder as two FX graphs, prefill and decode step, via ``torch.export``.

Both graphs take and return plain tensors, so the passes can rewrite them and ONNX export can
trace them again:

- prefill: ``(inputs_embeds, attention_mask, position_ids[, cross][, deepstack]) -> (hidden, key_0, ..., value_{L-1})``
- decode:  ``(inputs_embeds, attention_mask, position_ids[, cross], past_0, ..., past_{2L-1}) -> (hidden, key_0, ...)``

``attention_mask`` is the 2-D padding mask over every position seen so far; ``position_ids`` are
``[B, T]``, or ``[R, B, T]`` for a decoder with ``layout.position_rows = R`` (M-RoPE); keys and values are
post-RoPE, ``[B, H_kv, length, head_dim]``. A decoder with cross-attention layers (Mllama) also
takes its cross-attention inputs ``cross``, as HF's text model does: in prefill
``cross_attention_states [B, F, d]`` (the F visual features of each sample, flattened),
``cross_attention_mask [B, 1, T, F]`` (additive) and ``full_text_row_masked_out_mask [B, 1, T, 1]``;
in decode the two masks only, the features' keys and values being in the cross-attention
layers' past (length F). A decoder with ``layout.layer_masks`` (Gemma 3) gets its per-layer-kind masks built in
the graph from the 2-D mask (``masks.py``; in prefill also from a ``token_type_ids [B, T]`` input) and a plain
cache: every layer, sliding ones too, keeps every key. A decoder with DeepStack layers (Qwen3-VL) takes, in prefill, one
``deepstack_i [B, T, d]`` per such layer, added to layer i's output (see ``deepstack_inputs``).
Every node keeps ``nn_module_stack``, so a node's layer and submodule are read from metadata, never
guessed from node order. The graphs are captured once per model and share its parameters.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import fx, nn
from torch._dynamo.exc import UserError
from torch.export import Dim
from torch.fx.experimental.symbolic_shapes import ConstraintViolationError
from torch.utils._pytree import tree_flatten
from transformers import DynamicCache

from . import masks, ops
from .layout import KEY_MASK, KEY_MASK_DTYPE, LAYOUT_KEY, DecoderLayout
from .passes import _graph

logger = logging.getLogger(__name__)


def _flat_cache(cache: DynamicCache) -> list[torch.Tensor]:
    return [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]


class _DecoderStep(nn.Module):
    """One decoder call on a cache seeded with ``past`` (empty for prefill), returning plain tensors.

    ``extra`` holds further decoder keyword inputs, in the order of ``extra_names``, then ``deepstack``
    per-position inputs ``[B, N, d]``, the i-th added to layer i's output (what DeepStack does at the
    visual positions, with zeros elsewhere: the same sums, as a plain add that keeps the sequence axis).
    """

    def __init__(
        self, decoder: nn.Module, extra_names: tuple[str, ...] = (), deepstack: int = 0, layout: DecoderLayout = None
    ):
        super().__init__()
        self.decoder = decoder
        self.extra_names = extra_names
        self.deepstack = deepstack
        self.layout = layout

    def forward(self, inputs_embeds, attention_mask, position_ids, extra=(), past=()):
        layer_masks = self.layout is not None and self.layout.layer_masks
        # graphprune's masks see every key: a plain cache, no sliding layer that keeps only its window
        cache = DynamicCache() if layer_masks else DynamicCache(config=self.decoder.config)
        for layer_idx in range(len(past) // 2):
            cache.update(past[2 * layer_idx], past[2 * layer_idx + 1], layer_idx)
        kwargs, added = extra[: len(extra) - self.deepstack], extra[len(extra) - self.deepstack :]
        kwargs = dict(zip(self.extra_names, kwargs, strict=True))
        if layer_masks:
            attention_mask = masks.layer_masks(
                attention_mask,
                inputs_embeds.shape[1],
                self.layout.sliding_window,
                inputs_embeds.dtype,
                kwargs.pop("token_type_ids", None),
            )
        hooks = [
            self.decoder.layers[i].register_forward_hook(lambda _module, _args, out, x=x: out + x)
            for i, x in enumerate(added)
        ]
        try:
            out = self.decoder(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                **kwargs,
            )
        finally:
            for hook in hooks:
                hook.remove()
        return (out.last_hidden_state, *_flat_cache(cache))


def _fold_empty_concatenations(graph: fx.Graph) -> None:
    """``cat([empty, x])`` (how a fresh cache layer stores ``x``) becomes ``x``: one copy less per layer."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.cat.default:
            continue
        dim = node.args[1] if len(node.args) > 1 else 0
        kept = [arg for arg in node.args[0] if not _is_empty_along(arg, dim)]
        if len(kept) == 1 and len(node.args[0]) > 1:
            node.replace_all_uses_with(kept[0])
            graph.erase_node(node)


def _drop_per_call_checks(graph: fx.Graph) -> None:
    """Nodes that would run at every call and compute nothing read: the dtype and device asserts of intermediate
    values (fixed by the inputs', which keep theirs, and the weights', whose placement has its own graphs), and
    the in-place ``detach_`` of a value nothing else reads (a fresh cache layer's empty tensor)."""
    for node in list(graph.nodes):
        if node.op != "call_function" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        subject = node.args[0]
        unread_check = node.target is torch.ops.aten._assert_tensor_metadata.default and subject.op != "placeholder"
        unread_detach = node.target is torch.ops.aten.detach_.default and not node.users and len(subject.users) == 1
        if unread_check or unread_detach:
            graph.erase_node(node)


def _is_empty_along(node: fx.Node, dim: int) -> bool:
    """Whether ``cat`` along ``dim`` takes nothing from ``node``: it is empty along ``dim``, or is the 1-D empty
    tensor that ``cat`` skips whatever ``dim`` is."""
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        return False
    return value.shape == (0,) or (-value.dim() <= dim < value.dim() and value.shape[dim] == 0)


def _plain_graph_module(
    exported: torch.export.ExportedProgram, layout: DecoderLayout, extra_names: tuple[str, ...] = ()
) -> fx.GraphModule:
    """The exported program as a GraphModule with a positional signature and flat tuple output;
    the ``extra_{i}`` inputs are named after the decoder inputs they are."""
    gm = exported.module()
    gm._forward_pre_hooks.clear()
    graph = gm.graph
    graph._codegen = fx.graph.CodeGen()
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
        elif node.op == "placeholder" and node.name.startswith("extra_"):
            node.target = extra_names[int(node.name.removeprefix("extra_"))]
            node._rename(node.target)
    _fold_empty_concatenations(graph)
    _drop_per_call_checks(graph)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    gm.meta[LAYOUT_KEY] = layout
    return gm


def _random_like(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """Example values from a private generator: capturing leaves the caller's random state alone."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator).to(dtype=like.dtype, device=like.device)


def _example_prefill(decoder: nn.Module, layout: DecoderLayout, batch: int, seq_len: int, past: int = 0):
    param = next(decoder.parameters())
    hidden = decoder.config.hidden_size
    embeds = _random_like(param, batch, seq_len, hidden)
    mask = torch.ones(batch, past + seq_len, dtype=torch.long, device=param.device)
    rows = (layout.position_rows,) if layout.position_rows else ()
    positions = torch.arange(past, past + seq_len, device=param.device).expand(*rows, batch, seq_len)
    return embeds, mask, positions


def _position_axes(layout: DecoderLayout, batch, seq) -> dict:
    """Dynamic axes of ``position_ids``: batch and sequence are its last two."""
    return {0: batch, 1: seq} if not layout.position_rows else {1: batch, 2: seq}


def _example_cross_masks(embeds: torch.Tensor, features: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, seq_len = embeds.shape[:2]
    cross_mask = torch.zeros(batch, 1, seq_len, features, dtype=embeds.dtype, device=embeds.device)
    row_mask = torch.ones(batch, 1, seq_len, 1, dtype=embeds.dtype, device=embeds.device)
    return cross_mask, row_mask


CROSS_PREFILL_INPUTS = ("cross_attention_states", "cross_attention_mask", "full_text_row_masked_out_mask")
CROSS_DECODE_INPUTS = CROSS_PREFILL_INPUTS[1:]


def capture_prefill(decoder: nn.Module, layout: DecoderLayout) -> fx.GraphModule:
    """The decoder's prefill (empty cache) as a GraphModule with dynamic batch, sequence length and,
    for cross-attention decoders, feature count."""
    batch, seq = Dim("batch", min=1), Dim("seq", min=2)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: seq}, _position_axes(layout, batch, seq))
    args = _example_prefill(decoder, layout, 2, 8)
    extra, extra_shapes, extra_names = (), (), ()
    if layout.cross_attention_layers:
        features = Dim("features", min=2)
        extra = (_random_like(args[0], 2, 12, args[0].shape[-1]), *_example_cross_masks(args[0], 12))
        extra_shapes = ({0: batch, 1: features}, {0: batch, 2: seq, 3: features}, {0: batch, 2: seq})
        extra_names = CROSS_PREFILL_INPUTS
    if layout.image_blocks:  # what Gemma 3's masks read (masks.py); zeros: the trace has no data-dependent branch
        extra = (*extra, torch.zeros(args[1].shape, dtype=torch.long, device=args[1].device))
        extra_shapes, extra_names = (*extra_shapes, {0: batch, 1: seq}), (*extra_names, "token_type_ids")
    deepstack = deepstack_names(layout)
    extra = (*extra, *(_random_like(args[0], *args[0].shape) for _ in deepstack))
    extra_shapes = (*extra_shapes, *({0: batch, 1: seq} for _ in deepstack))
    if extra:
        args, shapes = (*args, extra), (*shapes, extra_shapes)
    exported = _export_dynamic(_DecoderStep(decoder, extra_names, len(deepstack), layout), args, shapes)
    logger.info("captured the prefill graph of %s (%d layers)", type(decoder).__name__, layout.num_layers)
    return _plain_graph_module(exported, layout, extra_names + deepstack)


def deepstack_names(layout: DecoderLayout) -> tuple[str, ...]:
    """The prefill graph's DeepStack inputs, one per layer that adds one (see ``DecoderLayout.deepstack_layers``)."""
    return tuple(f"deepstack_{i}" for i in range(layout.deepstack_layers))


def deepstack_inputs(layout: DecoderLayout, inputs_embeds: torch.Tensor, decoder_kwargs: dict) -> list[torch.Tensor]:
    """The prefill graph's DeepStack inputs from the decoder call's ``visual_pos_masks`` and
    ``deepstack_visual_embeds`` (HF's form: one ``[visual count, d]`` tensor per layer): each ``[B, N, d]``,
    the layer's features at the visual positions and zeros elsewhere (all zeros where the call has none)."""
    positions = decoder_kwargs.get("visual_pos_masks")
    features = decoder_kwargs.get("deepstack_visual_embeds") or ()
    dense = []
    for i in range(layout.deepstack_layers):
        added = torch.zeros_like(inputs_embeds)
        if i < len(features):
            added[positions.to(added.device)] = features[i].to(added.device, added.dtype)
        dense.append(added)
    return dense


def _export_dynamic(step: nn.Module, args: tuple, shapes: tuple) -> torch.export.ExportedProgram:
    """``step`` exported with the named dynamic axes of ``shapes``. Where export cannot prove one of its shape
    guards for every length (e.g. ``min(128*seq, 896*seq) == 128*seq``, a stride guard of CUDA's SDPA on grouped
    keys), it exports again with ``Dim.DYNAMIC`` hints of the same minimum, which accept such guards; every guard
    must then hold at the lengths of ``_probe_inputs``, or the capture fails with a one-line error."""
    with torch.no_grad():
        try:
            return torch.export.export(step, args, dynamic_shapes=shapes, strict=False)
        except (ConstraintViolationError, UserError) as error:  # torch 2.11 raises the first, 2.13 wraps it
            if "Constraints violated" not in str(error):
                raise
        hinted = _hinted(shapes)
        exported = torch.export.export(step, args, dynamic_shapes=hinted, strict=False)
    guards = exported.module()._guards_fn
    for probe in _probe_inputs(args, shapes):
        try:
            guards(*probe)
        except AssertionError as error:
            raise RuntimeError(
                f"graphprune could not capture {type(step.decoder).__name__} for every batch size and sequence "
                f"length: torch.export restricted its shapes ({str(error).splitlines()[0]}); graphprune needs a "
                "decoder whose shape guards hold for every length"
            ) from None
    return exported


def _hinted(shapes):
    """``shapes`` with a ``Dim.DYNAMIC`` hint of the same minimum in place of each named ``Dim``."""
    if isinstance(shapes, dict):
        return {axis: Dim.DYNAMIC(min=dim.min) if isinstance(dim, Dim) else dim for axis, dim in shapes.items()}
    return type(shapes)(_hinted(shape) for shape in shapes)


def _probe_inputs(args, shapes):
    """Empty inputs like ``args`` with each named dynamic axis at every length from its minimum to 64 and at a
    few up to 4097, the other axes as in ``args``."""
    names = {dim.__name__: dim.min for dim in tree_flatten(shapes)[0] if isinstance(dim, Dim)}
    for name, least in names.items():
        for length in [*range(least, 65), 127, 128, 129, 1000, 4097]:
            yield _resized(args, shapes, name, length)


def _resized(args, shapes, name: str, length: int):
    if isinstance(shapes, dict):
        named = {axis for axis, dim in shapes.items() if isinstance(dim, Dim) and dim.__name__ == name}
        return args.new_empty([length if axis in named else n for axis, n in enumerate(args.shape)])
    return type(shapes)(_resized(arg, shape, name, length) for arg, shape in zip(args, shapes, strict=True))


_SDPA = torch.ops.aten.scaled_dot_product_attention.default


def causal_prefill(gm: fx.GraphModule, decoder: nn.Module) -> fx.GraphModule | None:
    """The prefill graph for a batch with no padding, in the form HF gives SDPA then: every SDPA call masks
    causally by itself (``attn_mask=None, is_causal=True``, which keeps the flash kernel on), and the 4-D
    mask it no longer reads is gone. Shares ``gm``'s parameters. None when that form would not be exact:
    no SDPA call, a sliding window or cross-attention layers (their masks are not plain causal).

    Valid only where every query row sees every earlier position of its sample: no zero in the 2-D
    attention mask and, after FastV, every sample keeping the same number of positions.
    """
    return _unmasked(gm, decoder, is_causal=True)


def unmasked_decode(gm: fx.GraphModule, decoder: nn.Module) -> fx.GraphModule | None:
    """The decode graph for one new token of a sample with no padding, in the form HF gives SDPA then: no mask
    and no ``is_causal`` (the one query sees every cached key), grouped keys and values unrepeated
    (``enable_gqa``); no ``attention_mask`` input, nothing built from it. Shares ``gm``'s parameters. None
    where that form would not be exact (as ``causal_prefill``) or the graph reads the mask elsewhere."""
    unmasked = _unmasked(gm, decoder, is_causal=False)
    return unmasked if unmasked is not None and _drop_attention_mask(unmasked) else None


def key_mask_decode(gm: fx.GraphModule, decoder: nn.Module) -> fx.GraphModule | None:
    """The decode graph for one new token, given its mask as the caller keeps it: ``graphprune_key_mask [B, P + 1]``
    (which keys the query sees, in the form of the captured mask: bool or additive, ``meta[KEY_MASK_DTYPE]``) in
    place of ``attention_mask``, read by every layer as a ``[B, 1, 1, P + 1]`` view (``ops.key_mask_rows``); the
    mask's construction from ``attention_mask`` is gone. Shares ``gm``'s parameters. None where the mask is not
    plain padding (as ``causal_prefill``) or the graph reads ``attention_mask`` elsewhere."""
    layout = gm.meta[LAYOUT_KEY]
    if not _plain_causal(layout, decoder):
        return None
    keyed = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    keyed.meta.update(gm.meta)
    past = _graph.symbol(_graph.placeholder(keyed, "past_0").meta["val"].shape[2])
    new_tokens = _graph.symbol(_graph.placeholder(keyed, "inputs_embeds").meta["val"].shape[1])

    def is_mask(node: fx.Node) -> bool:  # outside the layers, read inside them, [B, h, T, P + T]
        value = node.meta.get("val")
        return (
            isinstance(value, torch.Tensor)
            and value.dim() == 4
            and _graph.symbol(value.shape[2]) == new_tokens
            and _graph.symbol(value.shape[3]) == past + new_tokens
            and _graph.layer_index(node, layout) is None
            and any(_graph.layer_index(user, layout) is not None for user in node.users)
        )

    masks = [node for node in keyed.graph.nodes if is_mask(node)]
    if len(masks) != 1:
        return None
    key_mask = _graph.add_placeholder(keyed, KEY_MASK)
    with keyed.graph.inserting_after(masks[0]):
        rows = _graph.named(keyed.graph.call_function(ops.key_mask_rows, (key_mask,)), "key_mask_rows")
    rows.meta["val"] = masks[0].meta["val"]
    masks[0].replace_all_uses_with(rows)
    keyed.meta[KEY_MASK_DTYPE] = masks[0].meta["val"].dtype
    return keyed if _drop_attention_mask(keyed) else None


def _drop_attention_mask(gm: fx.GraphModule) -> bool:
    """Remove ``gm``'s ``attention_mask`` input (and what only it fed); False, leaving it, if anything else reads it."""
    graph = gm.graph
    mask = next(node for node in graph.nodes if node.op == "placeholder" and node.name == "attention_mask")
    for check in [user for user in mask.users if user.target is torch.ops.aten._assert_tensor_metadata.default]:
        graph.erase_node(check)
    graph.eliminate_dead_code()
    if mask.users:
        return False
    graph.erase_node(mask)
    graph.lint()
    gm.recompile()
    return True


def _plain_causal(layout: DecoderLayout, decoder: nn.Module) -> bool:
    """Whether each self-attention mask of the decoder is causal padding only (no sliding window, cross-attention)."""
    return not layout.cross_attention_layers and getattr(decoder.config, "sliding_window", None) is None


def _unmasked(gm: fx.GraphModule, decoder: nn.Module, is_causal: bool) -> fx.GraphModule | None:
    """A copy of ``gm`` whose SDPA calls take no mask and ``is_causal``, on the grouped keys and values
    themselves (``enable_gqa``, as HF's SDPA call without a mask), the mask-building nodes gone."""
    layout = gm.meta[LAYOUT_KEY]
    if not _plain_causal(layout, decoder):
        return None
    graph = copy.deepcopy(gm.graph)
    calls = [node for node in graph.nodes if node.target is _SDPA]
    if not calls:
        return None
    for node in calls:
        query, key, value = node.args[:3]
        dropout = node.args[4] if len(node.args) > 4 else node.kwargs.get("dropout_p", 0.0)
        grouped = _grouped(key), _grouped(value)
        gqa = None not in grouped
        node.args = (query, *(grouped if gqa else (key, value)), None, dropout, is_causal)
        node.kwargs = {
            name: arg for name, arg in node.kwargs.items() if name not in ("attn_mask", "dropout_p", "is_causal")
        } | ({"enable_gqa": True} if gqa else {})
    graph.eliminate_dead_code()
    graph.lint()
    unmasked = fx.GraphModule(gm, graph)
    unmasked.meta.update(gm.meta)
    return unmasked


_REPEAT_KV = (torch.ops.aten.reshape.default, torch.ops.aten.expand.default, torch.ops.aten.slice.Tensor)


def _grouped(node: fx.Node) -> fx.Node | None:
    """The ``[B, H_kv, L, D]`` keys or values that HF's ``repeat_kv`` made ``node`` from
    (``x[:, :, None].expand(...).reshape(...)``), or None if ``node`` is not such a repeat."""
    value = node.meta.get("val")
    while node.target in _REPEAT_KV and node.args[0].meta.get("val") is not None:
        node = node.args[0]
        if node.target is torch.ops.aten.unsqueeze.default and node.args[1] == 2:
            source = node.args[0]
            repeated = source.meta.get("val")
            heads = (repeated.shape[1], value.shape[1])
            if repeated.dim() == 4 and heads[0] != heads[1]:
                return source
            return None
    return None


def capture_decode(decoder: nn.Module, layout: DecoderLayout) -> fx.GraphModule:
    """One decode step on an explicit cache as a GraphModule; each layer's past length is its own."""
    new_tokens, past_len, features = 2, 6, 12  # 2 new tokens: a 1 would specialise that axis to 1
    embeds, mask, positions = _example_prefill(decoder, layout, 2, new_tokens, past=past_len)
    past = []
    for layer_idx in range(layout.num_layers):
        length = features if layer_idx in layout.cross_attention_layers else past_len
        kv_shape = (2, layout.num_kv_heads, length, layout.head_dim)
        past += [_random_like(embeds, *kv_shape) for _ in range(2)]
    dynamic = Dim.DYNAMIC
    shapes = ({0: dynamic, 1: dynamic}, {0: dynamic, 1: dynamic}, _position_axes(layout, dynamic, dynamic))
    extra, extra_shapes, extra_names = (), (), ()
    if layout.cross_attention_layers:
        extra = _example_cross_masks(embeds, features)
        extra_shapes = ({0: dynamic, 2: dynamic, 3: dynamic}, {0: dynamic, 2: dynamic})
        extra_names = CROSS_DECODE_INPUTS
    shapes = (*shapes, extra_shapes, [{0: dynamic, 2: dynamic} for _ in past])
    with torch.no_grad():
        exported = torch.export.export(
            _DecoderStep(decoder, extra_names, layout=layout),
            (embeds, mask, positions, extra, past),
            dynamic_shapes=shapes,
            strict=False,
        )
    logger.info("captured the decode graph of %s", type(decoder).__name__)
    return _plain_graph_module(exported, layout, extra_names)
