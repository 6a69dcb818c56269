"""Reading users' data and writing files atomically.

Every file r1lab writes goes to a temporary name first and is renamed into place, so a crash
never leaves a half-written checkpoint, dataset or summary behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r1lab.errors import R1labError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row (metrics logs); a torn last line is skipped by `read_jsonl(..., tolerant=True)`."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `path` (old copy removed last)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def read_jsonl(path: str | os.PathLike, tolerant: bool = False) -> list[dict]:
    """Rows of a JSONL file. A malformed line is an error naming file and line number,
    unless `tolerant` (used for logs that a killed run may have torn at the end)."""
    path = Path(path)
    if not path.is_file():
        raise R1labError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if tolerant:
                    continue
                raise R1labError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise R1labError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def read_rows(source: str | os.PathLike, split: str = "train") -> list[dict]:
    """Rows from a JSONL file, a Parquet file, or a `datasets` folder saved with `save_to_disk`.

    Hub names are not fetched here: r1lab reads local files, so pass a local copy.
    """
    path = Path(source)
    if not path.exists():
        raise R1labError(f"{path}: file not found")
    if path.is_dir():
        return _read_datasets_dir(path, split)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises many kinds for a broken file
            raise R1labError(f"{path}: cannot read Parquet ({e})") from None
    raise R1labError(f"{path}: unsupported data format '{suffix}' (use .jsonl, .parquet or a datasets folder)")


def _read_datasets_dir(path: Path, split: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise R1labError(f"{path}: not a datasets folder saved with save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise R1labError(f"{path}: no split '{split}' (has: {', '.join(ds)})")
        ds = ds[split]
    return ds.to_list()


def require_columns(rows: list[dict], columns: Iterable[str], source: str) -> None:
    """Error naming the file and first row that lacks one of `columns` (or has it empty)."""
    columns = list(columns)
    if not rows:
        raise R1labError(f"{source}: no rows")
    for i, row in enumerate(rows):
        for col in columns:
            if col not in row:
                raise R1labError(f"{source}: row {i} has no column '{col}' (has: {', '.join(row)})")
            value = row[col]
            if value is None or (isinstance(value, str) and not value.strip()):
                raise R1labError(f"{source}: row {i} has an empty '{col}'")
