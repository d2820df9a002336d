"""``additional_config["graphprune"]``: parse it, refuse what graphprune cannot serve, force the settings FastV and
DART need.

Runs in ``VllmConfig`` construction (engine start, before the model, the KV cache and the scheduler exist), so a bad
config fails there, with ``gp.FastV``'s or ``gp.DART``'s own messages prefixed by ``graphprune:``. PyramidDrop
(``pdrop``) is refused: its stages would each need KV blocks for another kept count.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from vllm.logger import init_logger

from ..families import FAMILIES
from ..method_strings import class_name
from ..methods import DART, FastV, method_from_dict

logger = init_logger("vllm.graphprune")  # a child of vLLM's logger: vLLM's handler, level and format

KEY = "graphprune"
METHODS = ("fastv", "dart")  # what ``method`` may name in vLLM (``method_strings.class_name`` reads it)
# HF architecture -> (vLLM architecture name graphprune registers, "module:Class" of its model): the families' records
ARCHITECTURES = {name: target for family in FAMILIES for name, target in family.vllm.items()}
# HF architecture vLLM serves and graphprune prunes in HF -> why the plugin refuses it
REFUSED = {name: reason for family in FAMILIES for name, reason in family.vllm_refused.items()}
# HF architecture -> the methods its family's record fits (``Family.methods``)
FITTING = {name: family.methods for family in FAMILIES for name in family.vllm}


def parse(additional_config: Any) -> FastV | DART | None:
    """The method under ``additional_config["graphprune"]`` (``method`` and the method's own parameters,
    read by ``methods.method_from_dict``); None without that key."""
    if not isinstance(additional_config, dict) or KEY not in additional_config:
        return None
    raw = additional_config[KEY]
    if not isinstance(raw, dict):
        raise ValueError(f"graphprune: additional_config['graphprune'] must be a dict; got {raw!r}")
    method = raw.get("method", "fastv")
    name = class_name(method) if isinstance(method, str) else None
    if name is None or name.lower() not in METHODS:
        raise ValueError(f"graphprune: method must be one of {METHODS} in vLLM; got {method!r}")
    parameters = {key: value for key, value in raw.items() if key != "method"}
    try:
        return method_from_dict({"name": name, **parameters})
    except ValueError as error:  # the method's own message (its parameters, their values), named as graphprune's
        message = str(error)
        raise ValueError(message if message.startswith("graphprune") else f"graphprune: {message}") from None


def method_of(vllm_config: Any) -> FastV | DART | None:
    return parse(vllm_config.additional_config)


def apply(vllm_config: Any) -> None:
    """Validate the graphprune key of ``vllm_config`` and make the engine safe for its method; no-op without it."""
    method = method_of(vllm_config)
    if method is None:
        return
    name = type(method).__name__
    model_config = vllm_config.model_config
    architecture = model_config.architecture
    if architecture in REFUSED:
        raise ValueError(f"graphprune: {name} in vLLM does not serve {architecture}: {REFUSED[architecture]}")
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"graphprune does not support {architecture} in vLLM; supported architectures: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    if type(method) not in FITTING[architecture]:
        fitting = ", ".join(kind.__name__ for kind in FITTING[architecture])
        raise ValueError(f"graphprune: {name} does not fit {architecture}; its family takes {fitting}")
    try:
        method.check_layers(model_config.hf_text_config.num_hidden_layers)
    except ValueError as error:
        raise ValueError(f"graphprune: {error}") from None
    _refuse(vllm_config, name)
    _force_safe_settings(vllm_config, name)
    _use_graphprune_model(model_config, ARCHITECTURES[architecture][0])
    logger.info(
        "graphprune: %s active on %s: %s (layers %d-%d of %d compute and hold KV blocks for every text token and "
        "ceil(keep * n_visual) visual tokens per request)",
        name,
        architecture,
        ", ".join(f"{key}={value}" for key, value in asdict(method).items()),
        method.k,
        model_config.hf_text_config.num_hidden_layers - 1,
        model_config.hf_text_config.num_hidden_layers,
    )


def _refuse(vllm_config: Any, name: str) -> None:
    """Settings under which a request's prefill can skip this worker's forward, or the forward splits a step."""
    parallel = vllm_config.parallel_config
    if parallel.pipeline_parallel_size > 1:
        raise ValueError(f"graphprune: {name} in vLLM needs pipeline_parallel_size=1 (tensor parallel is supported)")
    if vllm_config.speculative_config is not None:
        raise ValueError(f"graphprune: {name} in vLLM does not support speculative decoding; leave it off")
    if vllm_config.kv_transfer_config is not None or getattr(vllm_config.cache_config, "kv_offloading_size", None):
        raise ValueError(f"graphprune: {name} in vLLM does not support KV connectors or KV offloading; leave them off")
    if (
        getattr(parallel, "decode_context_parallel_size", 1) > 1
        or getattr(parallel, "prefill_context_parallel_size", 1) > 1
    ):
        raise ValueError(f"graphprune: {name} in vLLM needs decode/prefill_context_parallel_size=1; leave them at 1")
    if getattr(parallel, "use_ubatching", False):
        raise ValueError(
            f"graphprune: {name} in vLLM does not support micro-batching (enable_dbo, ubatch_size); leave it off"
        )
    if vllm_config.scheduler_config.disable_hybrid_kv_cache_manager:
        raise ValueError(
            f"graphprune: {name} in vLLM needs the hybrid KV cache manager (layers >= k hold KV blocks for the kept "
            "tokens in their own group); leave disable_hybrid_kv_cache_manager off"
        )
    if getattr(vllm_config, "use_v2_model_runner", False):
        raise ValueError(f"graphprune: {name} in vLLM needs the V1 model runner; set VLLM_USE_V2_MODEL_RUNNER=0")


def _force_safe_settings(vllm_config: Any, name: str) -> None:
    """Whole prompts per step, no shared prefix blocks, no full CUDA graphs: each with a warning when it changes."""
    scheduler, cache, model_config = vllm_config.scheduler_config, vllm_config.cache_config, vllm_config.model_config
    if scheduler.enable_chunked_prefill:
        scheduler.enable_chunked_prefill = False
        logger.warning("graphprune: chunked prefill disabled (%s ranks on the whole prompt at layer k-1)", name)
    if scheduler.max_num_batched_tokens < model_config.max_model_len:
        logger.warning(
            "graphprune: max_num_batched_tokens raised from %d to max_model_len=%d so that no prompt is split",
            scheduler.max_num_batched_tokens,
            model_config.max_model_len,
        )
        scheduler.max_num_batched_tokens = model_config.max_model_len
    # the multimodal budgets were copied from the old max_num_batched_tokens; when one runs out, the scheduler
    # schedules a prompt only up to its next image (vllm/v1/core/sched/scheduler.py _try_schedule_encoder_inputs)
    scheduler.max_num_encoder_input_tokens = max(
        scheduler.max_num_encoder_input_tokens, scheduler.max_num_batched_tokens
    )
    scheduler.encoder_cache_size = max(scheduler.encoder_cache_size, scheduler.max_num_batched_tokens)
    if hasattr(scheduler, "disable_chunked_mm_input"):
        scheduler.disable_chunked_mm_input = True
    if getattr(scheduler, "long_prefill_token_threshold", 0):
        scheduler.long_prefill_token_threshold = 0
    if cache.enable_prefix_caching:
        cache.enable_prefix_caching = False
        logger.warning("graphprune: prefix caching disabled (layers >= k cache only the kept tokens of a prompt)")
    _piecewise_cuda_graphs_only(vllm_config.compilation_config)


def _piecewise_cuda_graphs_only(compilation_config: Any) -> None:
    """No full CUDA graphs: they replay the attention metadata the runner built for layers >= k, not the kept
    tokens' (which graphprune puts in the forward context); piecewise graphs run attention outside the graphs.

    Compilation stays on: steps with a prefill run the decoder eagerly (they rank), decode-only steps its compiled
    code (``gather.PrunedDecoder.scheduled``); ``enforce_eager`` is the user's.
    """
    from vllm.config import CUDAGraphMode

    mode = compilation_config.cudagraph_mode
    if mode is not None and mode.has_full_cudagraphs():
        logger.warning(
            "graphprune: cudagraph_mode %s changed to PIECEWISE (a full CUDA graph would replay the attention "
            "metadata of every token for layers >= k, which hold the kept tokens only)",
            mode.name,
        )
    if mode is None or mode.has_full_cudagraphs():
        compilation_config.cudagraph_mode = CUDAGraphMode.PIECEWISE


def _use_graphprune_model(model_config: Any, architecture: str) -> None:
    """Point the model config at graphprune's subclass of vLLM's model (registered by ``graphprune.vllm.register``)."""
    model_config.hf_config.architectures = [architecture]
    model_arch_config = getattr(model_config, "model_arch_config", None)
    if model_arch_config is not None and getattr(model_arch_config, "architectures", None) is not None:
        model_arch_config.architectures = [architecture]
    model_config._model_info, model_config._architecture = model_config.registry.inspect_model_cls(
        [architecture], model_config
    )
