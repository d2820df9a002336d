"""The command line, run as a user runs it (``python -m graphprune ...``): a wrong value is a one-line error with
exit status 2, found before any model is built, and an existing ``--out`` keeps its files."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def graphprune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "graphprune", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"graphprune {command}: error: ") and result.stdout == ""
    return line


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--k", "99"], "k must satisfy 1 <= k < 8 (the decoder's layer count); got k=99"),
        (["--k", "0"], "k must be an int >= 1"),
        (["--keep", "2"], "keep must be a fraction in (0, 1]"),
        (
            ["--keep", "nan"],
            "keep must be a fraction in (0, 1] (a real number or 0-d tensor), the share of visual tokens kept; got nan",
        ),
        (["--model", "mllama", "--keep", "0"], "keep must be a fraction in (0, 1]"),
        (["--model", "mllama", "--k", "3"], "--k is not an option of CrossAttentionTrim, which --model mllama runs"),
        (["--model", "mllama", "--query", "mean"], "--query is not an option of CrossAttentionTrim"),
        (["--select", "topk"], "--select is not an option of FastV, which --model llava runs"),
    ],
)
def test_demo_refuses_wrong_values_in_one_line(tmp_path, args, match):
    assert match in one_line_error(graphprune("demo", *args, cwd=tmp_path), "demo")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--k", "4"], "k must satisfy 1 <= k < 4"),
        (["--model", "qwen2-vl", "--keep", "1.5"], "keep must be a fraction in (0, 1]"),
        (["--model", "mllama", "--k", "2"], "--k is not an option of CrossAttentionTrim"),
        # every registered family's demo name is a --model choice (the list is the registry's)
        (["--model", "qwen3-vl", "--keep", "1.5"], "keep must be a fraction in (0, 1]"),
        (["--model", "llava-onevision", "--keep", "1.5"], "keep must be a fraction in (0, 1]"),
    ],
)
def test_export_refuses_wrong_values_before_writing(tmp_path, args, match):
    assert match in one_line_error(graphprune("export", "--out", "out", *args, cwd=tmp_path), "export")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_out_folder_is_refused_and_keeps_its_files(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    line = one_line_error(graphprune("export", "--out", "out", cwd=tmp_path), "export")
    assert "--overwrite" in line and "overwrite=True" not in line
    line = one_line_error(graphprune("export", "--out", "out", "--overwrite", cwd=tmp_path), "export")
    assert "holds no manifest.json written by graphprune" in line
    line = one_line_error(graphprune("export", "--out", ".", "--overwrite", cwd=tmp_path / "out"), "export")
    assert "current folder" in line
    assert [path.name for path in tmp_path.rglob("*")] == ["out", "notes.txt"]
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(
    importlib.util.find_spec("torch_tensorrt") is not None and torch.cuda.is_available(),
    reason="torch-tensorrt and a CUDA GPU are here",
)
def test_tensorrt_without_it_is_a_one_line_error(tmp_path):
    line = one_line_error(graphprune("export", "--format", "tensorrt", "--out", "trt", cwd=tmp_path), "export")
    assert "graphprune.export.tensorrt needs" in line and list(tmp_path.iterdir()) == []
