"""An export folder appears whole or not at all: files go to a hidden folder beside it, moved into place at the end."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def writable_folder(out_dir: str | Path, overwrite: bool) -> Path:
    """``out_dir`` as a Path; an existing one needs ``overwrite=True``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    return out_dir


@contextlib.contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A new hidden folder beside ``out_dir`` to write into; it replaces ``out_dir`` if the block succeeds
    and is removed if it raises."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
