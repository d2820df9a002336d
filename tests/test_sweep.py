"""``graphprune.sweep`` and ``graphprune sweep`` on a tiny hub-layout LLaVA with its real processor: keep=1.0 agrees
exactly (agreement 1.0, KL 0); a method's numbers in a sweep equal those computed by hand from that method run alone
against the unmodified model; the files (JSON, CSV, chart, pictures); the command line."""

import csv
import json
import math

import pytest
import torch

import graphprune as gp
from graphprune.checkpoints import load, processor_inputs
from graphprune.fidelity import Sample, load_samples
from graphprune.fidelity.metrics import ENDED, continuation
from graphprune.fidelity.output import COLUMNS, pareto_front
from graphprune.method_strings import method_string
from graphprune.testing import IMAGE_TOKEN_ID, tiny_llava

from .test_cli import graphprune, one_line_error

pytest.importorskip("PIL", reason="the processors need Pillow (in the dev extra)")
pytest.importorskip("matplotlib", reason="the sweep's chart needs matplotlib (in the dev extra)")

from graphprune.tiny_checkpoints import random_image, save_llava  # noqa: E402

METHODS = [gp.FastV(k=1, keep=1.0), gp.FastV(k=1, keep=0.3)]
NEW_TOKENS, BATCH = 4, 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = save_llava(tiny_llava(num_layers=3), tmp_path_factory.mktemp("sweep") / "llava")
    model, processor = load(folder)
    return model, processor, folder


@pytest.fixture(scope="module")
def samples():
    """Five prompts: images of different sizes, one prompt with two images (batches of 2: padding differs)."""
    images = [random_image(seed, 24 + 8 * seed, 48 - 4 * seed) for seed in range(6)]
    prompts = ["w9 w10", "w11 w12 w13 w14 w15", "w16", "w17 w18 w19", "w20 w21"]
    counts = [1, 1, 2, 1, 1]
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [Sample(images[s : s + n], p) for s, n, p in zip(starts, counts, prompts, strict=True)]


@pytest.fixture(scope="module")
def result(checkpoint, samples):
    model, processor, _ = checkpoint
    return gp.sweep(model, processor, samples, METHODS, NEW_TOKENS, BATCH, pictures=2, progress=False)


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
def test_keep_1_agrees_exactly(result, samples):
    row = result.results[0]
    assert row.method == method_string(METHODS[0])
    assert (row.first_token_agreement, row.sequence_agreement, row.token_agreement) == (1.0, 1.0, 1.0)
    assert (row.mean_kl, row.mean_rank, row.max_rank) == (0.0, 0.0, 0)
    assert (row.flops_fraction, row.kv_fraction) == (1.0, 1.0)
    assert all(len(values) == len(samples) for values in row.per_sample.values())
    assert row.per_sample["kl"] == [0.0] * len(samples)


def _said(tokens: list[int], eos: set[int]) -> list[int]:
    """The new tokens up to and with the first end of sequence."""
    ends = [i for i, token in enumerate(tokens) if token in eos]
    return tokens[: ends[0] + 1] if ends else tokens


def _greedy(model, inputs):
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    return out.sequences[:, inputs["input_ids"].shape[1] :].tolist(), out.logits[0].double()


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
def test_a_method_in_a_sweep_gives_what_it_gives_alone(checkpoint, samples, result):
    model, processor, _ = checkpoint
    method = METHODS[1]
    eos = {model.generation_config.eos_token_id} - {None}
    batches = [samples[i : i + BATCH] for i in range(0, len(samples), BATCH)]
    inputs = [processor_inputs(model, processor, [s.prompt for s in b], [s.pil_images() for s in b]) for b in batches]
    unpruned = [_greedy(model, batch) for batch in inputs]
    with gp.optimized(model, method):
        pruned = [_greedy(model, batch) for batch in inputs]
    first, sequence, tokens, kl, rank, flops = [], [], [], [], [], [0, 0]
    for batch, (base_ids, base_logits), (ids, logits) in zip(inputs, unpruned, pruned, strict=True):
        for i, (expected, got) in enumerate(zip(base_ids, ids, strict=True)):
            expected, got = _said(expected, eos), _said(got, eos)
            first.append(float(expected[0] == got[0]))
            sequence.append(float(expected == got))
            tokens.append(sum(a == b for a, b in zip(expected, got, strict=False)) / NEW_TOKENS)
            log_p, log_q = base_logits[i].log_softmax(-1), logits[i].log_softmax(-1)
            kl.append(float(torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="sum")))
            rank.append(float((logits[i].float() > logits[i].float()[base_logits[i].argmax()]).sum()))
            n_tokens = int(batch["attention_mask"][i].sum())
            before, after = gp.flops(
                model.config, method, n_tokens, int((batch["input_ids"][i] == IMAGE_TOKEN_ID).sum())
            )
            flops = [flops[0] + before, flops[1] + after]
    row = result.results[1]
    assert row.per_sample["first_token"] == first and row.per_sample["sequence"] == sequence
    assert row.per_sample["tokens"] == pytest.approx(tokens, abs=1e-12)
    assert row.per_sample["kl"] == pytest.approx(kl, rel=1e-9, abs=1e-12)
    assert row.per_sample["rank"] == rank and row.max_rank == max(rank)
    assert row.flops_fraction == pytest.approx(flops[1] / flops[0], rel=1e-12)
    assert row.first_token_agreement == pytest.approx(sum(first) / len(first))
    assert 0 < row.kv_fraction < 1 and row.flops_fraction < 1 and max(kl) > 0  # the method pruned something


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
def test_the_files_hold_the_results(result, tmp_path):
    paths = result.save(tmp_path)
    assert [path.name for path in paths[:3]] == ["sweep.json", "sweep.csv", "sweep.png"]
    assert len(paths) == 3 + len(METHODS) and all(path.stat().st_size > 0 for path in paths)
    document = json.loads(paths[0].read_text())
    assert [row["method"] for row in document["methods"]] == [row.method for row in result.results]
    assert document["methods"][1]["per_sample"] == result.results[1].per_sample
    with paths[1].open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [float(row["mean_kl"]) for row in rows] == [row.mean_kl for row in result.results]
    report = result.reports[result.results[1].method]
    assert len(report.kept) == 2 and report.n_kept == [math.ceil(0.3 * n) for n in report.n_visual]


def test_pareto_front_and_continuations():
    assert pareto_front([(0.5, 0.9), (0.4, 0.9), (0.3, 0.5), (0.6, 0.95), (0.7, 0.8)]) == [2, 1, 3]
    new = torch.tensor([[5, 2, 7], [2, 9, 9]])
    assert continuation(new, [2], 4).tolist() == [[5, 2, ENDED, ENDED], [2, ENDED, ENDED, ENDED]]


def test_bad_samples_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image"):
        load_samples(tmp_path / "empty")
    (tmp_path / "s.jsonl").write_text('{"image": "a.png"}\n{"prompt": "w9"}\n')
    with pytest.raises(ValueError, match=r"s.jsonl:2: graphprune: a sample is .* 'image' or 'images'"):
        load_samples(tmp_path / "s.jsonl")
    (tmp_path / "s.jsonl").write_text('{"images": ["a.png", "/b.png"]}\n')
    (sample,) = load_samples(tmp_path / "s.jsonl", prompt="w9")
    assert sample.images == [tmp_path / "a.png", "/b.png"] and sample.prompt == "w9"


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
def test_the_command_line_sweeps_a_checkpoint(checkpoint, tmp_path):
    _, _, folder = checkpoint
    (tmp_path / "images").mkdir()
    for seed in range(2):
        random_image(seed, 32).save(tmp_path / "images" / f"{seed}.png")
    line = one_line_error(graphprune("sweep", "--model", str(folder), "--images", "images", "--methods", "fastv:kep=1",
                                     "--out", "out", cwd=tmp_path), "sweep")  # fmt: skip
    assert "bad method string 'fastv:kep=1'" in line and not (tmp_path / "out").exists()
    result = graphprune(
        "sweep", "--model", str(folder), "--images", "images", "--methods", "fastv:k=1,keep=1.0", "--out", "out",
        "--max-new-tokens", "3", "--pictures", "0", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "first token 100.0%  sequence 100.0%  tokens 100.0%  KL 0.0000  rank 0.00 (max 0)" in result.stdout
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["sweep.csv", "sweep.json", "sweep.png"]
