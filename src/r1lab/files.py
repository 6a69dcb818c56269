"""Reading users' data and writing files atomically and durably.

Every file r1lab writes goes to a temporary name first, is flushed to disk (fsync), and is renamed
into place; the folder holding it is fsynced after the rename. So neither a crash nor a power cut
leaves a half-written checkpoint, dataset or summary behind. A folder is replaced in two renames
(the old copy aside to ``.NAME.old``, the new one in); `recover` at the next start finishes or
undoes a replacement that a crash cut between the two, and removes abandoned temporaries.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r1lab.errors import R1labError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    _make_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_file(tmp_path)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        with interrupts_deferred():
            if tmp_path.exists():
                tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_safe(value: Any) -> Any:
    """`value` with every float NaN (at any depth of dicts, lists, tuples) as None: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


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
        f.flush()
        os.fsync(f.fileno())  # a row a checkpoint covers must survive with it


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) until the block ends, then raise it: renames and deletions that
    must not stop halfway (a checkpoint swapped in, an old one removed) finish first. Outside the
    main thread, where no signal handler can be set, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:  # as if it came now: the handler there was before (Python's raises KeyboardInterrupt)
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `path` (old copy removed last).

    Every file in it and the folder itself are fsynced before the renames, the parent after them.
    """
    path = Path(path)
    _make_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        _swap_in(tmp, path)
    finally:
        with interrupts_deferred():
            if tmp.exists():
                shutil.rmtree(tmp)


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename `tmp` onto `path`: the old copy aside to ``.NAME.old`` first, deleted last.

    An exception between the renames (Ctrl-C) puts the old copy back; a crash there leaves
    ``.NAME.old`` for `recover` to put back."""
    with interrupts_deferred():
        _swap_in_now(tmp, path)


def _swap_in_now(tmp: Path, path: Path) -> None:
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
        fsync_dir(path.parent)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)


def remove_dir(path: str | os.PathLike) -> None:
    """Delete a folder so that a crash midway leaves no half-deleted copy under its name: it is
    renamed to ``.NAME.del.tmp`` first (which `recover` removes)."""
    path = Path(path)
    doomed = path.with_name(f".{path.name}.del.tmp")
    with interrupts_deferred():
        os.replace(path, doomed)
        fsync_dir(path.parent)
        shutil.rmtree(doomed)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform that can't open folders (Windows): nothing to flush
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the rename is still atomic there
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_file(Path(folder) / name)
        fsync_dir(folder)


def _make_parent(path: Path) -> None:
    """Create `path`'s parent folders, each made durable in its own parent."""
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    for folder in reversed(missing):
        fsync_dir(folder.parent)


_OLD = re.compile(r"^\.(.+)\.old$")
_TMP = re.compile(r"^\..+\.tmp$")


def recover(folder: str | os.PathLike) -> list[str]:
    """Finish what a crash interrupted in `folder` (not its subfolders); return what was done.

    ``.NAME.old`` with no ``NAME``: the crash came between `atomic_dir`'s two renames, so the old
    copy is put back. ``.NAME.old`` beside ``NAME``: the crash came after them, so it is deleted.
    ``.NAME.*.tmp``: an unfinished write, deleted. Call it only when no other process is writing
    into `folder` (at the start of a run, on the process that writes).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    for child in sorted(folder.iterdir()):
        old, tmp = _OLD.match(child.name), _TMP.match(child.name)
        if old:
            target = folder / old.group(1)
            if target.exists():
                _remove(child)
                done.append(f"removed {child.name}")
            else:
                os.replace(child, target)
                done.append(f"restored {target.name} from {child.name}")
        elif tmp:
            _remove(child)
            done.append(f"removed {child.name}")
    if done:
        fsync_dir(folder)
    return done


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def read_jsonl(path: str | os.PathLike, tolerant: bool = False) -> list[dict]:
    """Rows of a JSONL file. A malformed line is an error naming file and line number,
    unless `tolerant` (used for logs that a killed run may have torn at the end)."""
    path = Path(path)
    if not path.is_file():
        raise R1labError(f"{path}: file not found")
    rows = []
    for lineno, line in enumerate(read_lines(path), 1):
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


def read_lines(path: str | os.PathLike) -> Iterator[str]:
    """The lines of a UTF-8 text file; bytes that are not UTF-8 are an error naming the file, line
    and byte offset."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise R1labError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at byte offset "
                                 f"{offset + e.start})") from None
            offset += len(raw)


def read_text(path: str | os.PathLike) -> str:
    """A whole UTF-8 text file; not UTF-8 is an error naming the file, line and byte offset."""
    return "".join(read_lines(path))


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


def is_hub_name(source: str | os.PathLike) -> bool:
    """True for an ``org/name`` that is not an existing path: a local file or folder is always
    taken first, so a local ``runs/final`` is never mistaken for a hub name."""
    text = str(source)
    if Path(text).expanduser().exists() or text.startswith(("/", ".", "~")) or text.endswith("/"):
        return False
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and Path(text).suffix.lower() not in (".jsonl", ".json", ".parquet")


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


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


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, or of a folder's files (names and bytes, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def require_columns(rows: list[dict], columns: Iterable[str], source: str) -> None:
    """Error naming the file and first row (1-based) that lacks one of `columns` (or has it empty)."""
    columns = list(columns)
    if not rows:
        raise R1labError(f"{source}: no rows")
    for i, row in enumerate(rows, 1):
        for col in columns:
            if col not in row:
                raise R1labError(f"{source}: row {i} has no column '{col}' (has: {', '.join(row)})")
            value = row[col]
            if value is None or (isinstance(value, str) and not value.strip()):
                raise R1labError(f"{source}: row {i} has an empty '{col}'")
