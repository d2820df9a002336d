"""vLLM plugin tests: real vLLM engines (CPU build) on tiny hub-layout checkpoints, compared with graphprune's HF path.

Each test module skips where vLLM is not importable (the main venv); CI runs them in .venv-vllm (.ci/vllm-venv).
Engines run in-process, one at a time (module-scoped: each starts in ~25 s on 2 cores). The shared helpers are in
``helpers.py``; this file sets vLLM's environment before any test module imports it.
"""

from __future__ import annotations

import importlib.util
import os

if importlib.util.find_spec("vllm") is not None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: apply_model reaches the model
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # apply_model's callables
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
