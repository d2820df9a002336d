"""What the decoder stand-ins share: the method's graphs per placement, the checked call, the pruned cache."""

from __future__ import annotations

import contextvars
import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import fx, nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, StaticLayer
from transformers.modeling_outputs import MoeModelOutputWithPast

from ..capture import KEY_MASK_DTYPE, capture_decode, capture_prefill, causal_prefill, key_mask_decode, unmasked_decode
from ..graph_cache import GraphCache, capturing
from ..layout import DecoderLayout
from ..model_copy import refuse_part_copy
from ..registry import MethodHandler
from . import static_decode

# what the stand-in returns: a plain decoder's output fields plus ``router_logits`` (None: the graphs compute
# none), which a mixture-of-experts model (Qwen3-VL-MoE) reads off its decoder's output
DecoderOutput = MoeModelOutputWithPast


@dataclass(frozen=True)
class ModelCall:
    """The optimized model's call, as its forward saw it: its arguments by name (a stand-in whose decoder gets
    masks that the model built, Gemma 3's dict, reads the 2-D mask and token types they came from) and what gives
    its ``[B, N]`` bool mask, True at visual positions (or None; called only by a prefill)."""

    arguments: dict
    visual_mask: Callable[[], torch.Tensor | None]


# the optimized model's call, set by its forward around the decoder call
current_call: contextvars.ContextVar[ModelCall | None] = contextvars.ContextVar("graphprune_call", default=None)


def call_argument(name: str):
    """The argument ``name`` of the optimized model's call running now; None outside one or where it is not given."""
    call = current_call.get()
    return None if call is None else call.arguments.get(name)


# the ``generate`` call running now (an object per call, None outside one): set by the optimized model's generate.
# Its decode steps pass the prompt's mask grown by ones, so a cache it filled keeps its key masks from step to step.
current_generation: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "graphprune_generation", default=None
)

# the graphs' order in ``GraphCache``: prefill, decode (general), and the forms below, each None where not exact
PREFILL, DECODE, CAUSAL_PREFILL, UNMASKED_DECODE, KEY_MASK_DECODE = range(5)


def full_mask(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """``attention_mask``, or the one that means "every position is real" when it is None."""
    if attention_mask is not None:
        return attention_mask
    return torch.ones(batch, length, dtype=torch.long, device=device)


def refuse_outputs(kwargs: dict) -> None:
    """A ``ValueError`` if a call that prunes asks for the per-layer outputs that the pruned graphs do not return."""
    requested = [
        name for name in ("output_attentions", "output_hidden_states", "output_router_logits") if kwargs.get(name)
    ]
    if requested:
        raise ValueError(
            f"graphprune's pruned decoder does not return {', '.join(requested)} (it does at keep=1.0 and for "
            "prompts without visual tokens); call graphprune.restore(model) first"
        )


def refuse_custom_mask() -> None:
    raise ValueError(
        "graphprune prunes with the causal mask of a 2-D padding mask; this 4-D attention_mask is not one "
        "(a custom mask): pass a 2-D attention_mask [batch, length], or call graphprune.restore(model) first"
    )


def brings_images() -> bool:
    """Whether the optimized model's call (``current_call``) brings images or videos (pixel values, or HF's
    features encoded beforehand) for visual tokens among its inputs."""
    call = current_call.get()
    call = {} if call is None else call.arguments
    keywords = [value for value in call.values() if isinstance(value, dict)]  # the forward's **kwargs
    return any(
        value is not None and (name.startswith("pixel_values") or name == "mm_encoder_outputs")
        for arguments in (call, *keywords)
        for name, value in arguments.items()
    )


def refuse_prompt_in_parts(holds_visual: bool) -> None:
    """A ``ValueError`` if a call that continues a cache holds visual tokens: they belong to a prompt fed in parts
    (``generate(prefill_chunk_size=...)`` or several forwards), which graphprune would rank on a part of."""
    if holds_visual:
        raise ValueError(
            "graphprune ranks visual tokens once, over the whole prompt; this call continues a cache with visual "
            "tokens (a prompt fed in parts): pass the whole prompt in one forward (no prefill_chunk_size)"
        )


def check_decode_mask(attention_mask: torch.Tensor | None, past: int, new_tokens: int) -> None:
    """A ``ValueError`` if a decode step's mask covers another length than the past and new positions."""
    if attention_mask is not None and attention_mask.shape[1] != past + new_tokens:
        raise ValueError(
            f"attention_mask covers {attention_mask.shape[1]} positions; the cache holds {past} and "
            f"{new_tokens} are new, so it must cover {past + new_tokens}"
        )


def checked_decode_mask(attention_mask: torch.Tensor | None, batch: int, past: int, new_tokens: int, device):
    """A decode step's mask over the past and new positions; a ``ValueError`` if it covers another length."""
    check_decode_mask(attention_mask, past, new_tokens)
    return full_mask(attention_mask, batch, past + new_tokens, device)


def static_layers(cache) -> bool:
    """Whether ``cache`` holds HF's static layers (buffers of ``max_cache_len`` positions, written in place); a
    ``ValueError`` for static layers that hold less than every position (sliding windows), which a pruned
    cache cannot use."""
    static = [type(layer) for layer in cache.layers if isinstance(layer, StaticLayer)]
    if any(kind is not StaticLayer for kind in static):
        window = next(kind for kind in static if kind is not StaticLayer).__name__
        raise ValueError(
            f"graphprune's pruned cache needs every position of every layer, and this static cache holds a sliding "
            f"window in some ({window}): use a DynamicCache (generate's default cache_implementation), or keep=1.0"
        )
    return bool(static)


def _fill(cache, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """``cache``'s layer ``layer_idx`` takes the prefill's ``keys`` and ``values`` as they are: a fresh plain layer's
    ``update`` would copy them onto its empty tensors (a copy of the whole cache per prefill)."""
    layer = cache.layers[layer_idx] if layer_idx < len(cache.layers) else None
    if type(layer) is DynamicLayer and not layer.is_initialized:
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    else:
        cache.update(keys, values, layer_idx)


@dataclass
class PrunedCache:
    """The slots of a pruned cache's pruned layers; a FastV decode step appends its new positions to them."""

    index: torch.Tensor  # [B, P' + room]: original position (or feature) of each slot; room for later steps after
    valid: torch.Tensor  # [B, P' + room]: False for padding slots
    unpadded: bool = False  # no padding in the prompt nor slot: a one-token step needs no mask
    # the generate call that filled it (``current_generation``), where the key-mask decode graph exists
    generation: object | None = None
    # ``generation``'s key masks in the key-mask graph's form, over [B, P + room] (layers < k) and the slots (>= k)
    key_masks: tuple[torch.Tensor, torch.Tensor] | None = None
    # a static cache's: the positions each layer holds, first in its buffers (None for a dynamic cache)
    lengths: list[int] | None = None

    def caught_up(self, past: int) -> None:
        """A static cache's held lengths, given the ``past`` positions its layer 0 holds now: steps run elsewhere
        (compiled, ``static_decode``) moved every layer on by as many positions."""
        if self.lengths is not None and past != self.lengths[0]:
            self.lengths = [length + past - self.lengths[0] for length in self.lengths]

    def length(self, cache, layer_idx: int) -> int:
        """The positions that ``cache``'s layer ``layer_idx`` holds."""
        return cache.layers[layer_idx].keys.shape[2] if self.lengths is None else self.lengths[layer_idx]


class GraphDecoder:
    """Stands in for a decoder's ``forward``: the method's pruned prefill and decode graphs per dtype and
    device of the decoder (under ``torch.compile`` on request), the original forward, and the state of each
    cache it filled. ``graphs`` (placement -> graphs) is given for a deep copy, captured now otherwise.
    ``optimize`` sets ``state`` (the model's optimized state), which records each prefill.
    ``decodes_unmasked``: the method's decode pass also takes the one-token forms of the decode graph
    (``capture.unmasked_decode``, ``capture.key_mask_decode``)."""

    decodes_unmasked = False

    def __init__(
        self,
        decoder: nn.Module,
        method,
        layout: DecoderLayout,
        compile: bool,
        graphs: dict | None = None,
        *,
        handler: MethodHandler,
    ):
        self.decoder = decoder
        self.method = method
        self.handler = handler  # the method's passes (``registry.MethodHandler``)
        self.layout = layout
        self.graphs = GraphCache(decoder, self._capture, compile, graphs)
        self.graphs.graphs()
        self._original = decoder.forward  # before optimize replaces it (keeps e.g. accelerate hooks)
        self._cache_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.state = None

    def _capture(self) -> tuple[fx.GraphModule | None, ...]:
        """The decoder's prefill and decode graphs, rewritten by the method's passes, and (None where not exact)
        their forms for batches without padding, SDPA given no mask as HF gives it (the prefill's masking
        causally, the decode step's for one new token), and for one new token with key masks kept by the caller
        (``capture.key_mask_decode``); in the order of ``PREFILL`` .. ``KEY_MASK_DECODE``."""
        handler = self.handler
        captured, decode = capture_prefill(self.decoder, self.layout), capture_decode(self.decoder, self.layout)
        # copies, made before the passes rewrite `captured` and `decode`
        unpadded = causal_prefill(captured, self.decoder)
        one_token = (unmasked_decode, key_mask_decode) if self.decodes_unmasked else ()
        one_token = [form(decode, self.decoder) for form in one_token] or [None, None]
        if unpadded is not None:
            unpadded = handler.prefill_pass(unpadded, self.method)
        one_token = [None if graph is None else handler.decode_pass(graph, self.method) for graph in one_token]
        prefill, decode = handler.prefill_pass(captured, self.method), handler.decode_pass(decode, self.method)
        return prefill, decode, unpadded, *one_token

    def __deepcopy__(self, memo):
        refuse_part_copy()

    def __reduce_ex__(self, protocol):
        refuse_part_copy()

    def __call__(self, *args, **kwargs):
        # HF's compiled generate, a torch.compile of the model's forward; not graphprune's own capture (torch.export)
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            return self._compiled_call(*args, **kwargs)
        if capturing(self.decoder):  # a capture (new dtype, device or weights) traces the decoder's own forward
            return self._original(*args, **kwargs)
        return self._run(*args, **kwargs)

    def _run(self, *args, **kwargs):
        raise NotImplementedError

    def _compiled_call(self, *args, past_key_values=None, **kwargs):
        """A call under ``torch.compile``: the one-token step over a static cache that a pruned prefill filled
        (``static_decode``), the decoder's own forward on a cache no pruned prefill filled, else an error."""
        state = getattr(past_key_values, static_decode.STATE_ATTR, None)
        if isinstance(state, str):
            raise ValueError(state)
        embeds = kwargs.get("inputs_embeds")
        new_tokens = (embeds if embeds is not None else kwargs.get("input_ids")).shape[1]
        if new_tokens != 1 and (state is not None or self.method.keep < 1.0):
            raise ValueError(static_decode.COMPILED_PREFILL.format(f"{new_tokens} tokens"))
        if state is None:
            return self._original(*args, past_key_values=past_key_values, **kwargs)
        return self._static_step(state, past_key_values, **kwargs)

    def _static_step(self, state, cache, **kwargs) -> DecoderOutput:
        raise NotImplementedError

    @property
    def prefill_graph(self) -> fx.GraphModule:
        return self.graphs.graphs()[0]

    @property
    def decode_graph(self) -> fx.GraphModule:
        return self.graphs.graphs()[1]

    def rebound(self, decoder: nn.Module, memo: dict) -> GraphDecoder:
        """This stand-in for ``decoder``, a deep copy of this one's decoder made with ``memo``."""
        layout, graphs = copy.deepcopy(self.layout, memo), self.graphs.copied_graphs(memo)
        return type(self)(decoder, self.method, layout, self.graphs.compile, graphs, handler=self.handler)

    def _embeddings(self, input_ids, inputs_embeds, use_cache) -> tuple[torch.Tensor, bool]:
        """The checked call's input embeddings and whether it caches."""
        if self.decoder.training:
            raise RuntimeError(
                "graphprune: the optimized model is in training mode; call model.eval() to run it, "
                "or graphprune.restore(model) to train it"
            )
        if inputs_embeds is None:
            inputs_embeds = self.decoder.get_input_embeddings()(input_ids)
        return inputs_embeds, self.decoder.config.use_cache if use_cache is None else use_cache

    def _prefill(self, inputs: list, cache, use_cache: bool, unpadded: bool = False) -> tuple[DecoderOutput, tuple]:
        """Run the prefill graph on ``inputs`` (its unpadded form if ``unpadded`` and there is one): the model
        output (with ``use_cache``, ``cache``, a new one if None, holding the keys and values and this
        stand-in its slots) and the graph's ``(keep_index, slot_valid, scores)``."""
        runners = self.graphs.runners()
        outputs = runners[CAUSAL_PREFILL if unpadded and runners[CAUSAL_PREFILL] is not None else PREFILL](*inputs)
        hidden, selection = outputs[0], tuple(outputs[-3:])
        if not use_cache:
            return DecoderOutput(last_hidden_state=hidden), selection
        cache = cache if cache is not None else DynamicCache(config=self.decoder.config)
        static = static_layers(cache)
        for layer_idx in range(self.layout.num_layers):
            _fill(cache, layer_idx, outputs[1 + 2 * layer_idx], outputs[2 + 2 * layer_idx])
        unpadded = unpadded and runners[UNMASKED_DECODE] is not None
        generation = current_generation.get() if runners[KEY_MASK_DECODE] is not None else None
        lengths = [outputs[1 + 2 * i].shape[2] for i in range(self.layout.num_layers)] if static else None
        self._cache_states[cache] = PrunedCache(selection[0], selection[1], unpadded, generation, lengths=lengths)
        step = runners[KEY_MASK_DECODE] if static else None
        dtype = None if step is None else self.key_mask_dtype()
        static_decode.record(cache, self.method, step, dtype, inputs[1], selection[1])
        return DecoderOutput(last_hidden_state=hidden, past_key_values=cache), selection

    def _decode(self, graph: int, inputs: list, cache, state: PrunedCache, extra: tuple = ()) -> DecoderOutput:
        """Run the decode graph ``graph`` (``DECODE``, ``UNMASKED_DECODE``, ``KEY_MASK_DECODE``) on ``inputs``, then
        ``cache``'s keys and values, then ``extra`` (its pruned layers' slots or key masks). ``cache`` takes the new
        keys and values: a dynamic cache the graph's, a static one the new positions, written after its held ones."""
        layers = cache.layers
        flat_cache = [tensor for layer in layers for tensor in (layer.keys, layer.values)]
        if state.lengths is not None:  # the held positions of each static layer
            held = list(state.lengths)
            flat_cache = [tensor[:, :, : held[i // 2]] for i, tensor in enumerate(flat_cache)]
        outputs = self.graphs.runners(check=False)[graph](*inputs, *flat_cache, *extra)
        for layer_idx, (layer, keys, values) in enumerate(zip(layers, outputs[1::2], outputs[2::2], strict=False)):
            if state.lengths is None:
                layer.keys, layer.values = keys, values
            elif (new := keys.shape[2] - held[layer_idx]) > 0:
                layer.update(keys[:, :, -new:], values[:, :, -new:])
                state.lengths[layer_idx] += new
        if state.lengths is not None:
            static_decode.synced(cache, state.lengths)
        return DecoderOutput(last_hidden_state=outputs[0], past_key_values=cache)

    def key_mask_dtype(self) -> torch.dtype:
        """The form of the key masks that ``KEY_MASK_DECODE``'s graph takes: bool, or an additive float dtype."""
        return self.graphs.graphs()[KEY_MASK_DECODE].meta[KEY_MASK_DTYPE]
