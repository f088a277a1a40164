"""The output folder of ``bincam analyze``: the run's identity, shards, and what may be resumed.

``OUT/run.json`` records everything that decides the numbers (model and dataset contents, split,
method, engine, batch and shard sizes, …). A rerun with the same record resumes: shards already on
disk are kept, the rest computed. A different record is refused — nothing is overwritten unless
``--restart`` is given. Shards cover fixed image ranges and are written under a temporary name and
renamed, so a killed run leaves only complete shards.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from bincam.errors import BincamError
from bincam.files import remove_stale, write_atomic

RUN_FILE = "run.json"
LOCK_FILE = ".bincam-analyze.lock"
OWNED = (RUN_FILE, "shards", "results", "onnx", "tables", "plots", "aggregates.json",
         "report.md", "report.html")
IDENTITY_HELP = {"models": "--model (name or file contents)", "dataset": "--data contents",
                 "split": "--split", "frontal": "--frontal", "limit": "--limit",
                 "method": "--method", "engine": "--engine", "device": "--device",
                 "batch_size": "--batch-size", "shard_size": "--shard-size",
                 "save_maps": "--save-maps", "cues": "--cues", "bincam": "the bincam version"}


def check_target(out: Path, identity: dict, restart: bool = False) -> bool:
    """Refuse, reading only, an OUT this run may not write: another command line's analysis
    (unless ``restart``) or a folder that is not an analysis. True when resuming."""
    run_file = out / RUN_FILE
    if out.is_dir():
        remove_stale(run_file)  # a run killed while writing run.json left its temporary
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        if old.get("identity") == identity:
            return True
        if not restart:
            diff = [IDENTITY_HELP.get(k, k) for k in sorted(set(old.get("identity", {}))
                                                          | set(identity))
                    if old.get("identity", {}).get(k) != identity.get(k)]
            raise BincamError(f"{out} holds an analysis made with a different command line "
                              f"(differs in {', '.join(diff)}); rerun that command to finish "
                              "it, choose another --out, or pass --restart to discard it")
    elif out.exists() and (not out.is_dir() or any(p.name != LOCK_FILE for p in out.iterdir())):
        raise BincamError(f"{out} exists and is not a bincam analysis folder (no {RUN_FILE}); "
                          "choose another --out")
    return False


def prepare(out: Path, identity: dict, restart: bool = False) -> bool:
    """Make ``out`` ready for ``identity``; return True when resuming an earlier run.
    (Temporaries of killed runs are removed by ``files.remove_stale`` as shards are written.)"""
    if check_target(out, identity, restart):
        return True
    if (out / RUN_FILE).is_file():  # restart: discard what the earlier run wrote
        for name in OWNED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    write_atomic(out / RUN_FILE, json.dumps({"identity": identity}, indent=2).encode())
    return False


@contextmanager
def locked(out: Path) -> Iterator[bool]:
    """Hold ``OUT/.bincam-analyze.lock`` (an advisory ``flock``, released when the process ends,
    even when killed) for the block; a second ``bincam analyze`` on the same OUT is refused.
    Yields whether OUT was created here, so a run that fails before its first shard can leave
    nothing behind."""
    import fcntl

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise BincamError(f"{out} is in use by another bincam analyze (pid {holder}); wait "
                              "for it to finish, or choose another --out") from None
        if os.pread(fd, 32, 0) != str(os.getpid()).encode():
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield created
    finally:
        os.close(fd)


def discard_if_unstarted(out: Path) -> None:
    """Remove an OUT this run created when it failed before writing any shard."""
    if not any((out / "shards").rglob("*.npz")):
        shutil.rmtree(out, ignore_errors=True)


def matches(out: Path, identity: dict) -> bool:
    """Whether ``out`` was prepared for ``identity`` (what ranks other than 0 check)."""
    run_file = out / RUN_FILE
    return run_file.is_file() and json.loads(run_file.read_text()).get("identity") == identity


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def shard_path(out: Path, model: str, start: int, stop: int) -> Path:
    return out / "shards" / model / f"{start:08d}-{stop:08d}.npz"


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())


def read_shard(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise BincamError(f"shard {path} does not load ({exc}); delete it and rerun to "
                          "recompute it") from None
