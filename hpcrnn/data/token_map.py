"""The corpus' token stream as a memory map: every reader shares one uncompressed copy instead of loading it.

``corpus.h5`` keeps its tokens gzip-chunked (small on disk, but h5py cannot map compressed chunks), so a
reader that loaded them held the whole stream in its own memory: 8 ranks on a node, 8 copies, growing with
the corpus. ``token_map(h5)`` returns the stream as a read-only ``np.memmap`` of ``<stem>.tokens-<key>.npy``
beside the corpus (numpy's own format: dtype and length in its header), written once and then only read. A
rank's batches touch the pages they use; the pages are the operating system's file cache, shared by every
process on the node and dropped under memory pressure, never the rank's private memory.

The copy is written chunk by chunk (memory bounded by ``_CHUNK``), under a temporary name, synced, then
renamed: a reader sees a whole copy or none (preprocessing writes it beside corpus.h5 from the same chunks,
and renames it once corpus.h5 is in place), and concurrent writers (ranks starting together on a corpus
whose copy is missing) each rename a complete one. Its name carries a key of the corpus file it copies
(fingerprint, vocabulary hash, length, and the file's size and modification time), so a rebuilt corpus
never maps a stale copy; copies of other keys are removed once the new one is in place. Preprocessing
writes it with the corpus; a reader writes it when it is missing (corpora built before it, copied corpora).

Where the copy cannot be written (a read-only directory, a full disk), ``token_map`` returns None and the
caller loads the stream into memory as before.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import numpy as np

from hpcrnn.fsutil import fsync_dir

_CHUNK = 1 << 24  # tokens copied at a time: the copy's memory, whatever the corpus' size


def map_path(h5_path: Path, attrs: dict, n_tokens: int, st: os.stat_result) -> Path:
    """Where the copy of ``h5_path``'s tokens lives: its name keyed by the corpus file it copies (``st``:
    that file's stat when its attributes were read)."""
    key = "\0".join(
        str(x)
        for x in (attrs.get("fingerprint", ""), attrs.get("vocab_hash", ""), n_tokens, st.st_size, st.st_mtime_ns)
    )
    return h5_path.with_name(f"{h5_path.stem}.tokens-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy")


def token_map(
    h5_path: Path,
    attrs: dict,
    n_tokens: int,
    st: os.stat_result,
    dtype: np.dtype,
    read_chunk,
    ready: Path | None = None,
) -> np.ndarray | None:
    """The read-only memory map of the corpus' tokens, written first if missing; None where it cannot be
    written. ``read_chunk(lo, hi)`` reads ``tokens[lo:hi]`` from the corpus file. ``ready``: a whole copy
    the corpus' writer made beside it, synced (its name is only known once the corpus file is final): it
    is renamed into place instead of a copy read back from the corpus."""
    path = map_path(h5_path, attrs, n_tokens, st)
    mapped = _open(path, n_tokens, dtype)
    if mapped is not None:
        return mapped
    try:
        if ready is not None and _open(ready, n_tokens, dtype) is not None:
            os.replace(ready, path)
            fsync_dir(path.parent)
        else:
            _write(path, n_tokens, dtype, read_chunk)
    except OSError:
        return None
    _remove_others(h5_path, path)
    return _open(path, n_tokens, dtype)


def _open(path: Path, n_tokens: int, dtype: np.dtype) -> np.ndarray | None:
    """The map of a whole, matching copy at ``path``; None for a missing or mismatched one."""
    try:
        m = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if m.shape != (n_tokens,) or m.dtype != dtype:
        return None
    return m


def write_npy_header(fh, n_tokens: int, dtype) -> None:
    """The header of a 1-d ``.npy`` of ``n_tokens`` values of ``dtype``; the raw values follow it."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n_tokens,)}
    np.lib.format.write_array_header_1_0(fh, header)


def _write(path: Path, n_tokens: int, dtype: np.dtype, read_chunk) -> None:
    """Plain writes, not a writable map: the copy's pages never count as the writer's memory."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write_npy_header(f, n_tokens, dtype)
            for lo in range(0, n_tokens, _CHUNK):
                f.write(np.ascontiguousarray(read_chunk(lo, min(lo + _CHUNK, n_tokens)), dtype=dtype).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_others(h5_path: Path, keep: Path) -> None:
    """Copies of earlier builds of this corpus (a process still mapping one keeps its pages)."""
    for p in h5_path.parent.glob(f"{h5_path.stem}.tokens-*.npy"):
        if p != keep:
            p.unlink(missing_ok=True)
