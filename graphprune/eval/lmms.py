"""lmms-eval's ``--model graphprune``: any supported checkpoint, optimized with any method, batched through
``generate``.

``python -m lmms_eval --model graphprune --model_args pretrained=ID,method=fastv,k=2,keep=0.5 --tasks ...``;
``method=none`` evaluates the unmodified model. graphprune registers the model through the ``lmms_eval.models``
entry point (``manifest``); install with ``pip install 'graphprune[eval]'``. Only ``generate_until`` tasks.
"""

from __future__ import annotations

import json
from itertools import groupby

import torch
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

from ..checkpoints import load, processor_inputs
from ..method_strings import parse_method
from ..runtime import optimize

OPTIONS = ("k", "keep", "query", "select")  # method options that model_args may carry


def manifest() -> ModelManifest:
    """The ``lmms_eval.models`` entry point's payload: ``--model graphprune``."""
    return ModelManifest(model_id="graphprune", simple_class_path=f"{__name__}.GraphpruneModel")


class GraphpruneModel(lmms):
    """``pretrained`` (a hub id or a local folder, with its processor) loaded in ``dtype`` on ``device``, optimized with
    ``method`` (a method string, e.g. ``fastv`` or ``fastv:k=2,keep=0.5``; ``none``: unmodified) and the options
    ``k``, ``keep``, ``query``, ``select`` given beside it; requests run ``batch_size`` at a time, greedy unless a
    task's ``do_sample`` asks otherwise."""

    def __init__(
        self,
        pretrained: str,
        method: str = "fastv",
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int = 128,
        **options,
    ) -> None:
        super().__init__()
        method_options = {key: options.pop(key) for key in OPTIONS if options.get(key) is not None}
        options.pop("max_batch_size", None)  # lmms-eval passes it to every model
        if options:
            raise ValueError(
                f"graphprune's lmms-eval model takes pretrained, method, {', '.join(OPTIONS)}, dtype, "
                f"device, batch_size, max_new_tokens; got also {sorted(options)}"
            )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.processor = load(pretrained, dtype, device)
        if str(method).lower() != "none":
            written = ",".join(f"{key}={value}" for key, value in method_options.items())
            self.method = parse_method(f"{method},{written}" if ":" in method and written else f"{method}:{written}")
            optimize(self.model, self.method)
        elif method_options:
            raise ValueError(f"graphprune: method=none takes no method options; got {sorted(method_options)}")
        else:
            self.method = None
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    def generate_until(self, requests) -> list[str]:
        """Each request's continuation: its context after its visuals, through the processor's chat template,
        generated in batches of requests with the same generation arguments and cut at the first ``until``."""
        answers: list[str | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: json.dumps(requests[i].args[1], sort_keys=True, default=str))
        for _, group in groupby(order, key=lambda i: json.dumps(requests[i].args[1], sort_keys=True, default=str)):
            group = list(group)
            for start in range(0, len(group), self.batch_size):
                batch = group[start : start + self.batch_size]
                for i, text in zip(batch, self._generate([requests[i].args for i in batch]), strict=True):
                    answers[i] = text
        return answers

    def _generate(self, arguments: list[tuple]) -> list[str]:
        contexts, images = [], []
        for context, _, doc_to_visual, doc_id, task, split in arguments:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
            contexts.append(context)
            images.append([visual.convert("RGB") for visual in visuals or []])
        settings = dict(arguments[0][1])
        until = settings.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        if int(settings.get("num_beams") or 1) > 1:
            raise ValueError(
                f"graphprune's lmms-eval model generates greedily or by sampling; num_beams={settings['num_beams']} "
                "(beam search) is not supported"
            )
        generate = {"max_new_tokens": int(settings.get("max_new_tokens", self.max_new_tokens)), "do_sample": False}
        if settings.get("do_sample") and float(settings.get("temperature", 1.0)) > 0:
            sampling = {key: float(settings[key]) for key in ("temperature", "top_p") if settings.get(key) is not None}
            generate |= {"do_sample": True, **sampling}
        inputs = processor_inputs(self.model, self.processor, contexts, images)
        with torch.no_grad():
            ids = self.model.generate(**inputs, **generate)
        texts = self.processor.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [_cut(text, until) for text in texts]

    def loglikelihood(self, requests):
        raise NotImplementedError("graphprune's lmms-eval model runs generate_until tasks only, not loglikelihood")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("graphprune's lmms-eval model runs generate_until tasks only, not multi-round ones")


def _cut(text: str, until: list[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text
