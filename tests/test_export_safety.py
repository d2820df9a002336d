"""Export folders: ``overwrite=True`` replaces only graphprune's own export (or an empty folder), checked before any
work and swapped in atomically; ``OrtGenerator`` checks the folder it is given and names what is wrong."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")

import graphprune as gp  # noqa: E402
from graphprune.cli import main  # noqa: E402
from graphprune.export.staging import staged_folder, writable_folder  # noqa: E402
from graphprune.testing import llava_inputs, tiny_llava  # noqa: E402

from .helpers import BATCH, export_fixtures  # noqa: E402

METHOD = gp.FastV(k=1, keep=0.5)
ROOT = Path(__file__).resolve().parents[1]


# the one export of this module; tests copy it
model, inputs, exported = export_fixtures(
    lambda: tiny_llava(num_layers=2, seed=2),
    METHOD,
    lambda model: llava_inputs(model, BATCH),
    "llava",
    share="tiny-llava-fastv",
)


@pytest.fixture
def copy(exported, tmp_path) -> Path:
    """A fresh copy of the export, ``tmp_path/llava``, to replace or damage."""
    return Path(shutil.copytree(exported, tmp_path / "llava"))


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def refused(model, inputs, out_dir, match: str) -> None:
    with pytest.raises(FileExistsError, match=match) as error:
        gp.export.onnx(model, out_dir, example_inputs=inputs, overwrite=True)
    assert str(error.value).startswith("graphprune will not write to ") and "\n" not in str(error.value)


# --- data loss: what overwrite=True refuses, before any work, leaving every file as it was


@pytest.mark.parametrize("target", [".", "..", "ABSOLUTE_PARENT"])
def test_overwrite_refuses_the_current_folder_and_those_above_it(model, inputs, tmp_path, monkeypatch, target):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    (tmp_path / "data.csv").write_text("1,2")
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    refused(model, inputs, str(tmp_path) if target == "ABSOLUTE_PARENT" else target, "current folder or one that")
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_the_current_folder_even_when_it_is_an_export(model, inputs, copy, monkeypatch):
    monkeypatch.chdir(copy)
    before = snapshot(copy.parent)
    refused(model, inputs, ".", "current folder")
    assert snapshot(copy.parent) == before


@pytest.mark.slow
def test_overwrite_refuses_the_home_folder_and_takes_an_empty_folder_elsewhere(
    model, inputs, copy, tmp_path, monkeypatch
):
    empty = tmp_path / "empty"
    empty.mkdir()
    for home in (copy, empty):  # refused even as an export or empty
        monkeypatch.setenv("HOME", str(home))
        before = snapshot(tmp_path)
        refused(model, inputs, home, "home folder")
        assert snapshot(tmp_path) == before and home.is_dir()
    monkeypatch.setenv("HOME", str(copy))
    assert gp.export.onnx(model, empty, example_inputs=inputs, overwrite=True) == empty
    assert gp.export.Manifest.read(empty).producer == "graphprune"


def test_the_root_folder_is_refused():
    with pytest.raises(FileExistsError, match="graphprune will not write to /: it is the current folder or one"):
        writable_folder("/", overwrite=True)


def test_overwrite_refuses_a_file(model, inputs, tmp_path):
    (tmp_path / "model.onnx").write_text("my own file")
    refused(model, inputs, tmp_path / "model.onnx", "it is a file")
    assert (tmp_path / "model.onnx").read_text() == "my own file" and len(list(tmp_path.iterdir())) == 1
    refused(model, inputs, tmp_path / "model.onnx" / "out", "model.onnx is a file")


def test_overwrite_refuses_a_folder_that_is_not_a_graphprune_export(model, inputs, tmp_path):
    folder = tmp_path / "results"
    (folder / "runs").mkdir(parents=True)
    (folder / "runs" / "log.txt").write_text("epoch 1")
    (folder / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    refused(model, inputs, folder, "holds no manifest.json written by graphprune")
    with pytest.raises(FileExistsError, match="holds no manifest.json written by graphprune"):
        gp.export.onnx(model, folder, example_inputs=inputs)  # nor suggests overwrite=True for it
    assert snapshot(tmp_path) == before


def test_another_tools_manifest_is_not_graphprunes(model, inputs, copy):
    """Only the manifest's ``"producer": "graphprune"`` makes a folder replaceable, not its file names."""
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["producer"] == "graphprune"
    del manifest["producer"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(copy)
    refused(model, inputs, copy, "holds no manifest.json written by graphprune")
    assert snapshot(copy) == before


def test_overwrite_refuses_an_export_holding_files_graphprune_did_not_write(model, inputs, copy):
    (copy / "my-results.txt").write_text("mine")
    (copy / "plots").mkdir()
    before = snapshot(copy)
    refused(model, inputs, copy, "it holds my-results.txt, plots, which graphprune did not write")
    assert snapshot(copy) == before


def test_overwrite_refuses_a_symbolic_link(model, inputs, copy, tmp_path):
    (tmp_path / "link").symlink_to(copy, target_is_directory=True)
    before = snapshot(copy)
    refused(model, inputs, tmp_path / "link", "symbolic link")
    assert snapshot(copy) == before and (tmp_path / "link").is_symlink()


# --- what overwrite=True does replace


class Abort(Exception):
    pass


@pytest.mark.slow
def test_overwrite_replaces_an_export_and_removes_a_killed_exports_folder_only(model, inputs, copy, tmp_path):
    """An export is replaced, nothing left beside it; the export removes what a killed one left (graphprune's
    marker inside, its process gone); a look-alike folder without the marker, and a running export's, stay."""
    out = copy
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "graphprune_version": "0.0.1"}))
    (tmp_path / "notes.txt").write_text("mine")
    killed = (
        "import os, sys; from pathlib import Path; from graphprune.export.staging import staged_folder\n"
        "with staged_folder(Path(sys.argv[1]), True) as folder:\n"
        "    (folder / 'prefill.onnx').write_text('half written')\n"
        "    os._exit(1)  # killed: no cleanup runs\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    lookalike = tmp_path / ".llava.tmp-mine"
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine")
    with pytest.raises(Abort), staged_folder(out, True) as running:
        assert subprocess.run([sys.executable, "-c", killed, str(out)], env=env, check=False).returncode == 1
        (stale,) = set(tmp_path.glob(".llava.tmp-*")) - {running, lookalike}
        assert (stale / "prefill.onnx").is_file()
        gp.export.onnx(model, out, example_inputs=inputs, overwrite=True)
        assert running.is_dir() and not stale.exists()  # a running export (this process) keeps its folder
        raise Abort
    assert not running.exists()
    assert (lookalike / "notes.txt").read_text() == "mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == [".llava.tmp-mine", "llava", "notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert gp.export.Manifest.read(out).graphprune_version == gp.__version__
    expected = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(gp.export.OrtGenerator(out).generate(**inputs, max_new_tokens=3), expected)


# --- OrtGenerator on a damaged folder: one clear error naming the file


def edit_manifest(folder: Path, edit) -> Path:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return path


def ort_error(folder: Path, error: type, match: str) -> str:
    with pytest.raises(error, match=match) as raised:
        gp.export.OrtGenerator(folder)
    message = str(raised.value)
    assert "\n" not in message and "graphprune" in message
    return message


def test_a_broken_manifest_names_the_file(copy):
    (copy / "manifest.json").write_text('{"format": "onnx", ')
    assert str(copy / "manifest.json") in ort_error(copy, ValueError, "not valid JSON|Expecting")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.pop("graphs"), r"missing keys \['graphs'\]"),
        (lambda m: m.update(graphs=["prefill.onnx"]), "'graphs' must be an object"),
        (lambda m: m.update(opset="18"), "'opset' must be an int"),
        (lambda m: m["graphs"]["decode"].pop("outputs"), r"graph 'decode' lacks \['outputs'\]"),
        (lambda m: m.update(extra=1), r"unknown keys \['extra'\]"),
        (lambda m: m.update(producer="other-tool"), "producer must be 'graphprune'"),
        (lambda m: m.update(model={}), r"'model' of a llava export lacks \['num_layers'"),
        (lambda m: m.update(visual_budget={}), r"'visual_budget' of a llava export lacks \['tokens_per_image'"),
        (lambda m: m["method"].update(keep="half"), "manifest method: keep must be a fraction"),
        (lambda m: m["method"].update(name="Other"), "method name must be one of"),
        (lambda m: m.update(dtype="float99"), "dtype must be one of"),
    ],
)
def test_a_manifest_off_its_schema_names_the_file_and_the_key(copy, edit, match):
    path = edit_manifest(copy, edit)
    assert ort_error(copy, ValueError, match).startswith(f"graphprune cannot read {path}: ")


def test_a_missing_graph_file_is_named(copy):
    (copy / "decode.onnx").unlink()
    ort_error(copy, FileNotFoundError, r"decode.onnx \(the 'decode' graph in manifest.json\) is missing")


def test_swapped_graph_files_are_named_before_generate(copy):
    (copy / "prefill.onnx").rename(copy / "swap")
    (copy / "decode.onnx").rename(copy / "prefill.onnx")
    (copy / "swap").rename(copy / "decode.onnx")
    message = ort_error(copy, ValueError, "prefill.onnx is not the 'prefill' graph that manifest.json lists")
    assert "past.0.key" in message


def test_a_manifest_without_a_graph_the_family_needs_is_refused(copy):
    edit_manifest(copy, lambda m: m["graphs"].pop("embed"))
    ort_error(copy, ValueError, r"lists no \['embed'\] graph, which a llava export has")


def test_a_tensorrt_export_is_refused_by_the_onnx_runtime_generator(copy):
    edit_manifest(copy, lambda m: m.update(format="torch_tensorrt"))
    ort_error(copy, ValueError, "runs ONNX exports; .* holds a torch_tensorrt export")


# --- damaged files: sizes checked before any session, checksums on request (verify=True, graphprune verify)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def verify_command(folder: Path, capsys) -> tuple[int, str, str]:
    """``graphprune verify folder`` in this process: exit status, stdout, stderr."""
    status = main(["verify", str(folder)])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("manifest_checksums", [True, False], ids=["manifest", "older-manifest"])
def test_a_weights_file_cut_short_is_named_before_any_session(copy, manifest_checksums):
    if not manifest_checksums:  # an export of an older graphprune: the graphs' external-data ranges say it
        edit_manifest(copy, lambda m: m.pop("files"))
    weights = copy / "weights.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    message = ort_error(copy, ValueError, "weights.bin has .* bytes.*cut short.*copy the export again")
    assert str(copy) in message


def test_flipped_weight_bytes_are_named_by_verify(copy, capsys):
    record = json.loads((copy / "manifest.json").read_text())["files"]["weights.bin"]
    tensor = max(record["tensors"], key=lambda t: t["length"])
    flip_byte(copy / "weights.bin", tensor["offset"] + tensor["length"] // 2)
    gp.export.OrtGenerator(copy)  # the sizes are right: only the checksums find it
    named = rf"weights.bin: tensor '{tensor['name']}' \(bytes {tensor['offset']}\.\.\d+\) does not match its sha256"
    with pytest.raises(ValueError, match=named) as raised:
        gp.export.OrtGenerator(copy, verify=True)
    assert str(copy) in str(raised.value) and "\n" not in str(raised.value)
    status, out, err = verify_command(copy, capsys)
    assert status == 1 and re.search(named, err) and out == ""


def test_a_changed_graph_file_is_named_by_verify(copy, capsys):
    flip_byte(copy / "decode.onnx", (copy / "decode.onnx").stat().st_size // 2)
    status, _, err = verify_command(copy, capsys)
    assert status == 1 and "decode.onnx does not match its sha256 in manifest.json" in err


def test_verify_passes_an_intact_export(exported, capsys):
    gp.export.OrtGenerator(exported, verify=True)
    status, out, _ = verify_command(exported, capsys)
    files = json.loads((exported / "manifest.json").read_text())["files"]
    assert status == 0 and f"OK: {len(files)} files and {len(files['weights.bin']['tensors'])} weight tensors" in out


def test_verify_says_an_older_manifest_records_no_checksums(copy, capsys):
    edit_manifest(copy, lambda m: m.pop("files"))
    with pytest.raises(ValueError, match="graphprune cannot verify .*records no checksums.*export the model again"):
        gp.export.OrtGenerator(copy, verify=True)
    with pytest.raises(SystemExit) as exit:
        main(["verify", str(copy)])
    assert exit.value.code == 2 and "records no checksums" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="atomic exchange is Linux's renameat2")
def test_replacing_an_export_never_leaves_the_folder_missing(tmp_path):
    import threading

    from graphprune.export.staging import _swap

    out_dir = tmp_path / "export"
    out_dir.mkdir()
    (out_dir / "manifest.json").write_text("0")
    missing, done = [], threading.Event()

    def watch():
        while not done.is_set():
            if not (out_dir / "manifest.json").exists():
                missing.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for round_ in range(1, 200):
            new = tmp_path / f"new{round_}"
            new.mkdir()
            (new / "manifest.json").write_text(str(round_))
            _swap(new, out_dir)
    finally:
        done.set()
        watcher.join()
    assert (out_dir / "manifest.json").read_text() == "199"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # every old export deleted
    assert not missing


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from Linux /proc")
def test_a_staging_folder_whose_process_id_was_reused_is_stale(tmp_path):
    from graphprune.export.staging import MARKER, _remove_stale, _start_time

    out_dir = tmp_path / "export"
    mine, reused = tmp_path / ".export.tmp-aaaa1111", tmp_path / ".export.tmp-bbbb2222"
    for folder, started in ((mine, _start_time(os.getpid())), (reused, "1")):  # one live pid, two start times
        folder.mkdir()
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        (folder / MARKER).write_text(json.dumps(owner))
    _remove_stale(out_dir)
    assert mine.exists() and not reused.exists()
