"""Reading and tokenizing the corpus inputs into the provisional token stream that preprocess encodes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hpcrnn.data.documents import prepared_documents
from hpcrnn.data.sources import ReadStats, Source
from hpcrnn.errors import InputError
from hpcrnn.progress import Meter
from hpcrnn.text.formats import ingredient_block
from hpcrnn.text.tokenize import DOC_SEP, EOR, EOS, NL, UNK, tokenize_documents_bytes


class _Interner(dict):
    """token bytes -> provisional id, assigning the next id to a new token (C-speed for known ones)."""

    def __init__(self):
        super().__init__()
        self.next_id = 0
        self._itos: list[bytes] = []

    def __missing__(self, key):
        v = self[key] = self.next_id
        self.next_id += 1
        self._itos.append(key)
        return v

    def alias(self, key, value: int) -> None:
        dict.__setitem__(self, key, value)

    def itos(self) -> list[bytes]:
        return self._itos


@dataclass
class _Stream:
    """The provisional token stream while the inputs are read: ids from a per-run interner, in chunks that
    hold whole documents, and what each document is (length, source, ingredient lines)."""

    tokenizer: str
    interner: _Interner
    sep_id: int  # the provisional id of the document separator (EOR itself for recipe and char)
    cp_ids: np.ndarray | None  # char tokenizer: code point -> provisional id (uint32 max: not seen yet)
    chunks: list = field(default_factory=list)  # provisional ids (uint32), then final ids once mapped
    chunk_docs: list[int] = field(default_factory=list)  # number of documents in each chunk
    doc_len: list[np.ndarray] = field(default_factory=list)  # document lengths, a chunk at a time
    doc_src: list[int] = field(default_factory=list)  # index of each document's source
    doc_ingr: list[tuple[int, int]] = field(default_factory=list)  # ingredient lines of each document

    @property
    def closes_with_eor(self) -> bool:
        return self.tokenizer in ("recipe", "char")


@dataclass
class _Layout:
    """Where each document lies in the chunks of a read stream."""

    lengths: np.ndarray  # tokens of each document (input order)
    first_doc: np.ndarray  # index of the first document of each chunk, and the total at the end
    chunk_of_doc: np.ndarray
    offset_in_chunk: np.ndarray  # start of each document inside its chunk


def _specials(tokenizer: str) -> tuple[list[str], str]:
    """The specials that open the vocabulary, in order, and the line-break token of a tokenizer."""
    if tokenizer == "whitespace":
        return [UNK, EOS], EOS
    return [UNK, EOR], NL


def _new_stream(tokenizer: str) -> _Stream:
    specials, line_token = _specials(tokenizer)
    interner = _Interner()
    for t in specials + [line_token]:
        interner[t.encode()]  # noqa: B018 -- fixed provisional ids for the specials
    if tokenizer in ("recipe", "char"):
        interner.alias(DOC_SEP, interner[EOR.encode()])  # the document separator *is* the EOR token
        sep_id = interner[EOR.encode()]
    else:
        sep_id = interner[DOC_SEP]  # removed from the stream after it has given the document lengths
    cp_ids = np.full(0x110000, np.iinfo(np.uint32).max, dtype=np.uint32) if tokenizer == "char" else None
    return _Stream(tokenizer, interner, sep_id, cp_ids)


def _char_ids(stream: _Stream, text: str) -> np.ndarray:
    """Characters -> provisional ids through a code-point table: no Python object per character."""
    cp_ids, unseen = stream.cp_ids, np.iinfo(np.uint32).max
    cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    seen = np.unique(cps)
    for cp in seen[cp_ids[seen] == unseen].tolist():
        cp_ids[cp] = stream.interner[DOC_SEP if cp == 2 else chr(cp).encode("utf-8")]
    return cp_ids[cps]


def _add_batch(stream: _Stream, batch: list[str], keep_tabs: bool) -> None:
    """Tokenize and intern a batch of documents into one chunk of the stream."""
    if stream.tokenizer == "char":
        ids = _char_ids(stream, "\x02".join(batch) + "\x02")
    else:
        toks = tokenize_documents_bytes(batch, stream.tokenizer, keep_tabs=keep_tabs)
        ids = np.fromiter(map(stream.interner.__getitem__, toks), dtype=np.uint32, count=len(toks))
        del toks
    ends = np.flatnonzero(ids == stream.sep_id) + 1
    if len(ends) != len(batch):  # cannot happen: control characters were removed on reading
        raise RuntimeError(f"document separator count {len(ends)} != {len(batch)} documents")
    lens = np.diff(ends, prepend=0)
    if not stream.closes_with_eor:
        ids = ids[ids != stream.sep_id]
        lens = lens - 1
    stream.chunks.append(ids)
    stream.chunk_docs.append(len(batch))
    stream.doc_len.append(lens.astype(np.int64))


def _read_stream(data, sources: list[Source], stats: ReadStats, batch_chars: int) -> _Stream:
    """Every document of the inputs, tokenized into a provisional stream. Memory: 4 bytes a token, and
    per-token Python objects for one batch of about ``batch_chars`` characters of text at a time."""
    stream = _new_stream(data.tokenizer)
    # bytes of text read against the files' sizes (compressed files: no fraction, the sizes are not text)
    plain = all(not s.path.name.endswith((".xz", ".gz", ".bz2")) for s in sources)
    meter = Meter("preprocess: read", sum(s.size for s in sources) / 1e6 if plain else None, "MB")
    for si, src in enumerate(sources):
        documents = prepared_documents(src.path, data.document_start, data.format, data.repair, stats)

        def progress():
            meter.update(stats.bytes / 1e6, f"{len(stream.doc_src):,} documents")

        if not _read_source(stream, si, documents, batch_chars, progress):
            raise InputError(f"{src.path}: the corpus file is empty (no text)")
    meter.finish()
    if not stream.doc_src:
        raise InputError(f"{sources[0].path}: the corpus is empty")
    return stream


def _read_source(stream: _Stream, si: int, documents, batch_chars: int, on_batch) -> int:
    """Tokenize the (text, structured) ``documents`` of source ``si`` into ``stream`` in batches of about
    ``batch_chars`` characters (batches hold one file's documents: one format, one tab rule); returns how
    many documents there were. ``on_batch()`` after each full batch (progress)."""
    n_before = len(stream.doc_src)
    batch: list[str] = []
    batch_size = 0
    structured = False  # this file's documents have tab-separated tables (TAB tokens)
    for text, structured in documents:
        batch.append(text)
        batch_size += len(text)
        stream.doc_src.append(si)
        stream.doc_ingr.append(ingredient_block(text) if structured or text[:6].lower() == "title:" else (0, 0))
        if batch_size >= batch_chars:
            _add_batch(stream, batch, structured)
            batch, batch_size = [], 0
            on_batch()
    if batch:
        _add_batch(stream, batch, structured)
    return len(stream.doc_src) - n_before


def _document_layout(stream: _Stream) -> _Layout:
    lengths = np.concatenate(stream.doc_len)
    stream.doc_len = []
    n_docs = len(stream.doc_src)
    chunk_of_doc = np.repeat(np.arange(len(stream.chunks), dtype=np.int64), stream.chunk_docs)
    offset_in_chunk = np.zeros(n_docs, dtype=np.int64)
    first_doc = np.concatenate([[0], np.cumsum(stream.chunk_docs)])
    for c in range(len(stream.chunks)):
        a, b = first_doc[c], first_doc[c + 1]
        np.cumsum(lengths[a : b - 1], out=offset_in_chunk[a + 1 : b])
    return _Layout(lengths, first_doc, chunk_of_doc, offset_in_chunk)
