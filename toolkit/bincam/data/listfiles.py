"""Readers and writers for CelebA's whitespace-separated list files.

Formats (as CelebA ships them):
- ``list_attr_celeba.txt``: a count line, a line of attribute names, then ``NAME v1 … vK`` with ±1.
- ``list_landmarks_align_celeba.txt``: a count line, a header of 10 column names, then ``NAME x y …``.
- ``list_bbox_celeba.txt``: a count line, a header line starting with ``image_id``, then 4 integers.
- ``list_eval_partition.txt`` and ``identity_CelebA.txt``: no header, ``NAME value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from bincam.errors import BincamError
from bincam.files import write_atomic


@dataclass
class Table:
    """One list file: image names, column names (if the file has a header), integer values."""

    names: list[str]
    columns: list[str]
    values: np.ndarray  # [N, len(columns)] int64
    lines: list[int] = field(default_factory=list)  # each row's line number in the file

    def where(self, path: Path, row: int) -> str:
        """``FILE:LINE`` of row ``row``, for error messages."""
        return f"{path}:{self.lines[row]}" if row < len(self.lines) else str(path)


def read_table(path: Path, *, counted: bool, header: bool, n_values: int | None = None) -> Table:
    """Parse a list file; ``counted``: first line is the row count; ``header``: a column-name line.

    Errors name the file and line number. ``n_values`` fixes the number of values when there is no
    header to say it.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise BincamError(f"missing list file {path}") from None
    except UnicodeDecodeError:
        raise BincamError(f"{path} is not a text list file") from None
    pos = 0
    expected_rows = None
    if counted:
        first = lines[0].strip() if lines else ""
        if not first.isdigit():
            raise BincamError(f"{path}:1: expected the number of images, got {first[:40]!r}")
        expected_rows = int(first)
        pos = 1
    columns: list[str] = []
    if header:
        if pos >= len(lines):
            raise BincamError(f"{path}:{pos + 1}: missing the header line of column names")
        columns = lines[pos].split()
        if columns and columns[0] == "image_id":
            columns = columns[1:]
        pos += 1
    width = len(columns) if header else n_values
    names: list[str] = []
    rows: list[list[int]] = []
    numbers: list[int] = []
    first_seen: dict[str, int] = {}
    for lineno, line in enumerate(lines[pos:], start=pos + 1):
        parts = line.split()
        if not parts:
            continue
        if width is not None and len(parts) != width + 1:
            raise BincamError(f"{path}:{lineno}: expected an image name and {width} values, "
                              f"got {len(parts)} fields")
        try:
            rows.append([int(v) for v in parts[1:]])
        except ValueError:
            raise BincamError(f"{path}:{lineno}: values must be integers: {line.strip()[:80]!r}") \
                from None
        if parts[0] in first_seen:
            raise BincamError(f"{path}:{lineno}: image {parts[0]} is listed twice (first on line "
                              f"{first_seen[parts[0]]}); remove the repeated row")
        first_seen[parts[0]] = lineno
        names.append(parts[0])
        numbers.append(lineno)
    if expected_rows is not None and expected_rows != len(rows):
        raise BincamError(f"{path}: the first line says {expected_rows} images, "
                          f"the file lists {len(rows)}")
    values = np.asarray(rows, dtype=np.int64).reshape(len(rows), width or 0)
    return Table(names, columns, values, numbers)


def write_table(path: Path, names: Sequence[str], values: np.ndarray, *, columns: Sequence[str] = (),
                counted: bool, header_prefix: str = "", width: int = 0) -> None:
    """Write a list file in CelebA's format, atomically (temp name, then rename)."""
    lines = []
    if counted:
        lines.append(str(len(names)))
    if columns:
        lines.append(header_prefix + " ".join(columns))
    rows = np.asarray(values).reshape(len(names), -1) if len(names) else []
    for name, row in zip(names, rows, strict=True):
        lines.append(name + " " + " ".join(f"{int(v):>{width}d}" for v in row))
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) under a temporary name, then rename it over ``path``."""
    write_atomic(path, text.encode())
