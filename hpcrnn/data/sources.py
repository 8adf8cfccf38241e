"""Corpus inputs: resolve ``data.corpus`` to files, open them (plain, xz, gzip), decode and read in chunks.

``data.corpus`` is a file (``.xz``/``.gz`` or plain, recognised by magic number), a directory of text
files, a list of these, or a ``{train, val, test}`` mapping of them. Reading decodes UTF-8; lines that are
not UTF-8 fall back to cp1252, or latin-1 for bytes cp1252 leaves undefined, and are counted; stray control
bytes (NULs, ^Z) are removed and counted; newlines are normalised and the text NFC.
"""

from __future__ import annotations

import gzip
import lzma
import re
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hpcrnn.errors import InputError
from hpcrnn.fsutil import sha256_file

SPLITS = ("train", "val", "test")
TEXT_SUFFIXES = {".txt", ".text", ".mmf", ".mm", ".mxp", ".tokens", ".raw"}
COMPRESSED_SUFFIXES = {".xz", ".gz"}
_CHUNK_BYTES = 4 << 20  # read size; small enough that per-token Python objects of one chunk stay small


@dataclass
class Source:
    path: Path
    split: str | None = None  # set when data.corpus is a {train, val, test} mapping
    size: int = 0
    sha256: str = ""

    def describe(self) -> dict:
        return {"path": str(self.path), "size": self.size, "sha256": self.sha256, "split": self.split}


def _is_text_name(p: Path) -> bool:
    suffixes = [s.lower() for s in p.suffixes]
    if not suffixes:
        return False
    if suffixes[-1] in COMPRESSED_SUFFIXES:
        return len(suffixes) == 1 or suffixes[-2] in TEXT_SUFFIXES
    return suffixes[-1] in TEXT_SUFFIXES


def _expand(path_str: str, key: str) -> list[Path]:
    p = Path(path_str)
    if not path_str:
        raise InputError(f"{key}: no corpus given (set data.corpus to a file, directory or list)")
    if not p.exists():
        raise InputError(f"{p}: corpus not found ({key})")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".") and _is_text_name(f))
        if not files:
            raise InputError(f"{p}: directory holds no text files (*.txt, *.mmf, *.tokens, or these .xz/.gz) ({key})")
        return files
    if not p.is_file():  # a FIFO or a device would block (or never end) every reader: preprocess, launch, status
        raise InputError(f"{p}: not a regular file or directory ({key}): give a corpus file")
    return [p]


def resolve_sources(corpus) -> list[Source]:
    """The input files of ``data.corpus``, in order, with sizes and sha256."""
    out = list_sources(corpus)
    for s in out:
        try:
            s.sha256, s.size = sha256_file(s.path), s.path.stat().st_size
        except OSError as e:
            raise InputError(f"{s.path}: cannot read: {e.strerror or e}") from None
    return out


def list_sources(corpus) -> list[Source]:
    """The input files of ``data.corpus``, in order, not read (no size or sha256 yet)."""
    out: list[Source] = []
    if isinstance(corpus, dict):
        for split in SPLITS:
            if split not in corpus:
                raise InputError(f"data.corpus: the split mapping has no {split!r} file")
            for f in _expand(corpus[split], f"data.corpus.{split}"):
                out.append(Source(f, split))
    elif isinstance(corpus, (list, tuple)):
        for i, c in enumerate(corpus):
            out.extend(Source(f) for f in _expand(str(c), f"data.corpus[{i}]"))
    else:
        out.extend(Source(f) for f in _expand(str(corpus or ""), "data.corpus"))
    return out


def _open_binary(path: Path):
    """Open a plain, xz or gzip file by its magic number (the name may lie), for reading bytes."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if path.name.lower().endswith((".xz", ".gz")):
        raise InputError(f"{path}: corrupt compressed file: no {path.suffix} header")
    return open(path, "rb")


@dataclass
class ReadStats:
    """What reading the inputs counted and repaired (reported in the corpus file's ``counts``)."""

    bytes: int = 0
    chars: int = 0
    fallback_lines: int = 0
    repaired_documents: int = 0
    repaired_chars: int = 0
    preamble_chars: int = 0  # text before the first document_start match, skipped
    control_chars: int = 0  # stray C0 control bytes removed (NUL, ^Z, ...; not tab/newline)
    formats: dict = field(default_factory=dict)  # path -> the format its documents were read in


# C0 control bytes other than tab and newline: never text. Removing them on reading also frees \x02 to
# mark document ends in the tokenizer's fast path.
_CONTROL_B = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _decode_chunk(data: bytes, path: Path, offset: int, stats: ReadStats) -> str:
    """Text of one chunk. Old archives carry a few stray control bytes inside recipes, which are removed;
    many of them mean binary data (UTF-16, an image, a misnamed archive), which no fallback decodes."""
    if _CONTROL_B.search(data):
        n_ctrl = len(_CONTROL_B.findall(data))
        if n_ctrl > max(16, len(data) // 20):
            m = _CONTROL_B.search(data)
            raise InputError(
                f"{path}: cannot decode: binary data ({n_ctrl} control bytes in {len(data)}, the "
                f"first at offset {offset + m.start()}); expected text in UTF-8, cp1252 or latin-1"
            )
        stats.control_chars += n_ctrl
        data = _CONTROL_B.sub(b"", data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # Decode line by line so one damaged line does not turn a whole UTF-8 file into mojibake.
    lines = data.split(b"\n")
    out = []
    for line in lines:
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            stats.fallback_lines += 1
            try:
                out.append(line.decode("cp1252"))
            except UnicodeDecodeError:
                out.append(line.decode("latin-1"))  # cp437 bytes (0x81, 0x8D, ...) that cp1252 leaves undefined
    return "\n".join(out)


def iter_text_chunks(path: Path, stats: ReadStats, start: int = 0, end: int = -1) -> Iterator[str]:
    """Decoded, newline-normalised, NFC text of one file, in chunks that end at a line end; ``start``/``end``:
    only those bytes (a slice of data.shards, which begins at a line start; -1: to the end)."""
    offset = start
    carry = b""
    first = start == 0
    try:
        with _open_binary(path) as f:
            if start:
                f.seek(start)
            left = end - start if end >= 0 else float("inf")
            while True:
                block = f.read(int(min(_CHUNK_BYTES, left))) if left > 0 else b""
                left -= len(block)
                data = carry + block
                if not block:
                    carry = b""
                elif b"\n" in block:
                    cut = data.rindex(b"\n") + 1
                    data, carry = data[:cut], data[cut:]
                else:
                    carry = data
                    continue
                if not data:
                    break
                if first and data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]  # a UTF-8 byte-order mark
                first = False
                stats.bytes += len(data)
                text = _decode_chunk(data, path, offset, stats)
                offset += len(data)
                if "\r" in text:
                    text = text.replace("\r\n", "\n").replace("\r", "\n")
                if not text.isascii():
                    text = unicodedata.normalize("NFC", text)
                stats.chars += len(text)
                yield text
                if not block:
                    break
    except (lzma.LZMAError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise InputError(f"{path}: corrupt or truncated compressed file: {e}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
