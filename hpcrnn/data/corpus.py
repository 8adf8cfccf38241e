"""The reader of ``corpus.h5``: ``open_corpus(path)`` validates the file and returns a read-only ``Corpus``.

Layout of ``corpus.h5`` (FORMAT_VERSION 1):

- ``tokens`` (N,) uint8/16/32 -- the token stream, grouped by split: all train documents, then val, then
  test, each in original order. Chunked, gzip-compressed.
- ``vocab`` (V,) utf-8 strings, ``vocab_counts`` (V,) int64 -- token strings by id and their counts in the
  train split (after the ``<unk>`` mapping). Specials first: ``<unk>``, then ``<eor>`` (recipe, char) or
  ``<eos>`` (whitespace); the rest by descending count, ties by string.
- ``documents`` (D,) int64 -- start offset of each document in ``tokens`` (stored order);
  ``document_split`` (D,) uint8 -- 0 train, 1 val, 2 test; ``document_index`` (D,) int64 -- the document's
  position in the input (inputs in order, documents in file order); ``document_source`` (D,) int32 -- index
  into the ``sources`` attribute.
- ``ingredient_lines`` (D, 2) int32 -- the ingredient lines of each recipe as a half-open range of *line
  numbers* within the document (lines are separated by the ``\\n`` token for recipe/char, ``<eos>`` for
  whitespace; ``(0, 0)``: none). Line numbers, not token offsets, so ``data.rare: drop`` cannot shift them.
  ``Corpus.ingredient_lines(d)`` returns them as token lists.
- ``windows/train``, ``windows/val``, ``windows/test`` (W,) int64 -- start offsets of the windows of each
  split: window i covers ``tokens[s : s + window + 1]`` (the +1 gives the targets), every ``stride`` tokens,
  entirely inside its split's token range (windows cross document boundaries inside a split only).
- attributes: ``format_version``, ``hpcrnn_version``, ``tokenizer``, ``min_count``, ``rare``, ``repair``,
  ``format``, ``document_start``, ``window``, ``stride``, ``seed``, ``split``, ``vocab_hash``,
  ``fingerprint``, ``split_ranges`` (JSON: split -> [start, end) in tokens), ``sources`` (JSON: path, size,
  sha256, split of each input file), ``source_formats`` (JSON: path -> the format it was read in),
  ``split_mode`` (``files`` or ``shuffle``), ``split_files`` (JSON), ``counts`` (JSON: documents, tokens,
  unk rate, repairs, ...) and ``created``.

Reading: ``open_corpus(path)`` validates the file (missing, truncated, corrupt, other format version:
``InputError`` naming the file) and returns a ``Corpus``. It reads the small datasets at once and closes the
file; ``tokens()`` maps an uncompressed copy of the stream written beside it once
(``<stem>.tokens-<key>.npy``, hpcrnn/data/token_map.py), so a reader's memory does not grow with the corpus;
where no copy can be written it opens the file again, read-only and without HDF5 file locking (NFS/Lustre),
and loads the stream. No HDF5 handle stays open, so a Corpus survives ``fork`` into DataLoader workers and
many ranks can read one file at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from hpcrnn.data.documents import prepared_documents
from hpcrnn.data.sources import SPLITS, ReadStats
from hpcrnn.data.token_map import token_map
from hpcrnn.errors import InputError
from hpcrnn.text.tokenize import DOC_SEP, EOR, EOS, NL, UNK, tokenize_documents_bytes

FORMAT_VERSION = 1


def h5py_module():
    """h5py, imported on first use: the launcher and the tokenizers import this package without needing it."""
    import h5py  # noqa: PLC0415 -- a slow import, needed only where a corpus file is read or written

    return h5py


def open_h5(path: Path):
    """``path`` opened read-only without HDF5 file locking (NFS/Lustre, many readers at once)."""
    h5py = h5py_module()
    try:
        return h5py.File(path, "r", locking=False)
    except TypeError:  # an h5py without the locking argument
        os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
        return h5py.File(path, "r")


def create_h5(path: Path):
    """``path`` created for writing without HDF5 file locking: Lustre and NFS mounts without lock support
    refuse the lock (errno 37 ENOLCK, 524 ENOTSUPP), and the writer needs none, since it writes a private
    temporary file that is renamed into place when complete."""
    h5py = h5py_module()
    try:
        return h5py.File(path, "w", locking=False)
    except (TypeError, ValueError):  # an h5py or HDF5 library without the locking option
        os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"
        return h5py.File(path, "w")


class Corpus:
    """A read-only view of ``corpus.h5`` (see the module docstring). Build with ``open_corpus``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._tokens: np.ndarray | None = None
        self._windows: dict[str, np.ndarray] = {}
        try:
            self._stat = os.stat(self.path)  # of the file whose attributes follow (keys the token map)
            with open_h5(self.path) as f:
                self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
                version = int(self.attrs.get("format_version", -1))
                if version != FORMAT_VERSION:
                    raise InputError(
                        f"{self.path}: corpus format version {version}, this hpcrnn reads "
                        f"{FORMAT_VERSION}: run preprocess again"
                    )
                for name in (
                    "tokens",
                    "vocab",
                    "vocab_counts",
                    "documents",
                    "document_split",
                    "ingredient_lines",
                    "windows/train",
                    "windows/val",
                    "windows/test",
                ):
                    if name not in f:
                        raise InputError(f"{self.path}: not a complete corpus file: dataset {name!r} missing")
                self.vocab: list[str] = list(f["vocab"].asstr()[()])
                self.counts: np.ndarray = f["vocab_counts"][()]
                self._documents = f["documents"][()]
                self._document_split = f["document_split"][()]
                self._ingredient_lines = f["ingredient_lines"][()]
                self._n_tokens = int(f["tokens"].shape[0])
                self.token_dtype = f["tokens"].dtype
        except InputError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise InputError(
                f"{self.path}: not a readable corpus file (truncated or corrupt?): "
                f"{str(e).splitlines()[0] if str(e) else e.__class__.__name__}"
            ) from None
        for k in ("split", "split_ranges", "sources", "counts", "split_files"):
            if isinstance(self.attrs.get(k), str):
                self.attrs[k] = json.loads(self.attrs[k])
        self.window = int(self.attrs["window"])
        self.stride = int(self.attrs["stride"])
        self.tokenizer = str(self.attrs["tokenizer"])
        self.vocab_hash = hashlib.sha256("\n".join(self.vocab).encode("utf-8")).hexdigest()
        self.fingerprint = str(self.attrs.get("fingerprint", ""))  # of the inputs and settings it was built from
        if self.vocab_hash != self.attrs.get("vocab_hash"):
            raise InputError(f"{self.path}: vocabulary does not match its recorded hash (corrupt file)")
        self.stoi = {t: i for i, t in enumerate(self.vocab)}
        self.unk_id = self.stoi[UNK]
        self.eor_id = self.stoi.get(EOR)
        self.eos_id = self.stoi.get(EOS)
        self.nl_id = self.stoi.get(NL)
        self.line_id = self.eos_id if self.tokenizer == "whitespace" else self.nl_id
        self.split_ranges = {s: tuple(v) for s, v in self.attrs["split_ranges"].items()}

    def __repr__(self) -> str:
        return (
            f"Corpus({str(self.path)!r}, tokenizer={self.tokenizer}, vocab={len(self.vocab)}, "
            f"tokens={self._n_tokens}, documents={len(self._documents)})"
        )

    def __len__(self) -> int:
        return self._n_tokens

    @property
    def num_documents(self) -> int:
        return len(self._documents)

    def tokens(self) -> np.ndarray:
        """The whole token stream, read-only: a memory map of an uncompressed copy beside the file
        (hpcrnn/data/token_map.py; a process holds only the pages it reads, shared with every other reader
        on the node), or, where that copy cannot be written, loaded into memory. Cached."""
        if self._tokens is None:
            t = self.token_map()
            if t is None:
                t = self._read_tokens(0, self._n_tokens)
                t.setflags(write=False)
            self._tokens = t
        return self._tokens

    def token_map(self, ready: Path | None = None) -> np.ndarray | None:
        """The memory map of the uncompressed copy of the tokens, written first if missing (memory bounded
        whatever the corpus' size), or ``ready``, the copy its writer made, renamed into place; None where
        it cannot be written."""
        return token_map(
            self.path, self.attrs, self._n_tokens, self._stat, self.token_dtype, self._read_tokens, ready=ready
        )

    def _read_tokens(self, lo: int, hi: int) -> np.ndarray:
        """``tokens[lo:hi]`` from the file (decompressed)."""
        try:
            with open_h5(self.path) as f:
                t = f["tokens"][lo:hi]
        except (OSError, KeyError, ValueError) as e:
            raise InputError(
                f"{self.path}: cannot read the token stream (truncated or corrupt?): "
                f"{str(e).splitlines()[0] if str(e) else e.__class__.__name__}"
            ) from None
        if len(t) != hi - lo:
            raise InputError(f"{self.path}: token stream ends at {lo + len(t)} tokens, expected {self._n_tokens}")
        return t

    def windows(self, split: str) -> np.ndarray:
        """int64 start offsets of the windows of ``split`` (train|val|test)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (expected train, val or test)")
        if split not in self._windows:
            try:
                with open_h5(self.path) as f:
                    w = f["windows"][split][()].astype(np.int64, copy=False)
            except (OSError, KeyError, ValueError) as e:
                raise InputError(f"{self.path}: cannot read windows/{split}: {e}") from None
            w.setflags(write=False)
            self._windows[split] = w
        return self._windows[split]

    def window_range(self, split: str) -> range:
        """The start offsets of ``split``'s windows as the range they are (``windows(split)``'s values,
        none of them held): every ``stride`` tokens from the split's start while ``window + 1`` fit."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (expected train, val or test)")
        a, b = self.split_ranges[split]
        return range(a, b - self.window, self.stride)

    def window_tokens(self, split: str, i: int) -> np.ndarray:
        """Tokens of window ``i`` of ``split``: ``window + 1`` ids (inputs, and targets shifted by one)."""
        s = int(self.windows(split)[i])
        return self.tokens()[s : s + self.window + 1]

    def documents(self) -> np.ndarray:
        """Start offset of each document in ``tokens()`` (stored order: train, val, test)."""
        return self._documents

    def document_split(self) -> np.ndarray:
        """0 (train), 1 (val) or 2 (test) per document."""
        return self._document_split

    def document_range(self, d: int) -> tuple[int, int]:
        a = int(self._documents[d])
        b = int(self._documents[d + 1]) if d + 1 < len(self._documents) else self._n_tokens
        return a, b

    def document_tokens(self, d: int) -> np.ndarray:
        a, b = self.document_range(d)
        return self.tokens()[a:b]

    def documents_of(self, split: str) -> np.ndarray:
        """Indices of the documents of ``split``."""
        return np.flatnonzero(self._document_split == SPLITS.index(split))

    def ingredient_lines(self, d: int) -> list[list[str]]:
        """The ingredient lines of document ``d`` as token lists (without the newline tokens); ``[]`` when
        the document has no recognised ingredient block."""
        first, end = (int(x) for x in self._ingredient_lines[d])
        if end <= first or self.line_id is None:
            return []
        ids = self.document_tokens(d)
        breaks = np.flatnonzero(ids == self.line_id)
        line_starts = np.concatenate([[0], breaks + 1])
        out = []
        for ln in range(first, min(end, len(breaks))):
            a, b = int(line_starts[ln]), int(breaks[ln])
            out.append([self.vocab[i] for i in ids[a:b].tolist()])
        return out

    def encode(self, tokens: list[str]) -> np.ndarray:
        """Token strings -> ids (unknown -> ``unk_id``), int64."""
        get, unk = self.stoi.get, self.unk_id
        return np.fromiter((get(t, unk) for t in tokens), dtype=np.int64, count=len(tokens))

    def decode(self, ids) -> list[str]:
        v = self.vocab
        return [v[int(i)] for i in ids]


def open_corpus(path) -> Corpus:
    """Open and validate a corpus file written by ``run_preprocess``; ``InputError`` names the file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: corpus file not found (run preprocess first)")
    if not p.is_file():
        raise InputError(f"{p}: not a corpus file")
    h5py = h5py_module()
    try:
        ok = h5py.is_hdf5(p)
    except OSError:
        ok = False
    if not ok:
        raise InputError(f"{p}: not an HDF5 corpus file (truncated or corrupt?)")
    return Corpus(p)


def encode_file(path: Path, corpus: Corpus) -> np.ndarray:
    """The token ids of a text file, read by the same path as preprocessing (``prepared_documents``) with
    the corpus' own settings, tokenizer and vocabulary: unknown words are ``<unk>`` (dropped under
    ``data.rare: drop``), and each document ends as in the corpus (``<eor>``, or a line end)."""
    a, stats = corpus.attrs, ReadStats()
    tok, drop = corpus.tokenizer, a.get("rare") == "drop"
    get, unk = corpus.stoi.get, corpus.unk_id
    out: list[int] = []
    for text, structured in prepared_documents(
        Path(path), a.get("document_start") or None, a["format"], bool(a["repair"]), stats
    ):
        if tok == "char":
            toks = [*text, EOR]
        else:
            toks = [t.decode("utf-8") for t in tokenize_documents_bytes([text], tok, keep_tabs=structured)]
            toks = [EOR if t == DOC_SEP.decode() else t for t in toks] if tok == "recipe" else toks[:-1]
        ids = [get(t, unk) for t in toks]
        out.extend(i for i, t in zip(ids, toks) if not (drop and i == unk and t != UNK))
    return np.asarray(out, dtype=np.int64)
