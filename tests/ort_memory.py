"""Memory of OrtGenerator in this process: ``python tests/ort_memory.py EXPORT INPUTS.npz MAX_NEW_TOKENS`` prints
``{"before", "peak", "tokens"}`` as JSON (bytes; see tests/export_sizes.py's ``ort_memory``)."""

import json
import sys
from pathlib import Path

import numpy as np

from graphprune.export.ort_generator import OrtGenerator


def resident(field: str) -> int:
    """``field`` (VmRSS, VmHWM) of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


if __name__ == "__main__":
    folder, arrays, max_new_tokens = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3])
    inputs = {name: arrays[name] for name in arrays.files}
    before = resident("VmRSS")
    tokens = OrtGenerator(folder).generate(**inputs, max_new_tokens=max_new_tokens)
    print(json.dumps({"before": before, "peak": resident("VmHWM"), "tokens": tokens.tolist()}))
