"""``sweep``: each method against the unpruned model on the same inputs, in batches."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoints import processor_inputs
from ..explain import Report, explain
from ..method_strings import method_string
from ..methods import Method
from ..runtime import STATE_ATTR, optimized
from .metrics import Outputs, compare, continuation
from .samples import Sample, as_sample

METRICS = ("first_token", "sequence", "tokens", "kl", "rank")  # compare()'s per-sample numbers


@dataclass
class MethodResult:
    """One method's numbers over the sweep's samples (``per_sample``: ``compare``'s lists, in sample order).

    ``flops_fraction`` and ``kv_fraction``: pruned over unpruned decoder FLOPs (``graphprune.flops``' paper count)
    and KV-cache bytes, summed over the batches as ``explain`` reports them; ``prefill_time_ratio``: pruned over
    unpruned wall time of the batches' prefills (measured, so it varies run to run)."""

    method: str
    flops_fraction: float
    kv_fraction: float
    prefill_time_ratio: float
    first_token_agreement: float
    sequence_agreement: float
    token_agreement: float
    mean_kl: float
    mean_rank: float
    max_rank: int
    per_sample: dict = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "per_sample"}


@dataclass
class SweepResult:
    """What ``sweep`` measured: a ``MethodResult`` per method; ``reports`` holds, per method string,
    ``explain``'s report on the first samples (for ``Report.plot``)."""

    model: str
    n_samples: int
    max_new_tokens: int
    batch_size: int
    results: list[MethodResult]
    reports: dict[str, Report] = field(default_factory=dict, repr=False)

    def save(self, out, pictures: bool = True) -> list:
        """Write ``sweep.json``, ``sweep.csv``, the chart ``sweep.png`` and (``pictures``) ``kept-<n>.png`` per
        method into the folder ``out``; returns the paths written. The PNGs need matplotlib."""
        from .output import save

        return save(self, out, pictures)


def sweep(
    model: nn.Module,
    processor,
    samples: Iterable,
    methods: list[Method],
    max_new_tokens: int = 16,
    batch_size: int = 4,
    pictures: int = 2,
    progress: bool = True,
) -> SweepResult:
    """Run each of ``methods`` against the unpruned ``model`` on ``samples`` (``Sample``s or dicts with
    ``image``/``images`` and ``prompt``; the prompt goes through ``processor``'s chat template), in batches of
    ``batch_size``, greedy with ``max_new_tokens`` new tokens; ``explain`` reports for the first ``pictures``
    samples. The model is unmodified before and after."""
    if getattr(model, STATE_ATTR, None) is not None:
        raise ValueError("graphprune.sweep needs the unmodified model; call graphprune.restore(model) first")
    if not methods:
        raise ValueError("graphprune.sweep needs at least one method")
    samples = [as_sample(sample) for sample in samples]
    if not samples:
        raise ValueError("graphprune.sweep needs at least one sample")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(
            f"graphprune.sweep: max_new_tokens and batch_size must be >= 1; got {max_new_tokens}, {batch_size}"
        )
    batches = [samples[start : start + batch_size] for start in range(0, len(samples), batch_size)]
    bar = tqdm(total=(1 + len(methods)) * len(batches), desc="graphprune sweep", disable=not progress)
    base, base_times = [], []
    for inputs in _inputs(model, processor, batches):
        outputs, seconds = _run(model, inputs, max_new_tokens)
        base.append(outputs)
        base_times.append(seconds)
        bar.update()
    results, reports = [], {}
    for method in methods:
        name = method_string(method)
        bar.set_postfix_str(name)
        with optimized(model, method):
            results.append(_method_result(model, processor, batches, method, base, base_times, max_new_tokens, bar))
            if pictures > 0:
                (first,) = _inputs(model, processor, [samples[:pictures]])
                reports[name] = explain(model, **first)
    bar.close()
    model_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    return SweepResult(model_name, len(samples), max_new_tokens, batch_size, results, reports)


def _method_result(model, processor, batches, method, base, base_times, max_new_tokens, bar) -> MethodResult:
    per_sample = {metric: [] for metric in METRICS}
    flops, kv, seconds = [0, 0], [0, 0], 0.0
    for inputs, expected in zip(_inputs(model, processor, batches), base, strict=True):
        outputs, elapsed = _run(model, inputs, max_new_tokens)
        seconds += elapsed
        for metric, values in compare(expected, outputs).items():
            per_sample[metric].extend(values.tolist())
        report = explain(model, **inputs)
        flops = [flops[0] + report.flops_before, flops[1] + report.flops_after]
        kv = [kv[0] + report.kv_bytes_before, kv[1] + report.kv_bytes_after]
        bar.update()

    def mean(metric: str) -> float:
        return sum(per_sample[metric]) / len(per_sample[metric])

    return MethodResult(
        method=method_string(method),
        flops_fraction=flops[1] / max(flops[0], 1),
        kv_fraction=kv[1] / max(kv[0], 1),
        prefill_time_ratio=seconds / max(sum(base_times), 1e-12),
        first_token_agreement=mean("first_token"),
        sequence_agreement=mean("sequence"),
        token_agreement=mean("tokens"),
        mean_kl=mean("kl"),
        mean_rank=mean("rank"),
        max_rank=int(max(per_sample["rank"])),
        per_sample=per_sample,
    )


def _inputs(model: nn.Module, processor, batches: list[list[Sample]]) -> Iterator[dict]:
    for batch in batches:
        yield processor_inputs(model, processor, [sample.prompt for sample in batch], [s.pil_images() for s in batch])


@torch.no_grad()
def _run(model: nn.Module, inputs: dict, max_new_tokens: int) -> tuple[Outputs, float]:
    """The batch's greedy continuation and first-token logits, and the wall time of one more prefill."""
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        output_logits=True,
        return_dict_in_generate=True,
    )
    eos = model.generation_config.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    new_tokens = out.sequences[:, inputs["input_ids"].shape[1] :]
    outputs = Outputs(out.logits[0].float().cpu(), continuation(new_tokens, eos_ids, max_new_tokens))
    _synchronize(model)
    start = time.perf_counter()
    model(**inputs, logits_to_keep=1)
    _synchronize(model)
    return outputs, time.perf_counter() - start


def _synchronize(model: nn.Module) -> None:
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
