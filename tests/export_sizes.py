"""Sizes of an ONNX export: its bytes on disk against the model's parameter bytes, and ONNX Runtime's memory.

``assert_weights_stored_once(model, folder)`` is the check every exportable family's test calls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

STORED_ONCE = 1.1  # an export folder's bytes / the parameter bytes it needs
LOADED_ONCE = 1.25  # OrtGenerator's peak memory / (parameter bytes + KV cache bytes)


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers, each storage counted once (tied weights once)."""
    storages = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def assert_weights_stored_once(model: torch.nn.Module, folder: Path) -> None:
    """The export in ``folder`` (graphs, weights, manifest, recipe) takes at most ``STORED_ONCE`` x the bytes of
    ``model``'s weights: every weight is on disk once, whichever graphs use it."""
    stored, needed = folder_bytes(folder), parameter_bytes(model)
    assert stored <= STORED_ONCE * needed, f"{folder} holds {stored} bytes for {needed} bytes of weights"


def ort_memory(folder: Path, inputs: dict, max_new_tokens: int, work: Path) -> dict:
    """Run ``OrtGenerator(folder).generate(**inputs)`` in a fresh process (``tests/ort_memory.py``); its memory
    in bytes: ``before`` (resident after the imports, before any session), ``peak`` (the process's peak resident
    size, VmHWM, after the generate) and ``tokens``."""
    arrays = work / "inputs.npz"
    np.savez(arrays, **{name: value.numpy() for name, value in inputs.items() if torch.is_tensor(value)})
    script = Path(__file__).with_name("ort_memory.py")
    run = subprocess.run(
        [sys.executable, str(script), str(folder), str(arrays), str(max_new_tokens)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(run.stdout.splitlines()[-1])
