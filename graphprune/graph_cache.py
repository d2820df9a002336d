"""The pruned graphs of a decoder, one pair per dtype and device of its weights.

Captured graphs hold the dtype and device of their capture as literals (``torch.ones(..., device='cpu')``,
casts to float32), so a model cast (``.to(torch.bfloat16)``, ``.half()``) or moved after ``optimize`` gets
graphs captured again on first use at its new dtype and device; the old pair stays for a move back. The
graphs share the decoder's parameters, so a cast costs no copy of the weights. A parameter, buffer or submodule
replaced by another object (``load_state_dict(sd, assign=True)``, ...) drops every pair: the graphs are captured
again on the next call (``decoder_watch``), which also warns once about forward hooks the graphs do not run.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import threading
from collections.abc import Callable, Iterator

import torch
from torch import fx, nn
from tqdm import tqdm

from .decoder_watch import DecoderWatch

logger = logging.getLogger(__name__)

Capture = Callable[[], tuple[fx.GraphModule, fx.GraphModule]]
_capturing: contextvars.ContextVar[nn.Module | None] = contextvars.ContextVar("graphprune_capturing", default=None)


def capturing(decoder: nn.Module) -> bool:
    """Whether this thread is capturing ``decoder``: its stand-in forward must then run the decoder's own."""
    return _capturing.get() is decoder


PROGRESS_DELAY_S = 1.0  # a capture that takes longer shows its bar (on a terminal)


@contextlib.contextmanager
def capture_progress(decoder: nn.Module) -> Iterator[None]:
    """A bar ``graphprune: capturing`` counting the decoder layers that capture has traced (each layer once for the
    prefill graph, once for the decode graph), shown once capture has taken ``PROGRESS_DELAY_S`` and only where
    stderr is a terminal (tqdm ``disable=None``); a layer run by another thread meanwhile does not count."""
    layers = getattr(decoder, "layers", ())
    bar = tqdm(total=2 * len(layers), desc="graphprune: capturing", unit="layer", delay=PROGRESS_DELAY_S, disable=None)

    def traced(module, args):
        if capturing(decoder) and bar.n < bar.total:  # a prefill exported again (shape hints) fills it early
            bar.update()

    hooks = [layer.register_forward_pre_hook(traced) for layer in layers]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        bar.close()


def placement(tensors: list[dict]) -> tuple:
    """The dtype and device of each weight and buffer in ``tensors``, the ``_parameters`` and ``_buffers`` of a
    decoder's modules: what a capture depends on. Read off those dicts (no walk of the module tree: it runs at
    every decoder call)."""
    return tuple((t.dtype, t.device) for named in tensors for t in named.values() if t is not None)


class GraphCache:
    """The graphs of ``GraphDecoder._capture`` (prefill, decode, and their special forms or None) per placement of
    the decoder's weights, under ``torch.compile`` on request (``compile``: optimize's, False or its mode)."""

    def __init__(self, decoder: nn.Module, capture: Capture, compile: bool | str, graphs: dict | None = None):
        self.decoder = decoder
        self.compile = compile
        self._capture = capture
        self._graphs = dict(graphs or {})  # placement -> (prefill, decode, their special forms)
        self._runners: dict = {}  # placement -> the same, callables (compiled or not)
        self._lock = threading.Lock()
        self._watch = DecoderWatch(decoder)
        self._hooks = dict.fromkeys(self._graphs, self._watch.hooks())  # placement -> the hooks captured with

    def graphs(self) -> tuple[fx.GraphModule, fx.GraphModule]:
        """The graphs for the decoder's current placement, captured now if it is new."""
        return self._current()[0]

    def runners(self, check: bool = True) -> tuple[Callable, Callable]:
        """What runs the prefill and decode steps at the decoder's current placement. ``check=False`` (a decode
        step, on a cache that a checked prefill filled) skips the look at replaced tensors and added hooks."""
        if not check:
            return self._entry(placement(self._watch.tensors))[1]
        return self._current()[1]

    def _current(self):
        """The graphs and runners for the decoder as it is now (a replaced tensor drops every pair)."""
        if self._watch.replaced():
            with self._lock:
                if self._watch.replaced():
                    logger.info("graphprune: the decoder's weights were replaced; capturing its graphs again")
                    for entries in (self._graphs, self._runners, self._hooks):
                        entries.clear()
                    self._watch.reset()
        key = placement(self._watch.tensors)
        entry = self._entry(key)
        if not self._watch.warned and self._watch.hook_keys() != tuple(self._hooks[key]):
            self._watch.warn_changed_hooks(self._hooks[key])
            self._hooks[key] = self._watch.hooks()  # inert changes (HF's output recorders) are looked at once
        return entry

    def _entry(self, key: tuple):
        runners = self._runners.get(key)
        if runners is None:
            with self._lock:
                if key not in self._graphs:
                    token = _capturing.set(self.decoder)
                    try:
                        with capture_progress(self.decoder):
                            self._graphs[key] = self._capture()
                    finally:
                        _capturing.reset(token)
                    self._hooks[key] = self._watch.hooks()
                graphs = self._graphs[key]
                if self.compile:
                    graphs = tuple(None if graph is None else torch.compile(graph, dynamic=True) for graph in graphs)
                runners = self._runners.setdefault(key, tuple(graphs))
        return self._graphs[key], runners

    def copied_graphs(self, memo: dict) -> dict:
        """The graphs, deep-copied with ``memo``: in a deep copy of the decoder made with the same memo,
        they use the copy's parameters."""
        return {key: tuple(copy.deepcopy(graph, memo) for graph in pair) for key, pair in self._graphs.items()}
