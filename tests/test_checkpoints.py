"""Your own checkpoint (``graphprune.checkpoints``) and the command line on it: a tiny hub-layout LLaVA folder with its
real processor (``graphprune.tiny_checkpoints``) loads with the saved weights; its processor's inputs reach the
model; ``explain`` and ``export`` take it as ``--model`` with ``--method``; an unsupported architecture, a missing
processor and a bad method string are one-line errors found before the weights load."""

import json
import math
import re
import shutil

import pytest
import torch
from transformers import LlavaForConditionalGeneration

import graphprune as gp
from graphprune.checkpoints import CheckpointError, chat_prompt, load, processor_inputs
from graphprune.cli import main
from graphprune.testing import IMAGE_TOKEN_ID, tiny_gemma3, tiny_llava

from .test_cli import graphprune, one_line_error

pytest.importorskip("PIL", reason="the processors need Pillow (in the dev extra)")

from graphprune.tiny_checkpoints import random_image, save_gemma3_processor, save_llava  # noqa: E402

LAYERS = 3


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    model = tiny_llava(num_layers=LAYERS)
    return model, save_llava(model, tmp_path_factory.mktemp("checkpoints") / "llava")


@pytest.fixture(scope="module")
def broken_folders(llava_folder, tmp_path_factory):
    """``unsupported``: the checkpoint with another architecture in its config; ``no-processor``: its config and
    weights only."""
    _, folder = llava_folder
    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(folder, root / "unsupported")
    config = json.loads((root / "unsupported" / "config.json").read_text())
    (root / "unsupported" / "config.json").write_text(json.dumps(config | {"architectures": ["LlavaForTalking"]}))
    (root / "no-processor").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, root / "no-processor" / name)
    return root


def test_load_gives_the_saved_weights_and_the_processor(llava_folder):
    model, folder = llava_folder
    loaded, processor = load(folder)
    assert type(loaded) is type(model) and not loaded.training and type(processor).__name__ == "LlavaProcessor"
    state = loaded.state_dict()
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    half, _ = load(folder, "float16")
    assert {parameter.dtype for parameter in half.parameters()} == {torch.float16}


def test_processor_inputs_place_every_image_and_pad_left(llava_folder):
    model, folder = llava_folder
    _, processor = load(folder)
    images = [[random_image(0, 40)], [random_image(1, 24, 50), random_image(2, 32)]]
    inputs = processor_inputs(model, processor, ["w9 w10 w11 w12 w13 w14", "w20"], images)
    per_image = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    assert (inputs["input_ids"] == IMAGE_TOKEN_ID).sum(-1).tolist() == [per_image, 2 * per_image]
    assert inputs["attention_mask"][:, -1].all() and not inputs["attention_mask"][0, 0]  # sample 0 is shorter
    with torch.no_grad():
        assert model(**inputs).logits.isfinite().all()


def test_a_chat_template_that_places_images_writes_the_prompt(llava_folder):
    _, folder = llava_folder
    _, processor = load(folder)
    assert chat_prompt(processor, "w9 w10", 2) == "<image> <image> w9 w10"  # the tiny template lists content raw
    processor.chat_template = (
        "{% for m in messages %}USER:{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %} "
        "{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    )
    assert chat_prompt(processor, "w9 w10", 1) == "USER:<image> w9 w10 ASSISTANT:"


def test_gemma3_processor_inputs_hold_each_image_sequence(tmp_path):
    model = tiny_gemma3()
    model.save_pretrained(tmp_path)
    save_gemma3_processor(model.config, tmp_path)
    loaded, processor = load(tmp_path)
    assert type(loaded).__name__ == "Gemma3ForConditionalGeneration"
    inputs = processor_inputs(loaded, processor, ["w9 w10", "w11"], [[random_image(0, 40)], [random_image(1, 20)]])
    tokens = model.config.mm_tokens_per_image
    assert (inputs["input_ids"] == model.config.image_token_id).sum(-1).tolist() == [tokens, tokens]
    with torch.no_grad():
        assert loaded(**inputs).logits.isfinite().all()


def test_an_unsupported_architecture_or_a_missing_processor_is_a_one_line_error(broken_folders, tmp_path):
    with pytest.raises(CheckpointError, match="does not support the checkpoint's architecture LlavaForTalking; sup"):
        load(broken_folders / "unsupported")
    with pytest.raises(CheckpointError, match="needs the checkpoint's processor"):
        load(broken_folders / "no-processor")
    with pytest.raises(CheckpointError, match="no checkpoint folder at"):
        load(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="dtype must be one of float32, float16, bfloat16; got 'half'"):
        load(broken_folders / "no-processor", "half")


def cli_error(capsys, *args: str) -> str:
    """The one line that ``graphprune ARGS`` (run in this process) ends with, exit status 2."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"graphprune {args[0]}: error: ")
    return line


def test_the_command_line_refuses_a_checkpoint_in_one_line_before_loading_it(
    llava_folder, broken_folders, tmp_path, capsys, monkeypatch
):
    _, folder = llava_folder
    cases = [
        (["--model", str(broken_folders / "unsupported")], "does not support the checkpoint's architecture"),
        (["--model", str(broken_folders / "no-processor")], "needs the checkpoint's processor (AutoProcessor)"),
        (["--model", str(folder), "--method", "fastv:k=2,kep=0.5"], "bad method string 'fastv:k=2,kep=0.5'"),
        (
            ["--model", str(folder), "--method", "trim:keep=0.5"],
            "llava checkpoints run FastV, DART, PDrop; got CrossAttentionTrim",
        ),
        (["--model", str(folder), "--method", "fastv:k=3"], f"k must satisfy 1 <= k < {LAYERS}"),
        (["--model", str(folder), "--method", "pdrop:layers=1/3"], f"layers must satisfy 1 <= l < {LAYERS}"),
        (["--model", str(folder), "--select", "topk"], "llava runs FastV (k, keep, query)"),
        (["--model", str(folder), "--method", "fastv", "--keep", "0.5"], "give --method or --keep, not both"),
        (["--model", "llava", "--method", "trim:keep=0.5"], "--model llava runs FastV; --method 'trim:keep=0.5' is"),
    ]
    image = tmp_path / "image.png"
    random_image(0, 32).save(image)
    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained", None)  # no case may load weights
    for args, match in cases:
        assert match in cli_error(capsys, "explain", "--image", str(image), *args)
        if "--select" not in args:  # export has no --select (CrossAttentionTrim exports select='topk' only)
            assert match in cli_error(capsys, "export", "--out", str(tmp_path / "out"), *args)
    assert not (tmp_path / "out").exists()
    # as a user runs it: a separate process
    assert cases[0][1] in one_line_error(
        graphprune("explain", "--image", str(image), *cases[0][0], cwd=tmp_path), "explain"
    )


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
def test_explain_on_a_checkpoint_keeps_what_the_api_keeps(llava_folder, tmp_path):
    model, folder = llava_folder
    random_image(3, 48, 40).save(tmp_path / "image.png")
    result = graphprune(
        "explain", "--model", str(folder), "--image", "image.png", "--method", "fastv:k=1,keep=0.25", "--prompt",
        "w9 w10 w11", "--out", "kept.png", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    kept = re.search(r"kept (\d+)/(\d+) visual tokens: (\[[\d, ]*\])", result.stdout)
    assert kept is not None and int(kept[2]) == 16 and int(kept[1]) == math.ceil(0.25 * 16)
    _, processor = load(folder)
    from PIL import Image

    inputs = processor_inputs(model, processor, ["w9 w10 w11"], [[Image.open(tmp_path / "image.png").convert("RGB")]])
    with gp.optimized(model, gp.FastV(k=1, keep=0.25)):
        assert gp.explain(model, **inputs).kept[0].tolist() == json.loads(kept[3])
    assert (tmp_path / "kept.png").stat().st_size > 0


@pytest.mark.slow
def test_export_on_a_checkpoint_matches_pytorch(llava_folder, tmp_path):
    _, folder = llava_folder
    result = graphprune(
        "export", "--model", str(folder), "--method", "fastv:k=1,keep=0.5", "--out", "out", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "ONNX Runtime greedy tokens equal PyTorch's" in result.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {"name": "FastV", "k": 1, "keep": 0.5, "query": "last"}.items() <= manifest["method"].items()
