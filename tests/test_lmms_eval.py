"""lmms-eval's ``--model graphprune`` (``graphprune.eval.lmms``, the ``graphprune[eval]`` extra) on a task defined
from a local JSON dataset (no hub): its responses are what ``optimize`` + ``generate`` give on the same batch (and, with
``method=none``, what the unmodified model gives), so a task whose answers are those scores exact_match 1.0.
Skipped where lmms-eval is not installed (it needs torchvision; see the README's "Evaluating with lmms-eval")."""

import json

import pytest
import torch

import graphprune as gp
from graphprune.checkpoints import load, processor_inputs
from graphprune.testing import tiny_llava

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install 'graphprune[eval]')")
pytest.importorskip("PIL", reason="the processors need Pillow (in the dev extra)")

from lmms_eval.evaluator import simple_evaluate  # noqa: E402
from lmms_eval.models import MODEL_REGISTRY_V2  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

from graphprune.eval.lmms import manifest  # noqa: E402
from graphprune.tiny_checkpoints import random_image, save_llava  # noqa: E402

QUESTIONS = ["w9 w10", "w11 w12 w13", "w14"]
NEW_TOKENS = 3
TASK = """task: graphprune_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: "{{{{question}}}}"
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: {new_tokens}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
UTILS = """from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_llava(tiny_llava(num_layers=3), tmp_path_factory.mktemp("lmms") / "llava")


def _task(root, answers: list[str]):
    """A task folder: the YAML, its ``utils.py`` and the JSONL dataset whose answers are ``answers``."""
    root.mkdir()
    rows = []
    for i, (question, answer) in enumerate(zip(QUESTIONS, answers, strict=True)):
        random_image(i, 32 + 8 * i).save(root / f"{i}.png")
        rows.append(json.dumps({"image": str(root / f"{i}.png"), "question": question, "answer": answer}))
    (root / "data.jsonl").write_text("\n".join(rows) + "\n")
    (root / "task.yaml").write_text(TASK.format(data=root / "data.jsonl", new_tokens=NEW_TOKENS))
    (root / "utils.py").write_text(UTILS)
    return root


def _expected(folder, method) -> list[str]:
    model, processor = load(folder)
    images = [[random_image(i, 32 + 8 * i)] for i in range(len(QUESTIONS))]
    inputs = processor_inputs(model, processor, QUESTIONS, images)
    with torch.no_grad():
        if method is None:
            ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        else:
            with gp.optimized(model, method):
                ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return processor.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize(
    ("model_args", "method"), [("method=fastv,k=1,keep=0.3", gp.FastV(k=1, keep=0.3)), ("method=none", None)]
)
def test_lmms_eval_runs_the_optimized_checkpoint(folder, tmp_path, model_args, method):
    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
    expected = _expected(folder, method)
    assert all(expected) and (method is None or expected != _expected(folder, None))  # the method changes answers
    task = _task(tmp_path / "task", expected)
    results = simple_evaluate(
        model="graphprune",
        model_args=f"pretrained={folder},{model_args}",
        tasks=["graphprune_local"],
        batch_size=len(QUESTIONS),
        device="cpu",
        log_samples=True,
        task_manager=TaskManager(include_path=str(task)),
    )
    responses = [
        sample["resps"][0][0] for sample in sorted(results["samples"]["graphprune_local"], key=lambda s: s["doc_id"])
    ]
    assert responses == expected
    assert results["results"]["graphprune_local"]["exact_match,none"] == 1.0


def test_beam_search_is_refused(folder):
    from graphprune.eval.lmms import GraphpruneModel

    model = GraphpruneModel(pretrained=str(folder), method="none", device="cpu")
    with pytest.raises(ValueError, match=r"num_beams=3 \(beam search\) is not supported"):
        model._generate([("w9", {"num_beams": 3, "max_new_tokens": 2}, None, 0, "task", "test")])
    with pytest.raises(ValueError, match="takes pretrained, method, k, keep, query, select, dtype, device"):
        GraphpruneModel(pretrained=str(folder), method="none", colour="red")
