"""Slices of the corpus inputs for sharded preprocessing (``data.shards``): where to cut, and reading one slice.

A slice is a list of pieces, each a byte range of one input (of its decompressed bytes for ``.xz``/``.gz``).
Cuts fall at even fractions of the inputs' total size, moved forward to the next line where a document
starts, so every document is read whole by exactly one slice, and read as the whole-file reader reads it:
the same lines decoded the same way, split by the same ``document_start``. A cut moves to the end of its
file when the file cannot be cut inside: no ``document_start`` (the file is one document), or one not
anchored at a line start (``^...``), since only line starts can be found again from the middle of a file.

Compressed inputs cannot be seeked: finding the cuts decompresses them once to learn their size and once
more up to the last cut, and each slice's reader decompresses from the start of the file up to its end
(decompressing is a few times faster than tokenizing, so it scales; a slice of a plain file seeks).
"""

from __future__ import annotations

import gzip
import lzma
import re
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hpcrnn.data.documents import (
    _format_of,
    _split_at,
    prepare_document,
    prepared_documents,
)
from hpcrnn.data.sources import _CHUNK_BYTES, ReadStats, Source, _decode_chunk, _open_binary, iter_text_chunks
from hpcrnn.errors import InputError
from hpcrnn.text import formats as F

_WINDOW = 1 << 20  # bytes read at a time while looking for a document start
_MARGIN = 1 << 16  # a match this close to the end of what was read waits for more text (lookaheads)


@dataclass(frozen=True)
class Piece:
    """Bytes ``[start, end)`` of input ``source`` (an index into the sources); ``end`` -1: to the end."""

    source: int
    start: int
    end: int

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end == -1


def file_format(data, path: Path) -> str:
    """The format a file's documents are read in, as the whole-file reader resolves it from its first text."""
    chunks = iter_text_chunks(path, ReadStats())
    try:
        first = next(chunks, "")
    finally:
        chunks.close()
    return _format_of(path, first, data.format, data.document_start or None)


def document_start_of(data, fmt: str) -> tuple[str | None, int]:
    """(the document start regex, its flags) of a file read in format ``fmt``."""
    if fmt == "mealmaster":
        return F.MM_START, re.M | re.I
    if fmt == "mastercook":
        return F.MC_START, re.M | re.I
    return data.document_start or None, re.M


_SIZES: dict[tuple, int] = {}  # decompressed sizes already counted, by (path, size, mtime)


def text_size(path: Path) -> int:
    """Bytes of the file as the reader sees them: its size, or its decompressed size (read through once,
    remembered while the file is unchanged)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _SIZES:
        return _SIZES[key]
    with _open_binary(path) as f:
        if not isinstance(f, (lzma.LZMAFile, gzip.GzipFile)):
            return st.st_size
        n = 0
        while block := f.read(_CHUNK_BYTES):
            n += len(block)
    _SIZES[key] = n
    return n


def shard_count(data, sources: list[Source]) -> int:
    """The tasks of the preprocess stage: ``data.shards``, or with 0 (automatic) one per ``data.shard_mb``
    MiB of input text (compressed inputs count decompressed), at least one."""
    if data.shards:
        return data.shards
    total = 0
    for s in sources:
        try:
            total += text_size(s.path)
        except (OSError, EOFError, lzma.LZMAError, zlib.error):  # the reader names a broken input, in one line
            total += s.path.stat().st_size
    return max(1, -(-total // (data.shard_mb << 20)))


def plan_slices(data, sources: list[Source], count: int) -> tuple[list[list[Piece]], list[str]]:
    """(the pieces of each of ``count`` slices, in input order, some perhaps empty; each file's format)."""
    formats = [file_format(data, s.path) for s in sources]
    sizes = [text_size(s.path) for s in sources]
    base = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    total = base[-1]
    targets = [k * total // count for k in range(1, count)]
    cuts = [0, total] + [t for t in targets if t in base]  # a cut between two files needs no moving
    for i, src in enumerate(sources):
        inside = [t - base[i] for t in targets if base[i] < t < base[i + 1]]
        if inside:
            start, flags = document_start_of(data, formats[i])
            cuts += [base[i] + o for o in _snap(src.path, inside, sizes[i], start, flags)]
    cuts = sorted(cuts)
    slices = []
    for a, b in zip(cuts, cuts[1:]):
        pieces = []
        for i in range(len(sources)):
            lo, hi = max(a, base[i]), min(b, base[i + 1])
            if lo < hi:
                pieces.append(Piece(i, lo - base[i], hi - base[i] if hi < base[i + 1] else -1))
        slices.append(pieces)
    return slices, formats


def _snap(path: Path, offsets: list[int], size: int, start: str | None, flags: int) -> list[int]:
    """Each offset (ascending) moved forward to the next line where a document starts, after the file's
    first document (text before it is a preamble of the first slice), or to the end of the file."""
    if not start or not start.startswith("^"):
        return [size] * len(offsets)
    later = re.compile("\n(?:" + start[1:] + ")", flags)
    out = []
    chunks = iter_text_chunks(path, ReadStats())
    try:
        opens = re.compile(start, flags).match(next(chunks, "")) is not None
    finally:
        chunks.close()
    with _open_binary(path) as f:
        first = 0 if opens else _next_start(f, 1, later)
        floor = size if first is None else first + 1
        for o in offsets:
            o = max(o, floor)
            b = size if o >= size else _next_start(f, o, later)
            b = size if b is None else b
            out.append(b)
            floor = b
    return out


def _next_start(f, o: int, later: re.Pattern) -> int | None:
    """The first byte offset >= ``o`` where a line starts with a document start, or None (file end).
    ``f`` is read forward from ``o - 1`` (a compressed file decompresses up to there)."""
    f.seek(o - 1)
    base, buf = o - 1, b""
    while True:
        block = f.read(_WINDOW)
        eof = not block
        buf += block
        nl = buf.find(b"\n")
        if nl < 0:
            if eof:
                return None
            base, buf = base + len(buf), b""
            continue
        end = len(buf) if eof else buf.rindex(b"\n") + 1  # whole lines only, until the end of the file
        hit = _first_match(buf[nl + 1 : end], later, eof)
        if hit is not None:
            return base + nl + 1 + hit
        if eof:
            return None
        keep = max(nl, buf.rfind(b"\n", 0, max(nl + 1, end - _MARGIN)))
        base, buf = base + keep, buf[keep:]


def _first_match(window: bytes, later: re.Pattern, eof: bool) -> int | None:
    """Byte offset in ``window`` (whole lines) of the first line where ``later`` finds a document start,
    decoding each line as the whole-file reader does (fallback decoding, carriage returns, NFC)."""
    try:
        text = _decode_chunk(window, Path("<slice>"), 0, ReadStats())
    except InputError:
        return None  # binary data: no document starts here (the slice's reader reports it)
    byte_lines = window.split(b"\n")
    lines = text.split("\n")  # one for each byte line: decoding neither adds nor removes a newline
    text_at, byte_at, pos = {}, 0, 0  # text offset of each line start -> its byte offset
    for k, raw in enumerate(byte_lines):
        t = lines[k][:-1] if lines[k].endswith("\r") else lines[k]  # the CR of a CRLF
        t = t.replace("\r", "\n")
        lines[k] = t if t.isascii() else unicodedata.normalize("NFC", t)
        text_at[pos] = byte_at
        pos += len(lines[k]) + 1
        byte_at += len(raw) + 1
    joined = "\n" + "\n".join(lines)
    for m in later.finditer(joined):
        if not eof and m.start() > len(joined) - _MARGIN:
            return None
        if m.start() in text_at:
            return text_at[m.start()]
    return None


def piece_documents(data, path: Path, piece: Piece, fmt: str, stats: ReadStats) -> Iterator[tuple[str, bool]]:
    """``hpcrnn.data.documents.prepared_documents`` for one piece of a file read in format ``fmt`` (the
    same function for a whole file; the same steps, document by document, for part of one)."""
    if piece.whole:
        yield from prepared_documents(path, data.document_start, data.format, data.repair, stats)
        return
    stats.formats[str(path)] = fmt
    start, flags = document_start_of(data, fmt)
    chunks = iter_text_chunks(path, stats, piece.start, piece.end)
    if not start:
        text = "".join(chunks)
        raws = [text] if text.strip() else []
    else:
        raws = _split_at(chunks, start, flags, path, stats)
    for raw in raws:
        text = prepare_document(raw, fmt, data.repair, stats)
        if not text:
            continue
        yield text, fmt != "plain"
