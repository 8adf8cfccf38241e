"""Files written safely: atomic replacement, JSON lines that survive a killed writer, checksums.

An atomic write goes to a temporary name in the same directory, is fsynced, then renamed over the final
name (and the directory fsynced), so a reader sees the old file or the new one, never a part. Files get
the mode any file the user creates would get (0666 less the umask): a colleague in the project group can
read a shared run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp's 0600 would hide it from the group
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_jsonl_prefix(path: str | os.PathLike) -> tuple[list[dict], int]:
    """The JSON objects of a JSON-lines file and the byte length of its complete lines. The part after
    the last newline (a writer killed mid-line) is not a record; a complete line that is not a JSON
    object is skipped."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0
    out, pos = [], 0
    for line in data.split(b"\n")[:-1]:
        pos += len(line) + 1
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out, pos


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file (missing file: none), safe to call beside a writer."""
    try:
        return read_jsonl_prefix(path)[0]
    except OSError:
        return []


def _cut_torn_tail(fd: int, size: int) -> int:
    """Truncate an unterminated last line (a writer killed mid-append); returns the new size."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        block = os.pread(fd, pos - start, start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            keep = start + nl + 1
            break
        pos = start
    else:
        keep = 0
    os.ftruncate(fd, keep)
    return keep


def append_jsonl(path: str | os.PathLike, record: dict, fsync: bool = False) -> None:
    """Append one JSON line with a single write; earlier complete lines are never rewritten. A torn last
    line left by a killed writer is cut off first (else it would swallow this record), and a failed
    write (disk full) is cut off again, so the file stays one valid object per line."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = _cut_torn_tail(fd, os.fstat(fd).st_size)
        try:
            n = os.write(fd, line)
            if n != len(line):
                raise OSError(28, "short write (No space left on device?)")
            if fsync:
                os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def records_csv(records: list[dict]) -> str:
    """JSON records (metrics.jsonl's) as CSV text for a spreadsheet: the header is the union of their keys
    in the order first seen, a missing or null value an empty cell, a boolean, list or object its JSON."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    if keys:
        w.writerow(keys)
    for r in records:
        w.writerow(["" if r.get(k) is None else _cell(r[k]) for k in keys])
    return out.getvalue()


def _cell(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (bool, list, dict)) else v
