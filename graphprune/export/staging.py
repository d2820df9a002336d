"""Where an export is written: ``out_dir`` is checked before any work, the files go to a marked hidden folder
beside it, and that folder is swapped in at the end (atomically exchanged with the old export on Linux, which is
then deleted)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from .manifest import FILE, PRODUCER
from .trt_recipe import GUIDE, SCRIPT

MARKER = ".graphprune-staging"  # in every hidden folder graphprune makes beside out_dir: {"pid", "host"}
KINDS = ("tmp", "old")  # .{name}.tmp-*: a new export being written; .{name}.old-*: an old one being deleted


def writable_folder(out_dir: str | Path, overwrite: bool, flag: str = "overwrite=True") -> Path:
    """``out_dir`` as a Path, if graphprune may write there: a new path, or (with ``overwrite``) an empty folder
    or a graphprune export that holds only what graphprune wrote. Otherwise ``FileExistsError``; ``flag``
    names the overwrite switch in the message."""
    out_dir = Path(out_dir)
    problem = _refusal(out_dir)
    if problem is not None:
        problem += f" ({flag} replaces only an empty folder or a graphprune export)"
    elif out_dir.exists() and not overwrite:
        problem = f"it exists; pass {flag} to replace it"
    if problem is not None:
        raise FileExistsError(f"graphprune will not write to {out_dir}: {problem}")
    return out_dir


def _refusal(out_dir: Path) -> str | None:
    """Why graphprune may not replace ``out_dir``; None if it may (a new path, an empty folder, its own export)."""
    if not out_dir.exists() and not out_dir.is_symlink():
        above = next(parent for parent in out_dir.absolute().parents if parent.exists())
        return None if above.is_dir() else f"{above} is a file"
    if out_dir.is_symlink():
        return "it is a symbolic link"
    if not out_dir.is_dir():
        return "it is a file"
    where, cwd = out_dir.resolve(), Path.cwd().resolve()
    if where == cwd or where in cwd.parents:
        return "it is the current folder or one that holds it"
    with contextlib.suppress(RuntimeError, KeyError):
        if where == Path.home().resolve():
            return "it is the home folder"
    entries = list(where.iterdir())
    if not entries:
        return None
    files = _export_files(where)
    if files is None:
        return f"it is not empty and holds no {FILE} written by graphprune"
    stray = sorted(e.name for e in entries if e.name not in files or not (e.is_file() or e.is_symlink()))
    if stray:
        return f"it holds {', '.join(stray[:3])}{' ...' if len(stray) > 3 else ''}, which graphprune did not write"
    return None


def _export_files(folder: Path) -> set[str] | None:
    """The names graphprune writes in ``folder``, an export (from its manifest); None if it is not one."""
    try:
        manifest = json.loads((folder / FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("producer") != PRODUCER:
        return None
    graphs = manifest.get("graphs")
    entries = graphs.values() if isinstance(graphs, dict) else ()
    names = {entry.get("file") for entry in entries if isinstance(entry, dict)}
    names = {name for name in names if isinstance(name, str)}
    weights = {manifest["weights"]} if isinstance(manifest.get("weights"), str) else set()
    return {FILE, SCRIPT, GUIDE, MARKER, *weights, *names, *(f"{name}.data" for name in names)}  # .data: older exports


@contextlib.contextmanager
def staged_folder(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A new hidden folder beside ``out_dir`` to write into; if the block succeeds it replaces ``out_dir``
    (checked again first), and if it raises it is removed. Stale hidden folders of an earlier, killed export
    to ``out_dir`` (graphprune's marker inside, its process gone) are removed first."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir)
    staging = _hidden(out_dir, "tmp")
    staging.mkdir()
    _mark(staging)
    try:
        yield staging
        writable_folder(out_dir, overwrite)
        _swap(staging, out_dir)
        (out_dir / MARKER).unlink()  # the marker travels with the folder until it is in place
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _swap(new: Path, out_dir: Path) -> None:
    """Put ``new`` at ``out_dir``. On Linux the two folders are exchanged in one atomic rename, so ``out_dir``
    always holds a whole export; elsewhere the old folder is renamed aside first (both stay on disk throughout,
    ``out_dir`` is missing between the two renames)."""
    if not out_dir.exists():
        new.rename(out_dir)
        return
    _mark(out_dir)  # the old export, marked before it moves: a killed run's leftover is cleaned next time
    if _exchange(new, out_dir):
        shutil.rmtree(new)  # ``new`` now holds the old export
        return
    old = _hidden(out_dir, "old")
    out_dir.rename(old)
    try:
        new.rename(out_dir)
    except BaseException:
        (old / MARKER).unlink()
        old.rename(out_dir)
        raise
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_cwd, rename_exchange = -100, 2
    return renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0


def _hidden(out_dir: Path, kind: str) -> Path:
    return out_dir.parent / f".{out_dir.name}.{kind}-{uuid.uuid4().hex[:8]}"


def _mark(folder: Path) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid())}
    (folder / MARKER).write_text(json.dumps(owner))


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (Linux ``/proc``), so that a reused process id is told apart; None elsewhere."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _remove_stale(out_dir: Path) -> None:
    prefixes = tuple(f".{out_dir.name}.{kind}-" for kind in KINDS)
    for entry in out_dir.parent.iterdir():
        if entry.name.startswith(prefixes) and entry.is_dir() and not entry.is_symlink() and _abandoned(entry):
            shutil.rmtree(entry)


def _abandoned(folder: Path) -> bool:
    """True if ``folder`` holds graphprune's marker and the process that wrote it (on this host) is gone."""
    try:
        owner = json.loads((folder / MARKER).read_text())
        pid, host = int(owner["pid"]), owner["host"]
    except (OSError, ValueError, TypeError, KeyError):
        return False
    if os.name != "posix" or host != socket.gethostname():
        return False  # another machine's (or an unprobeable) process may still be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    started = owner.get("started")
    return started is not None and started != _start_time(pid)  # the process id now names another process
