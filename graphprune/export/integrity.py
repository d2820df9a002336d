"""An export's files as written: the manifest's ``files`` entry records each graph file's size and sha256 and the
weights file's size and its tensors' sha256 (the digests that deduplicate them, ``shared_weights``). Loading an
export checks the sizes (a copy cut short); ``OrtGenerator(path, verify=True)`` and ``graphprune verify PATH`` check
every checksum too (bytes changed in place)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .manifest import FILE, Manifest

CHUNK_BYTES = 1 << 26  # read and hash 64 MiB at a time


def file_records(folder: Path, graph_files: list[str], weights_file: str, tensors: list[dict]) -> dict:
    """The manifest's ``files`` entry for the ``graph_files`` and ``weights_file`` written in ``folder``: each
    file's ``bytes``, a graph file's ``sha256``, the weights file's ``tensors`` (``name``, ``offset``, ``length``,
    ``sha256``)."""
    records = {name: {"bytes": _size(folder / name), "sha256": _digest(folder / name)} for name in graph_files}
    records[weights_file] = {"bytes": _size(folder / weights_file), "tensors": tensors}
    return records


def problems(folder: Path, manifest: Manifest, checksums: bool = False) -> list[str]:
    """What is wrong with the files the manifest records (nothing where it records none): a missing file, another
    size and, with ``checksums`` and the sizes right, each graph file's and weight tensor's sha256."""
    found, records = [], manifest.files or {}
    # a graph file of another graph file's size (swapped) is left to the session's check, which says what it is
    graph_sizes = {record["bytes"] for record in records.values() if "sha256" in record}
    for name, record in records.items():
        path = folder / name
        if not path.is_file():
            found.append(f"{name} is missing")
        elif _size(path) != record["bytes"] and not ("sha256" in record and _size(path) in graph_sizes):
            found.append(
                f"{name} has {_size(path)} bytes where {FILE} records {record['bytes']} "
                "(cut short or changed, e.g. by an interrupted copy)"
            )
    if found or not checksums:
        return found
    for name, record in manifest.files.items():
        if "sha256" in record and _digest(folder / name) != record["sha256"]:
            found.append(f"{name} does not match its sha256 in {FILE}")
        with (folder / name).open("rb") as file:
            for tensor in record.get("tensors", ()):
                if _digest(file, tensor["offset"], tensor["length"]) != tensor["sha256"]:
                    end = tensor["offset"] + tensor["length"]
                    found.append(
                        f"{name}: tensor {tensor['name']!r} (bytes {tensor['offset']}..{end}) does not match its "
                        f"sha256 in {FILE}"
                    )
    return found


def unverifiable(folder: Path, manifest: Manifest) -> str | None:
    """Why the export in ``folder`` cannot be verified (None if it can)."""
    if manifest.files is None:
        return (
            f"graphprune cannot verify {folder}: its {FILE} records no checksums (an export of an older graphprune, "
            "or a TensorRT export); export the model again to verify its files"
        )
    return None


def damaged(folder: Path, problems: list[str]) -> ValueError:
    """The one-line error for the ``problems`` of the export in ``folder``."""
    more = f" (and {len(problems) - 1} more: graphprune verify {folder})" if len(problems) > 1 else ""
    return ValueError(
        f"graphprune cannot run {folder}: {problems[0]}{more}; copy the export again or export the model again"
    )


def _size(path: Path) -> int:
    return path.stat().st_size


def _digest(source, offset: int = 0, length: int | None = None) -> str:
    """The sha256 of ``length`` bytes (all if None) from ``offset`` of ``source``, a path or an open file."""
    if isinstance(source, Path):
        with source.open("rb") as file:
            return _digest(file, offset, length)
    source.seek(offset)
    digest, left = hashlib.sha256(), length
    while left is None or left > 0:
        chunk = source.read(CHUNK_BYTES if left is None else min(left, CHUNK_BYTES))
        if not chunk:
            break
        digest.update(chunk)
        left = None if left is None else left - len(chunk)
    return digest.hexdigest()
