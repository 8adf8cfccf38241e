"""The writer of ``corpus.h5``: ``run_preprocess(cfg)`` turns the corpus inputs into one self-describing
HDF5 file (layout: ``hpcrnn.data.corpus``), and ``is_current(cfg)`` says whether that file is up to date.

It streams the inputs of ``data.corpus`` (``hpcrnn.data.sources``), splits them into documents and
repairs and canonicalises them (``hpcrnn.data.documents``), tokenizes and interns tokens into a numpy
stream. Then it splits by document, counts the vocabulary on the train documents only, maps rare words to
``<unk>`` (or drops them) and writes the file under a temporary name in the output directory, renaming it
when complete. A second run with the same inputs (sha256) and settings finds the fingerprint in the
existing file and does nothing.

Splits: with a ``{train, val, test}`` mapping the files are the splits (no shuffle; ``split_mode`` is
``files`` and ``split_files`` names them; a val/test file whose words are all unknown is an error);
otherwise documents are shuffled with ``data.seed`` and cut by ``data.split``. Either way the vocabulary
comes from the train documents only, so val/test words unseen in training are ``<unk>``.

Tokenizers: ``recipe`` and ``whitespace`` go through ``tokenize_documents_bytes`` (one regex scan and one
dict lookup a token); ``char`` maps code points through a table, so there is no Python object per
character.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcrnn import __version__
from hpcrnn.data.corpus import FORMAT_VERSION, create_h5, h5py_module, open_h5
from hpcrnn.data.documents import prepared_documents
from hpcrnn.data.sources import SPLITS, ReadStats, Source, resolve_sources
from hpcrnn.errors import InputError, StorageError
from hpcrnn.fsutil import fsync_dir
from hpcrnn.lock import RunLock
from hpcrnn.progress import Meter
from hpcrnn.text.formats import ingredient_block
from hpcrnn.text.tokenize import DOC_SEP, EOR, EOS, NL, TAB, TEXT_REVISION, UNK, tokenize_documents_bytes

_BATCH_CHARS = 1 << 20  # documents are tokenized and interned in batches of about this many characters
_H5_CHUNK = 1 << 20  # tokens per HDF5 chunk
_UNK_ID = 0  # <unk> opens every vocabulary


@dataclass
class PreprocessResult:
    path: Path
    skipped: bool
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0
    exit_code: int = 0


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


def data_settings(cfg) -> dict:
    """The ``data.*`` settings a corpus file depends on (its attributes and part of its fingerprint). With
    ``data.vocab_from`` the hash of that vocabulary is one of them (and only then: the fingerprints of
    corpora built without it stay as they were)."""
    d = cfg.data
    settings = {
        "tokenizer": d.tokenizer,
        "min_count": int(d.min_count),
        "rare": d.rare,
        "repair": bool(d.repair),
        "format": d.format,
        "document_start": d.document_start or "",
        "window": int(d.window),
        "stride": int(d.stride or d.window),
        "split": [float(x) for x in d.split],
        "seed": int(d.seed),
    }
    if d.vocab_from:
        settings["vocab_from"] = fixed_vocabulary(cfg).vocab_hash
    return settings


def fixed_vocabulary(cfg):
    """The vocabulary of ``data.vocab_from`` (hpcrnn/modelfile.py), refused when its tokenizer is not
    ``data.tokenizer``: the same words would be other tokens."""
    from hpcrnn.modelfile import load_vocabulary  # noqa: PLC0415 -- reads a model file with torch

    v = load_vocabulary(cfg.data.vocab_from)
    if v.tokenizer != cfg.data.tokenizer:
        raise InputError(
            f"data.vocab_from: {cfg.data.vocab_from} was tokenized with {v.tokenizer!r}, but "
            f"data.tokenizer is {cfg.data.tokenizer!r}: set data.tokenizer: {v.tokenizer}"
        )
    return v


def fingerprint_of(settings: dict, sources: list[Source]) -> str:
    blob = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "text_revision": TEXT_REVISION,
            "settings": settings,
            "sources": [s.describe() for s in sources],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _existing_fingerprint(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        with open_h5(path) as f:
            if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                return None
            return str(f.attrs.get("fingerprint", ""))
    except Exception:
        return None  # unreadable: rebuild


def _smallest_uint(n: int):
    for dt in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(dt).max + 1:
            return dt
    return np.uint64


def _tmp_name(out: Path) -> Path:
    """This process's temporary file: host and pid, so a preprocess on another node is never mistaken for
    a dead one of ours (a pid means nothing on another host)."""
    return out.parent / f".{out.name}.{socket.gethostname()}-{os.getpid()}.tmp"


def _remove_stale_tmp(out: Path) -> None:
    """Remove temporary files of earlier preprocess runs on this host that died (SIGKILL) before renaming;
    another host's are left to it (the run lock keeps two from writing at once)."""
    host = socket.gethostname()
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        owner, _, pid_text = tmp.name[len(out.name) + 2 : -4].rpartition("-")
        if owner != host or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        alive = True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            pass
        if not alive or pid == os.getpid():
            try:
                tmp.unlink()
            except OSError:
                pass


class _SigtermAsInterrupt:
    """Turn SIGTERM (scancel, a batch system's kill) into KeyboardInterrupt, so ``finally`` clauses remove
    the temporary file. Only in the main thread, and only if nobody else installed a handler."""

    def __enter__(self):
        self.old = None
        self.received = False
        try:
            if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
                signal.SIG_DFL,
                None,
            ):

                def handler(signum, frame):
                    self.received = True  # also checked before the rename: h5py may swallow the raise
                    raise KeyboardInterrupt("SIGTERM")

                self.old = signal.signal(signal.SIGTERM, handler)
        except (ValueError, OSError):
            self.old = None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


def _log(msg: str) -> None:
    print(f"preprocess: {msg}", flush=True)


def is_current(cfg) -> bool:
    """Whether ``cfg.h5_path`` matches its inputs and settings, i.e. run_preprocess would skip (the
    launcher and status ask this). Raises InputError when the corpus cannot be read."""
    fp = fingerprint_of(data_settings(cfg), resolve_sources(cfg.data.corpus))
    return _existing_fingerprint(Path(cfg.h5_path)) == fp


def run_preprocess(cfg) -> PreprocessResult:
    """Build ``cfg.h5_path`` from ``cfg.data`` (see the module docstring); skip if it is up to date."""
    t0 = time.perf_counter()
    out = Path(cfg.h5_path)
    settings = data_settings(cfg)
    sources = resolve_sources(cfg.data.corpus)
    fp = fingerprint_of(settings, sources)
    if _existing_fingerprint(out) == fp:
        return _up_to_date(out, t0)
    # one preprocess per run at a time (two would build the same file twice), never beside its trainer
    with RunLock(cfg.run_dir, "preprocess"):
        if _existing_fingerprint(out) == fp:  # built by the holder we waited for
            return _up_to_date(out, t0)
        return _build_and_rename(cfg, out, settings, sources, fp, t0)


def _up_to_date(out: Path, t0: float) -> PreprocessResult:
    with open_h5(out) as f:
        counts = json.loads(f.attrs["counts"])
    _log(f"{out} is up to date (same inputs and settings): nothing to do")
    return PreprocessResult(out, True, counts, time.perf_counter() - t0)


def _build_and_rename(cfg, out: Path, settings: dict, sources: list, fp: str, t0: float) -> PreprocessResult:
    _refuse_replacing_a_trained_corpus(cfg, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)
    tmp = _tmp_name(out)
    with _SigtermAsInterrupt() as guard:
        try:
            built = _build_corpus(cfg, settings, sources)
            _write_h5(tmp, built, settings, fp, sources)
            counts = built.counts
            if guard.received:
                raise KeyboardInterrupt("SIGTERM")
            os.replace(tmp, out)
            fsync_dir(out.parent)
        except OSError as e:  # disk full, quota: the old corpus.h5 (if any) is untouched
            raise StorageError(f"{out}: cannot write the corpus: {e.strerror or e}") from None
        finally:
            if tmp.exists():
                try:
                    tmp.unlink()
                except OSError:
                    pass
    secs = time.perf_counter() - t0
    c = counts
    _log(
        f"wrote {out}: {c['documents']} documents, {c['tokens']} tokens, vocabulary {c['vocab_size']}, "
        f"<unk> {100 * c['unk_rate']:.2f}%, windows {c['windows']['train']}/{c['windows']['val']}/"
        f"{c['windows']['test']}, repaired {c['repaired_documents']} documents "
        f"({c['repaired_chars']} characters), {c['fallback_lines']} lines decoded by the fallback, "
        f"in {secs:.1f} s"
    )
    return PreprocessResult(out, False, counts, secs)


def _refuse_replacing_a_trained_corpus(cfg, out: Path) -> None:
    """Checkpoints of the run were trained on the ``corpus.h5`` that is there: replacing it would leave them
    pointing at a file that no longer exists, and a resume would train on another token stream."""
    if not out.exists():
        return
    # "COMPLETE": the checkpoint format's completion marker (hpcrnn/train/checkpoint.py), read without torch
    trained = [p for p in sorted(Path(cfg.checkpoint_dir).glob("step-*")) if (p / "COMPLETE").exists()]
    if trained:
        raise InputError(
            f"{out}: its inputs or data settings changed, but the checkpoints of run {cfg.run.name!r} "
            f"({trained[-1]}) were trained on it: give a new run.name to preprocess and train on the new data"
        )


def _assign_splits(n: int, fractions: list[float], seed: int) -> np.ndarray:
    """Split ``n`` documents by a seeded shuffle: 0 train, 1 val, 2 test."""
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n_val + n_test >= n:  # keep at least one training document
        n_test = max(0, min(n_test, n - 1 - n_val))
        n_val = max(0, min(n_val, n - 1 - n_test))
    perm = np.random.default_rng(seed).permutation(n)
    split = np.zeros(n, dtype=np.uint8)
    split[perm[n - n_val - n_test : n - n_test]] = 1
    split[perm[n - n_test :]] = 2
    return split


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


@dataclass
class _BuiltCorpus:
    """Everything ``corpus.h5`` holds besides the settings: the writer's one argument."""

    tokens: np.ndarray
    vocab: list[str]
    vocab_counts: np.ndarray
    starts: np.ndarray  # start of each document in tokens (stored order)
    doc_split: np.ndarray  # stored order
    doc_index: np.ndarray  # input position of each stored document
    doc_source: np.ndarray
    ingredient_lines: np.ndarray
    windows: dict[str, np.ndarray]
    ranges: dict[str, list[int]]
    counts: dict


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


def _read_stream(data, sources: list[Source], stats: ReadStats) -> _Stream:
    """Every document of the inputs, tokenized into a provisional stream. Memory: 4 bytes a token, and
    per-token Python objects for one batch of about ``_BATCH_CHARS`` of text at a time."""
    stream = _new_stream(data.tokenizer)
    # bytes of text read against the files' sizes (compressed files: no fraction, the sizes are not text)
    plain = all(not s.path.name.endswith((".xz", ".gz", ".bz2")) for s in sources)
    meter = Meter("preprocess: read", sum(s.size for s in sources) / 1e6 if plain else None, "MB")
    for si, src in enumerate(sources):
        n_before = len(stream.doc_src)
        batch: list[str] = []
        batch_chars = 0
        structured = False  # this file's documents have tab-separated tables (TAB tokens)
        for text, structured in prepared_documents(src.path, data.document_start, data.format, data.repair, stats):
            batch.append(text)
            batch_chars += len(text)
            stream.doc_src.append(si)
            stream.doc_ingr.append(ingredient_block(text) if structured or text[:6].lower() == "title:" else (0, 0))
            if batch_chars >= _BATCH_CHARS:
                _add_batch(stream, batch, structured)
                batch, batch_chars = [], 0
                meter.update(stats.bytes / 1e6, f"{len(stream.doc_src):,} documents")
        if len(stream.doc_src) == n_before:
            raise InputError(f"{src.path}: the corpus file is empty (no text)")
        if batch:  # batches hold one file's documents: one format, one tab rule
            _add_batch(stream, batch, structured)
    meter.finish()
    if not stream.doc_src:
        raise InputError(f"{sources[0].path}: the corpus is empty")
    return stream


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


def _split_documents(sources: list[Source], doc_src: list[int], settings: dict) -> np.ndarray:
    """The split of each document: the files of a {train, val, test} mapping, or a seeded shuffle."""
    if any(s.split for s in sources):
        split_of_src = np.array([SPLITS.index(s.split) for s in sources], dtype=np.uint8)
        return split_of_src[np.asarray(doc_src, dtype=np.int64)]
    return _assign_splits(len(doc_src), settings["split"], settings["seed"])


def _train_counts(stream: _Stream, layout: _Layout, doc_split: np.ndarray) -> np.ndarray:
    """Occurrences of each provisional id in the train documents."""
    n_types = stream.interner.next_id
    train_counts = np.zeros(n_types, dtype=np.int64)
    for c, ids in enumerate(stream.chunks):
        a, b = layout.first_doc[c], layout.first_doc[c + 1]
        is_train = np.repeat(doc_split[a:b] == 0, layout.lengths[a:b])
        train_counts += np.bincount(ids[is_train], minlength=n_types)
    return train_counts


def _given_vocabulary(stream: _Stream, layout: _Layout, doc_split: np.ndarray, given, sources: list[Source]):
    """As ``_vocabulary``, but the vocabulary of ``data.vocab_from`` in its own order: ids mean what they
    meant to the model trained on it, and the words it lacks become ``<unk>`` (or are dropped)."""
    train_counts = _train_counts(stream, layout, doc_split)
    seen = train_counts > 0
    interner = stream.interner
    # a word of the given vocabulary this corpus never has gets a provisional id no token carries
    final_prov = [interner[t.encode("utf-8")] for t in given.tokens]
    train_counts = np.pad(train_counts, (0, interner.next_id - len(train_counts)))
    specials, line_token = _specials(stream.tokenizer)
    plain = [i for t, i in zip(given.tokens, final_prov) if t not in (*specials, line_token)]
    if not any(seen[i] for i in plain if i < len(seen)):
        raise InputError(
            f"{_train_name(sources)}: no word of the train split is in the vocabulary of data.vocab_from "
            f"({given.path}): another language, or another tokenization?"
        )
    return list(given.tokens), final_prov, train_counts


def _vocabulary(stream: _Stream, layout: _Layout, doc_split: np.ndarray, min_count: int, sources: list[Source]):
    """(vocabulary strings, their provisional ids, train counts per provisional id): from the train
    documents only; the specials first, then by descending count, ties by string."""
    interner = stream.interner
    train_counts = _train_counts(stream, layout, doc_split)
    specials, line_token = _specials(stream.tokenizer)
    itos_prov = interner.itos()
    keep = train_counts >= min_count
    keep[[interner[t.encode()] for t in specials + [line_token]]] = True
    if stream.tokenizer == "recipe" and TAB.encode() in interner:
        keep[interner[TAB.encode()]] = True  # the column break of structured formats is never <unk>
    special_ids = [interner[t.encode()] for t in specials]
    rest = [int(i) for i in np.flatnonzero(keep) if int(i) not in special_ids]
    rest.sort(key=lambda i: (-int(train_counts[i]), itos_prov[i]))
    final_prov = special_ids + rest
    vocab = [itos_prov[i].decode("utf-8") for i in final_prov]
    if len(vocab) <= len(set(specials + [line_token])):  # only the specials and the newline/EOS
        raise InputError(
            f"{_train_name(sources)}: the vocabulary is empty: no word occurs at least "
            f"data.min_count={min_count} times in the train split "
            f"({int(train_counts.sum())} tokens)"
        )
    return vocab, final_prov, train_counts


def _map_to_vocabulary(stream: _Stream, layout: _Layout, final_prov: list[int], n_vocab: int, drop: bool):
    """Provisional ids -> final ids in place, chunk by chunk (the uint32 ids go as the small ones come);
    rare words become ``<unk>`` (id 0) or, with ``drop``, leave the stream and shorten their documents.
    Returns the lookup table and its drop sentinel (None without ``drop``)."""
    dtype = _smallest_uint(n_vocab + (1 if drop else 0))
    drop_id = np.iinfo(dtype).max if drop else None  # a sentinel beyond the vocabulary
    lut = np.full(stream.interner.next_id, drop_id if drop else _UNK_ID, dtype=dtype)
    lut[np.asarray(final_prov, dtype=np.int64)] = np.arange(len(final_prov), dtype=dtype)
    lengths, offset = layout.lengths, layout.offset_in_chunk
    for c in range(len(stream.chunks)):
        ids = lut[stream.chunks[c]]
        stream.chunks[c] = None
        if drop:
            keep_tok = ids != drop_id
            cs = np.concatenate([[0], np.cumsum(keep_tok, dtype=np.int64)])
            a, b = layout.first_doc[c], layout.first_doc[c + 1]
            st = offset[a:b]
            lengths[a:b] = cs[st + lengths[a:b]] - cs[st]
            offset[a:b] = cs[st]
            ids = ids[keep_tok]
        stream.chunks[c] = ids
    return lut, drop_id


def _vocab_counts(lut: np.ndarray, drop_id, train_counts: np.ndarray, n_vocab: int) -> np.ndarray:
    """Train counts per final id from the per-type counts (np.bincount over the stream would first cast all
    of it to int64: 8 bytes a token)."""
    vocab_counts = np.zeros(n_vocab, dtype=np.int64)
    mapped_types = lut != drop_id if drop_id is not None else slice(None)
    np.add.at(vocab_counts, lut[mapped_types].astype(np.int64), train_counts[mapped_types])
    return vocab_counts


def _assemble(stream: _Stream, layout: _Layout, doc_split: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(the final stream in split order: train, val, test, input order inside each; that document order)."""
    order = np.argsort(doc_split, kind="stable")
    sorted_lengths = layout.lengths[order]
    tokens = np.empty(int(sorted_lengths.sum()), dtype=dtype)
    pos = 0
    for k, n in zip(order.tolist(), sorted_lengths.tolist()):  # one slice copy per document
        a = int(layout.offset_in_chunk[k])
        tokens[pos : pos + n] = stream.chunks[layout.chunk_of_doc[k]][a : a + n]
        pos += n
    stream.chunks = []
    return tokens, order


def _window_starts(
    ranges: dict, split_tokens: list[int], settings: dict, sources: list[Source]
) -> dict[str, np.ndarray]:
    """Window starts of each split; no training window is an error, an empty val/test split a warning."""
    window, stride = settings["window"], settings["stride"]
    windows = {s: np.arange(a, b - window, stride, dtype=np.int64) for s, (a, b) in ranges.items()}
    if len(windows["train"]) == 0:
        raise InputError(
            f"{_train_name(sources)}: data.window={window} is longer than the train split "
            f"({split_tokens[0]} tokens): no training window fits"
            + ("" if any(len(w) for w in windows.values()) else " (nor in any split)")
        )
    for s in ("val", "test"):
        frac = settings["split"][SPLITS.index(s)]
        if len(windows[s]) == 0 and (frac > 0 or any(x.split == s for x in sources)):
            _log(f"warning: the {s} split ({ranges[s][1] - ranges[s][0]} tokens) holds no window of {window}+1 tokens")
    return windows


def _check_held_out_files(tokens: np.ndarray, vocab: list[str], ranges: dict, sources: list[Source]) -> None:
    """A val/test file of a {train, val, test} mapping whose words are all unknown is a mistake."""
    breaks = np.array([i for i, t in enumerate(vocab) if t in (EOR, EOS, NL)], dtype=tokens.dtype)
    for s in ("val", "test"):
        a, b = ranges[s]
        seg = tokens[a:b]
        words = seg[~np.isin(seg, breaks)]
        if len(words) and not np.any(words != _UNK_ID):
            files = ", ".join(str(x.path) for x in sources if x.split == s)
            raise InputError(
                f"{files}: every word of the {s} file is unknown to the vocabulary of the "
                f"train file {_train_name(sources)} (another language, or another "
                f"tokenization?)"
            )


def _build_corpus(cfg, settings: dict, sources: list[Source]) -> _BuiltCorpus:
    """Read, tokenize, split, count, map and lay out. Memory: the provisional uint32 ids of the whole
    stream plus the final stream (1-4 bytes a token); no per-window copies."""
    d = cfg.data
    stats = ReadStats()
    stream = _read_stream(d, sources, stats)
    layout = _document_layout(stream)
    n_docs, n_types = len(stream.doc_src), stream.interner.next_id
    doc_split = _split_documents(sources, stream.doc_src, settings)
    if d.vocab_from:
        vocab, final_prov, train_counts = _given_vocabulary(stream, layout, doc_split, fixed_vocabulary(cfg), sources)
    else:
        vocab, final_prov, train_counts = _vocabulary(stream, layout, doc_split, d.min_count, sources)
    drop = d.rare == "drop"
    total_before = int(layout.lengths.sum())
    lut, drop_id = _map_to_vocabulary(stream, layout, final_prov, len(vocab), drop)
    tokens, order = _assemble(stream, layout, doc_split, lut.dtype)
    sorted_lengths, sorted_split = layout.lengths[order], doc_split[order]
    starts = np.zeros(n_docs, dtype=np.int64)
    np.cumsum(sorted_lengths[:-1], out=starts[1:])
    n_tok = len(tokens)
    split_tokens = [int(sorted_lengths[sorted_split == k].sum()) for k in range(3)]
    unk_total = int(np.count_nonzero(tokens == _UNK_ID))
    bounds = np.cumsum([0] + split_tokens)
    ranges = {s: [int(bounds[i]), int(bounds[i + 1])] for i, s in enumerate(SPLITS)}
    windows = _window_starts(ranges, split_tokens, settings, sources)
    if any(x.split for x in sources):
        _check_held_out_files(tokens, vocab, ranges, sources)
    counts = {
        "documents": n_docs,
        "documents_by_split": dict(zip(SPLITS, [int((sorted_split == k).sum()) for k in range(3)])),
        "tokens": n_tok,
        "tokens_by_split": dict(zip(SPLITS, split_tokens)),
        "windows": {s: int(len(w)) for s, w in windows.items()},
        "vocab_size": len(vocab),
        "types_seen": n_types - (0 if stream.closes_with_eor else 1),
        "unk_tokens": unk_total,
        "unk_rate": unk_total / max(1, n_tok),
        "dropped_tokens": (total_before - n_tok) if drop else 0,
        "repaired_documents": stats.repaired_documents,
        "repaired_chars": stats.repaired_chars,
        "fallback_lines": stats.fallback_lines,
        "control_chars_removed": stats.control_chars,
        "preamble_chars": stats.preamble_chars,
        "input_bytes": stats.bytes,
        "input_chars": stats.chars,
        "formats": dict(stats.formats),
    }
    return _BuiltCorpus(
        tokens=tokens,
        vocab=vocab,
        vocab_counts=_vocab_counts(lut, drop_id, train_counts, len(vocab)),
        starts=starts,
        doc_split=sorted_split,
        doc_index=order,
        doc_source=np.asarray(stream.doc_src, dtype=np.int32)[order],
        ingredient_lines=np.asarray(stream.doc_ingr, dtype=np.int32).reshape(-1, 2)[order],
        windows=windows,
        ranges=ranges,
        counts=counts,
    )


def _train_name(sources: list[Source]) -> str:
    train = [s for s in sources if s.split in (None, "train")]
    return str((train or sources)[0].path)


def _write_h5(tmp: Path, built: _BuiltCorpus, settings: dict, fp: str, sources: list[Source]) -> None:
    """Write ``built`` and its settings to ``tmp`` and fsync it (the caller renames it into place)."""
    tokens, n_tok = built.tokens, len(built.tokens)
    h5py = h5py_module()
    with create_h5(tmp) as f:
        # gzip level 1 with byte shuffle: higher levels cost several times the time for a few percent.
        f.create_dataset(
            "tokens",
            data=tokens,
            chunks=(max(1, min(_H5_CHUNK, n_tok)),),
            compression="gzip",
            compression_opts=1,
            shuffle=tokens.dtype.itemsize > 1,
        )
        f.create_dataset("vocab", data=np.array(built.vocab, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("vocab_counts", data=built.vocab_counts)
        f.create_dataset("documents", data=built.starts)
        f.create_dataset("document_split", data=built.doc_split)
        f.create_dataset("document_index", data=built.doc_index.astype(np.int64))
        f.create_dataset("document_source", data=built.doc_source)
        f.create_dataset("ingredient_lines", data=built.ingredient_lines)
        g = f.create_group("windows")
        for s, w in built.windows.items():
            if len(w):
                g.create_dataset(s, data=w, chunks=(min(len(w), 1 << 18),), compression="gzip", compression_opts=1)
            else:
                g.create_dataset(s, data=w)
        a = f.attrs
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
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
