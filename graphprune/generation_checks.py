"""What ``generate`` on an optimized model accepts, read from the *effective* generation config.

The config is the one transformers itself would use, however it arrives: keyword arguments,
a ``GenerationConfig`` passed by keyword or position, or ``model.generation_config``. Only the
modes whose cache graphprune follows are allowed: greedy and sampling. Beam search reorders the cache,
assisted and prompt-lookup decoding crop it, and the others (contrastive, DoLa, a custom decoding
loop) are not tested; all are refused. ``use_cache=False`` runs with the cache, so that the
selection is made once at the prompt as with ``use_cache=True`` (the tokens are the same). HF's compiled generate
runs where asked for (``compile_config``: the decode steps over a static cache, ``decoders/static_decode.py``); HF's
own compilation of a static cache's steps unasked (on a GPU) is turned off. A model optimized with
``compile="reduce-overhead"`` asks for it: its calls that name neither a cache nor a ``compile_config`` get HF's static
cache and ``graph_replay_config()``.
"""

from __future__ import annotations

import copy
import functools
import inspect

from transformers import CompileConfig
from transformers.generation import GenerationMode

from .decoders.base import current_generation

SUPPORTED_MODES = {GenerationMode.GREEDY_SEARCH: "greedy", GenerationMode.SAMPLE: "sampling"}
_NOT_CONFIG = ("trust_remote_code", "tokenizer", "assistant_tokenizer")  # generate pops these first
GRAPH_REPLAY = "reduce-overhead"  # optimize's compile mode whose generate decodes under graph replay


def graph_replay_config() -> CompileConfig:
    """How ``generate`` compiles the decode steps of a model optimized with ``compile="reduce-overhead"``: one graph
    per batch size and cache length (``dynamic=False``), replayed at every step (CUDA graphs on a GPU)."""
    return CompileConfig(fullgraph=True, dynamic=False, mode=GRAPH_REPLAY)


def checked_generate(model, generate, method, graph_replay: bool = False):
    """``generate`` that refuses unsupported generation modes (and, where ``method`` prunes, a chunked prefill)
    and runs ``use_cache=False`` on the cache; with ``graph_replay``, a call that names neither a cache nor a
    ``compile_config`` decodes over HF's static cache under ``graph_replay_config``."""
    signature = inspect.signature(generate)
    generate = _in_generation(generate)
    var_keyword = next(p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD)

    @functools.wraps(generate)
    def generate_supported_modes(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return generate(*args, **kwargs)  # transformers' own error
        arguments = bound.arguments
        extra = arguments.setdefault(var_keyword, {})
        given = arguments.get("generation_config")
        if graph_replay and not _names_cache(arguments, extra, given, model):
            extra.update(cache_implementation="static", compile_config=graph_replay_config())
        options = {name: value for name, value in extra.items() if name not in _NOT_CONFIG}
        config, _ = model._prepare_generation_config(given, **options)
        mode = config.get_generation_mode(arguments.get("assistant_model"))
        if arguments.get("custom_generate") is not None or mode not in SUPPORTED_MODES:
            name = "custom_generate" if arguments.get("custom_generate") is not None else mode.value.replace("_", " ")
            raise ValueError(
                f"graphprune does not support {name} (its cache is pruned per sample; beam search, "
                "assisted, prompt-lookup, contrastive, DoLa and custom decoding are refused); "
                "use greedy or sampling, or graphprune.restore(model) first"
            )
        if getattr(config, "prefill_chunk_size", None) is not None and method.keep < 1.0:
            raise ValueError(
                "graphprune ranks visual tokens over the whole prompt and does not support prefill_chunk_size "
                f"(got {config.prefill_chunk_size}) at keep < 1: pass prefill_chunk_size=None, or keep=1.0"
            )
        if config.compile_config is None:
            extra["disable_compile"] = True  # HF would compile a static cache's decode steps unasked on a GPU
        if config.use_cache:
            return generate(*bound.args, **bound.kwargs)
        if "use_cache" in extra or given is None:
            extra["use_cache"] = True
        else:
            arguments["generation_config"] = copy.deepcopy(given)
            arguments["generation_config"].use_cache = True
        out = generate(*bound.args, **bound.kwargs)
        if getattr(out, "past_key_values", None) is not None:
            out.past_key_values = None  # as transformers returns without the cache
        return out

    return generate_supported_modes


def _names_cache(arguments: dict, extra: dict, given, model) -> bool:
    """Whether a ``generate`` call names its cache (``past_key_values``, ``cache_implementation``) or a
    ``compile_config``, by keyword or in its generation config (the call's, else the model's)."""
    if arguments.get("past_key_values") is not None or extra.get("past_key_values") is not None:
        return True
    config = given if given is not None else model.generation_config
    names = ("cache_implementation", "compile_config")
    return any(extra.get(name) is not None or getattr(config, name, None) is not None for name in names)


def _in_generation(generate):
    """``generate`` run with ``current_generation`` set to an object of its own, which the caches it fills record:
    its decode steps extend the prompt's mask by ones, so the decoder keeps their key masks from step to step."""

    @functools.wraps(generate)
    def generating(*args, **kwargs):
        token = current_generation.set(object())
        try:
            return generate(*args, **kwargs)
        finally:
            current_generation.reset(token)

    return generating
