"""Atomic output: every file and folder bincam writes appears whole or not at all.

``write_atomic`` writes bytes to a temporary name beside the target and renames it into place;
``atomic_path`` does the same for writers that want a path of their own (``np.savez``,
safetensors, ``onnx.save``); ``atomic_folder`` for a whole folder (a dataset, an audit's columns).
A failure removes the temporary file or folder and leaves the target untouched.
"""

from __future__ import annotations

import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _unique() -> str:
    """Process and thread: two writers of one target never share a temporary name."""
    return f"{os.getpid()}-{threading.get_ident()}"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed to ``path`` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_unique()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name, then rename it into place."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """An empty temporary folder beside ``path``; it replaces ``path`` (if any) when the block
    ends without error, and is removed otherwise."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{_unique()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_report(path: Path | str, markdown: str, record: dict) -> None:
    """A benchmark's results: ``path`` with ``.md`` (the table) and ``.json`` (every figure)."""
    import json

    path = Path(path)
    write_atomic(path.with_suffix(".md"), markdown.encode())
    write_atomic(path.with_suffix(".json"), json.dumps(record, indent=1).encode())


def check_output(path: Path | str, option: str, folder: bool) -> None:
    """Refuse, before any work, an output path that cannot be written: a folder given for a file
    (or a file for a folder), or a path inside an existing file."""
    from bincam.errors import BincamError

    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise BincamError(f"{option} {path} is a {'file' if folder else 'folder'}; give "
                          f"{'a folder' if folder else 'a file name'}")
    if any(p.exists() and not p.is_dir() for p in path.parents):
        raise BincamError(f"{option} {path} lies inside a file; give another path")
