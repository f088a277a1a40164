"""Atomic output: every file and folder bincam writes appears whole or not at all.

``write_atomic`` writes bytes to a temporary name beside the target and renames it into place;
``atomic_path`` does the same for writers that want a path of their own (``np.savez``,
safetensors, ``onnx.save``); ``atomic_folder`` for a whole folder (a dataset, an audit's columns).
A failure removes the temporary file or folder and leaves the target untouched.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _host() -> str:
    """This machine, as 8 hex digits: a PID means something only on the host that made it."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _unique() -> str:
    """Host, process and thread: two writers of one target never share a temporary name."""
    return f"{_host()}-{os.getpid()}-{threading.get_ident()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(path: Path) -> None:
    """Clean up after writers of ``path`` that were killed (``.NAME.HOST-PID-TID.tmp…``,
    ``.partial``, ``.old``; only this host's, only dead processes'), so an interrupted run leaves
    nothing behind once the command runs again. A folder killed between its two renames is
    missing while its previous version waits as ``.old``: that is renamed back, not deleted."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.([0-9a-f]{{8}})-(\d+)-\d+\."
                         rf"(tmp{re.escape(path.suffix)}|partial|old)")
    host = _host()
    for stale in sorted(path.parent.glob(f".{glob_escape(path.name)}.*")):
        match = pattern.fullmatch(stale.name)
        if not match or match[1] != host or _alive(int(match[2])):
            continue
        if match[3] == "old" and not path.exists():
            os.replace(stale, path)
        elif stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed to ``path`` when the block ends without error."""
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
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
    ends without error, and is removed otherwise. The old folder is renamed away before the new
    one is renamed in, so ``path`` is always either the old or the new folder, whole."""
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = path.with_name(f".{path.name}.{_unique()}.partial")
    old = path.with_name(f".{path.name}.{_unique()}.old")
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def check_replaceable(path: Path | str, option: str, marker: str) -> None:
    """Refuse, before any work, to replace a folder that is neither empty nor an earlier output
    of the same command (one holding ``marker``): it may hold the user's own files."""
    from bincam.errors import BincamError

    path = Path(path)
    here = Path.cwd().resolve()
    if path.resolve() == here or path.resolve() in here.parents:
        raise BincamError(f"{option} {path} is the current folder or holds it, and the output "
                          f"replaces it whole; give a new folder (e.g. {option} out)")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise BincamError(f"{option} {path} is a folder with other files in it (no {marker}); "
                          "give a new or empty folder, or an earlier output of this command")


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
