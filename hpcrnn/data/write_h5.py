"""Writes ``corpus.h5`` (its layout: hpcrnn/data/corpus.py) from a built corpus, for both the one-process and
the sharded path: tokens a whole HDF5 chunk at a time, compressed by a pool of threads, with the token map's
uncompressed copy from the same chunks; per-document datasets whole or a shard at a time; window starts from
the split ranges, a chunk at a time."""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcrnn import __version__
from hpcrnn.data.corpus import FORMAT_VERSION, create_h5, h5py_module
from hpcrnn.data.sources import SPLITS, Source
from hpcrnn.data.token_map import write_npy_header
from hpcrnn.process import available_cpus

_H5_CHUNK = 1 << 20  # tokens per HDF5 chunk


@dataclass
class Pieces:
    """A per-document dataset given as consecutive pieces along its first axis rather than one array:
    the sharded finish writes one shard's documents at a time (memory: a shard's, not the corpus')."""

    dtype: np.dtype
    shape: tuple
    pieces: Callable[[], Iterable[np.ndarray]]


@dataclass
class BuiltCorpus:
    """Everything ``corpus.h5`` holds besides the settings: the writer's one argument."""

    tokens: np.ndarray
    vocab: list[str]
    vocab_counts: np.ndarray
    starts: np.ndarray | Pieces  # start of each document in tokens (stored order)
    doc_split: np.ndarray | Pieces  # stored order
    doc_index: np.ndarray | Pieces  # input position of each stored document
    doc_source: np.ndarray | Pieces
    ingredient_lines: np.ndarray | Pieces
    windows: dict[str, range]  # window starts, written a chunk at a time (never held whole)
    ranges: dict[str, list[int]]
    counts: dict


def write_h5(
    tmp: Path,
    built: BuiltCorpus,
    settings: dict,
    fp: str,
    sources: list[Source],
    segments=None,
    map_tmp: Path | None = None,
) -> None:
    """Write ``built`` and its settings to ``tmp`` and fsync it (the caller renames it into place).
    ``segments``: instead of ``built.tokens`` (then an empty array of the final dtype), the token arrays
    that make up the stream, in order (the sharded path: one shard's split at a time, never all of it).
    ``map_tmp``: also write the stream uncompressed there, as the token map's ``.npy`` (hpcrnn/data/
    token_map.py), from the same chunks: it is never read back and decompressed."""
    h5py = h5py_module()
    with create_h5(tmp) as f:
        segs = [built.tokens] if segments is None else segments
        _write_token_segments(f, segs, built.counts["tokens"], built.tokens.dtype, map_tmp)
        f.create_dataset("vocab", data=np.array(built.vocab, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("vocab_counts", data=built.vocab_counts)
        _write_column(f, "documents", built.starts)
        _write_column(f, "document_split", built.doc_split)
        _write_column(f, "document_index", built.doc_index)
        _write_column(f, "document_source", built.doc_source)
        _write_column(f, "ingredient_lines", built.ingredient_lines)
        g = f.create_group("windows")
        for s, w in built.windows.items():
            _write_windows(g, s, w)
        _write_attrs(f.attrs, built, settings, fp, sources)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())


def _write_column(f, name: str, value: np.ndarray | Pieces) -> None:
    if isinstance(value, np.ndarray):
        f.create_dataset(name, data=value)
        return
    ds, pos = f.create_dataset(name, shape=value.shape, dtype=value.dtype), 0
    for piece in value.pieces():
        ds[pos : pos + len(piece)] = piece
        pos += len(piece)
    if pos != value.shape[0]:  # cannot happen: the pieces are the shards' own documents
        raise RuntimeError(f"{name}: wrote {pos} rows, expected {value.shape[0]}")


_WINDOW_CHUNK = 1 << 18  # window starts per HDF5 chunk, and written at a time


def _write_windows(g, split: str, w: range) -> None:
    if not len(w):
        g.create_dataset(split, data=np.zeros(0, dtype=np.int64))
        return
    ds = g.create_dataset(
        split,
        shape=(len(w),),
        dtype=np.int64,
        chunks=(min(len(w), _WINDOW_CHUNK),),
        compression="gzip",
        compression_opts=1,
    )
    for a in range(0, len(w), _WINDOW_CHUNK):
        part = w[a : a + _WINDOW_CHUNK]
        ds[a : a + len(part)] = np.arange(part.start, part.stop, part.step, dtype=np.int64)


def _token_layout(n_tok: int, dtype) -> dict:
    # gzip level 1 with byte shuffle: higher levels cost several times the time for a few percent.
    return {
        "chunks": (max(1, min(_H5_CHUNK, n_tok)),),
        "compression": "gzip",
        "compression_opts": 1,
        "shuffle": np.dtype(dtype).itemsize > 1,
    }


def _whole_chunks(segments, chunk: int, dtype):
    """The stream of consecutive ``segments`` regrouped into arrays of exactly ``chunk`` tokens (the last
    may be shorter): a partial chunk written twice would be decompressed and compressed again."""
    buf, held = np.empty(chunk, dtype=dtype), 0  # buf[:held]: less than a chunk, for the next segment
    for seg in segments:
        seg = np.asarray(seg, dtype=dtype)
        if held:
            take = min(chunk - held, len(seg))
            buf[held : held + take], seg, held = seg[:take], seg[take:], held + take
            if held < chunk:
                continue
            yield buf.copy()
            held = 0
        whole = len(seg) // chunk * chunk
        for a in range(0, whole, chunk):
            yield seg[a : a + chunk]
        held = len(seg) - whole
        buf[:held] = seg[whole:]
    if held:
        yield buf[:held].copy()


def _deflated(data: np.ndarray, chunk: int, shuffle: bool) -> bytes:
    """One chunk as HDF5's filters store it: padded to the chunk's size with the fill value (0),
    byte-shuffled, then deflated at level 1 (zlib, as HDF5's gzip filter calls it)."""
    if len(data) < chunk:
        data = np.concatenate([data, np.zeros(chunk - len(data), dtype=data.dtype)])
    raw = data.view(np.uint8).reshape(-1, data.itemsize).T.tobytes() if shuffle else data.tobytes()
    return zlib.compress(raw, 1)


def _write_token_segments(f, segments, n_tok: int, dtype, map_tmp: Path | None = None) -> None:
    """The ``tokens`` dataset of ``n_tok`` tokens from consecutive arrays, a whole chunk at a time. Chunks
    are compressed by a pool of threads (zlib releases the GIL; the finish of a sharded build is serial
    otherwise) and written in order as they are, with a bounded number in flight."""
    layout = _token_layout(n_tok, dtype)
    ds = f.create_dataset("tokens", shape=(n_tok,), dtype=dtype, **layout)
    chunk, shuffle = layout["chunks"][0], layout["shuffle"]
    copy = _MapCopy(map_tmp, n_tok, dtype)
    try:
        pos, pending, threads = 0, deque(), available_cpus()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for data in _whole_chunks(segments, chunk, dtype):
                copy.write(data)
                pending.append((pos, pool.submit(_deflated, data, chunk, shuffle)))
                pos += len(data)
                while len(pending) > 2 * threads or (pending and pending[0][1].done()):
                    at, fut = pending.popleft()
                    ds.id.write_direct_chunk((at,), fut.result())
            while pending:
                at, fut = pending.popleft()
                ds.id.write_direct_chunk((at,), fut.result())
        copy.finish()
    finally:
        copy.close()
    if pos != n_tok:  # cannot happen: the segments are the shards' own counts
        raise RuntimeError(f"wrote {pos} tokens, expected {n_tok}")


class _MapCopy:
    """The token map's ``.npy`` written beside the corpus, best effort: the corpus matters, the copy is a
    convenience (readers write it, or load the stream, when it is missing). On the first error (a full
    disk) the partial copy is deleted, giving its space back to corpus.h5, and the rest is skipped."""

    def __init__(self, path: Path | None, n_tok: int, dtype):
        self.path, self.fh = path, None
        if path is None:
            return
        self._guard(lambda: self._open(n_tok, dtype))

    def _open(self, n_tok: int, dtype) -> None:
        self.fh = open(self.path, "wb")
        write_npy_header(self.fh, n_tok, dtype)

    def write(self, data: np.ndarray) -> None:
        if self.fh is not None:
            self._guard(lambda: self.fh.write(data.tobytes()))

    def finish(self) -> None:
        if self.fh is not None:
            self._guard(lambda: (self.fh.flush(), os.fsync(self.fh.fileno())))

    def _guard(self, op) -> None:
        try:
            op()
        except OSError:
            self.close()
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass

    def close(self) -> None:
        fh, self.fh = self.fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass


def _write_attrs(a, built: BuiltCorpus, settings: dict, fp: str, sources: list[Source]) -> None:
    a["format_version"] = FORMAT_VERSION
    a["hpcrnn_version"] = __version__
    for k, v in settings.items():
        a[k] = json.dumps(v) if isinstance(v, list) else v
    a["vocab_hash"] = hashlib.sha256("\n".join(built.vocab).encode("utf-8")).hexdigest()
    a["fingerprint"] = fp
    a["split_ranges"] = json.dumps(built.ranges)
    a["sources"] = json.dumps([s.describe() for s in sources])
    a["source_formats"] = json.dumps(built.counts.get("formats", {}))
    # where each split came from: the files of a {train, val, test} mapping, or a seeded shuffle
    by_files = any(s.split for s in sources)
    a["split_mode"] = "files" if by_files else "shuffle"
    a["split_files"] = json.dumps(
        {k: [str(s.path) for s in sources if s.split == k] for k in SPLITS} if by_files else {}
    )
    a["counts"] = json.dumps(built.counts)
    a["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
