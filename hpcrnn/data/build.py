"""Corpus inputs -> documents -> one self-describing HDF5 file, and its read-only reader.

Writing: ``run_preprocess(cfg)`` streams the inputs of ``data.corpus`` (a file, ``.xz``/``.gz`` or plain,
recognised by magic number; a directory of text files; a list of these; or ``{train, val, test}`` files) in
chunks, decodes them (UTF-8; lines that are not UTF-8 fall back to cp1252, or latin-1 for bytes cp1252
leaves undefined, and are counted; stray control bytes such as the shared corpus' NULs are removed and
counted), normalises newlines and NFC, splits documents, repairs DOS mojibake per document
(``text.repair_mojibake``), tokenizes and interns tokens into a numpy stream. Then it splits by document,
counts the vocabulary on the train documents only, maps rare words to ``<unk>`` (or drops them) and
writes the file under a temporary name in the output directory, renaming it when complete. A second run
with the same inputs (sha256) and settings finds the fingerprint in the existing file and does nothing.

Documents (``data.format``): ``plain`` splits at ``data.document_start`` (a regex, multi-line mode; without
it each file is one document). ``mealmaster`` (``MMMMM----- Recipe via Meal-Master``) and ``mastercook``
(the lecture's tab table after a title line, or ``* Exported from MasterCook *``) split at their own recipe
starts and rewrite the ingredient table with one tab between columns (MealMaster's two-column lines become
two lines); the recipe tokenizer then keeps each tab as a ``\t`` token, so the table survives and
``text.detokenize`` can set the columns again. ``auto`` (the default) is ``plain`` when
``data.document_start`` is given, else the format each file opens with (its first non-blank line); naming
a format a file does not open with is an error.

Splits: with a ``{train, val, test}`` mapping the files are the splits (no shuffle; ``split_mode`` is
``files`` and ``split_files`` names them; a val/test file whose words are all unknown is an error);
otherwise documents are shuffled with ``data.seed`` and cut by ``data.split``. Either way the vocabulary
comes from the train documents only, so val/test words unseen in training are ``<unk>``.

Tokenizers: ``recipe`` and ``whitespace`` go through ``text.tokenize_documents_bytes`` (one regex scan
and one dict lookup a token); ``char`` maps code points through a table, so there is no Python object per
character.

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
  sha256, split of each input file) and ``counts`` (JSON: documents, tokens, unk rate, repairs, ...).

Reading: ``open_corpus(path)`` validates the file (missing, truncated, corrupt, other format version:
``InputError`` naming the file) and returns a ``Corpus``. It reads the small datasets at once and closes the
file; ``tokens()`` opens it again, read-only and without HDF5 file locking (NFS/Lustre), loads the stream
once and caches it. No HDF5 handle stays open, so a Corpus survives ``fork`` into DataLoader workers and
many ranks can read one file at once.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import lzma
import os
import re
import signal
import socket
import time
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcrnn import __version__
from hpcrnn.errors import InputError, StorageError
from hpcrnn.fsutil import fsync_dir, sha256_file
from hpcrnn.lock import RunLock
from hpcrnn.text.tokenize import (
    DOC_SEP,
    EOR,
    EOS,
    NL,
    TAB,
    TEXT_REVISION,
    UNK,
    ingredient_block,
    repair_mojibake,
    tokenize_documents_bytes,
)

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
TEXT_SUFFIXES = {".txt", ".text", ".mmf", ".mm", ".mxp", ".tokens", ".raw"}
COMPRESSED_SUFFIXES = {".xz", ".gz"}
_CHUNK_BYTES = 4 << 20  # read size; small enough that per-token Python objects of one batch stay < ~50 MB
_BATCH_CHARS = 1 << 20  # documents are tokenized and interned in batches of about this many characters
_H5_CHUNK = 1 << 20  # tokens per HDF5 chunk


def _h5py():
    import h5py  # imported lazily: the tokenizers and the config do not need it

    return h5py


# ---------------------------------------------------------------- inputs


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
    for s in out:
        try:
            s.sha256, s.size = sha256_file(s.path), s.path.stat().st_size
        except OSError as e:
            raise InputError(f"{s.path}: cannot read: {e.strerror or e}") from None
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
    bytes: int = 0
    chars: int = 0
    fallback_lines: int = 0
    repaired_documents: int = 0
    repaired_chars: int = 0
    preamble_chars: int = 0  # text before the first document_start match, skipped
    control_chars: int = 0  # stray C0 control bytes removed (NUL, ^Z, ...; not tab/newline)
    formats: dict = field(default_factory=dict)  # path -> the format its documents were read in


_CONTROL_B = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _decode(data: bytes, path: Path, offset: int, stats: ReadStats) -> str:
    # Old archives carry a few stray control bytes (the shared corpus: 47 NULs in 145 MB, inside recipes);
    # many of them mean binary data (UTF-16, an image, a misnamed archive), which no fallback decodes.
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


def iter_text_chunks(path: Path, stats: ReadStats) -> Iterator[str]:
    """Decoded, newline-normalised, NFC text of one file, in chunks that end at a line end."""
    offset = 0
    carry = b""
    first = True
    try:
        with _open_binary(path) as f:
            while True:
                block = f.read(_CHUNK_BYTES)
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
                text = _decode(data, path, offset, stats)
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


# ---------------------------------------------------------------- recipe file formats (data.format)

FORMATS = ("plain", "mastercook", "mealmaster")
# A MealMaster recipe opens with "MMMMM----- Recipe via Meal-Master (tm) v8.02" (or ten dashes in old files)
_MM_START = r"^(?:MMMMM|-----)-*[ \t]*Recipe via Meal-Master"
# A MasterCook text export opens with "* Exported from MasterCook *"; the lecture's allrecipes.txt (a
# MasterCook export too) with a title line, a blank line and the "Amount<tab>Measure..." table header.
_MC_START = r"^(?:\*[ \t]*Exported from MasterCook|(?=[^\n\t]*\S[^\n\t]*\n[ \t]*\nAmount\tMeasure\tIngredient))"
_SNIFF = 1 << 16
_MM_BANNER = "MMMMM----- Recipe via Meal-Master (tm)"
_MM_INGREDIENT = re.compile(r"(?P<amt>[ \d/.-]{7}) (?P<unit>[A-Za-z ]{2}) (?P<ing>\S.*)\Z")
_MM_HEADER = re.compile(r"\s*(Title|Categories|Servings|Yield)\s*:\s*(.*)\Z", re.I)
_MC_HEADER_ROW = re.compile(r"\s*Amount\s+Measure\s+Ingredient.*\Z", re.I)
_RULE_ROW = re.compile(r"[-\s]+\Z")


def detect_format(head: str) -> str:
    """``mealmaster``, ``mastercook`` or ``plain`` from the first text of a file: the file must *open* with a
    recipe of that format (its first non-blank line), since a recipe corpus may quote a stray
    ``Recipe via Meal-Master`` line somewhere (the shared corpus has 43)."""
    head = head[:_SNIFF].lstrip("\n \t")
    if re.match(_MM_START, head, re.I):
        return "mealmaster"
    if re.match(_MC_START, head, re.I):
        return "mastercook"
    return "plain"


def _canon_mealmaster(text: str) -> str:
    """A MealMaster recipe with its fixed columns as tabs: header lines ``Title: X``, ingredient lines
    ``amount<TAB>unit<TAB>ingredient`` (two-column layouts become two lines), directions unindented."""
    out = []
    for line in text.split("\n"):
        s = line.strip()
        if re.match(_MM_START, s, re.I):
            out.append(_MM_BANNER)
            continue
        m = _MM_HEADER.match(line)
        if m and len(out) < 8 and not any("\t" in o for o in out):
            out.append(f"{m.group(1).capitalize()}: {m.group(2).strip()}")
            continue
        cols = [line[:41], line[41:]] if len(line) > 41 and _MM_INGREDIENT.match(line[41:]) else [line]
        rows = [_MM_INGREDIENT.match(c.rstrip()) for c in cols]
        if all(rows):
            for r in rows:
                out.append(f"{r['amt'].strip()}\t{r['unit'].strip()}\t{r['ing'].strip()}")
            continue
        out.append(s)
    return "\n".join(out)


def _canon_mastercook(text: str) -> str:
    """A MasterCook recipe with its ingredient table as tab-separated columns. The lecture's export is that
    already; the ``* Exported from MasterCook *`` text export has fixed columns, cut where its dashed rule
    under the header has gaps (tabs in rows expanded to 8 columns first)."""
    lines = text.split("\n")
    out = []
    cuts = None
    for i, line in enumerate(lines):
        if "\t" in line and _MC_HEADER_ROW.match(line) is None and cuts is None:
            out.append("\t".join(c.strip() for c in line.split("\t")) if line.strip() else "")
            continue
        if (
            _MC_HEADER_ROW.match(line)
            and "\t" not in line
            and i + 1 < len(lines)
            and _RULE_ROW.match(lines[i + 1])
            and "-" in lines[i + 1]
        ):
            rule = lines[i + 1]
            cuts = [m.start() for m in re.finditer(r"-+", rule)]
            out.append("\t".join(line[a:b].strip() for a, b in zip(cuts, cuts[1:] + [None])))
            continue
        if cuts is not None:
            if not line.strip():
                if out and out[-1] and "\t" in out[-1]:
                    cuts = None  # the table ends at its first blank line
                out.append("")
                continue
            row = line.expandtabs(8)
            cells = [row[a:b].strip() for a, b in zip(cuts, cuts[1:] + [None])]
            cells[-1] = row[cuts[-1] :].strip() if len(row) > cuts[-1] else ""
            # text left of the first cut (a wide amount) joins the first cell
            if cuts[0] > 0 and row[: cuts[0]].strip():
                cells[0] = (row[: cuts[0]].strip() + " " + cells[0]).strip()
            out.append("\t".join(cells))
            continue
        out.append(line.strip())
    return "\n".join(out)


def iter_documents(path: Path, document_start: str | None, stats: ReadStats, fmt: str = "plain") -> Iterator[str]:
    """Documents of one file: split at each match of ``document_start`` (multi-line regex), or the whole
    file. Text before the first match is not a document (counted in ``stats.preamble_chars``).

    ``fmt``: ``plain`` as described; ``mealmaster`` and ``mastercook`` split at their own recipe starts
    (``document_start`` is not used); ``auto`` is ``plain`` when ``document_start`` is given, else the
    format the file opens with. The format used is recorded in ``stats.formats``; a file that does not
    open with a recipe of a format asked for by name is an error."""
    chunks = iter_text_chunks(path, stats)
    first = next(chunks, "")
    found = detect_format(first)
    if fmt in ("mealmaster", "mastercook") and found != fmt and first.strip():
        what = (
            "a 'MMMMM----- Recipe via Meal-Master' line"
            if fmt == "mealmaster"
            else "a '* Exported from MasterCook *' line or an 'Amount<tab>Measure<tab>Ingredient' table"
        )
        raise InputError(
            f"{path}: not a {fmt} file: it does not open with {what} (data.format: {fmt}; use auto or plain)"
        )
    # auto: a document_start the user gave says how to split; otherwise what the file opens with
    used = (found if not document_start else "plain") if fmt == "auto" else fmt
    stats.formats[str(path)] = used
    if used == "mealmaster":
        document_start = _MM_START
    elif used == "mastercook":
        document_start = _MC_START
    flags = re.M | (re.I if used != "plain" else 0)
    chunks = itertools.chain([first], chunks)
    if not document_start:
        text = "".join(chunks)
        if text.strip():
            yield text
        return
    pat = re.compile(document_start, flags)
    # "^X" in multi-line mode matches after a newline; "\n(?:X)" says the same with a literal first
    # character, which the regex engine scans for ~3x faster (1.4 s -> 0.5 s on the shared corpus).
    later = re.compile("\n(?:" + document_start[1:] + ")", flags) if document_start.startswith("^") else None
    buf = ""
    started = False
    saw_text = False
    for chunk in chunks:
        buf += chunk
        pos = 0
        if not started:
            m = pat.search(buf)
            if not m:
                # keep only a bounded tail while looking for the first match
                if len(buf) > (1 << 16):
                    stats.preamble_chars += len(buf[: -(1 << 16)].strip())
                    buf = buf[-(1 << 16) :]
                    saw_text = True
                continue
            stats.preamble_chars += len(buf[: m.start()].strip())
            buf = buf[m.start() :]
            started = True
        if later is not None:
            starts = [m.start() + 1 for m in later.finditer(buf)]
        else:
            starts = [m.start() for m in pat.finditer(buf, 1) if m.start() > 0]
        for s in starts:
            yield buf[pos:s]
            pos = s
        buf = buf[pos:]
    if not started:
        if saw_text or buf.strip():
            raise InputError(f"{path}: no document starts here: data.document_start {document_start!r} matches nowhere")
        return
    if buf.strip():
        yield buf


def clean_document(text: str) -> str:
    """Strip leading blank lines and trailing whitespace; end with exactly one newline."""
    text = text.lstrip("\n").rstrip()
    return text + "\n" if text else ""


# ---------------------------------------------------------------- building


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


def settings_of(cfg) -> dict:
    d = cfg.data
    return {
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
        with _open_h5(path) as f:
            if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                return None
            return str(f.attrs.get("fingerprint", ""))
    except Exception:
        return None  # unreadable: rebuild


def _open_h5(path: Path):
    h5py = _h5py()
    try:
        return h5py.File(path, "r", locking=False)
    except TypeError:  # an h5py without the locking argument
        os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
        return h5py.File(path, "r")


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
            import threading

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
    fp = fingerprint_of(settings_of(cfg), resolve_sources(cfg.data.corpus))
    return _existing_fingerprint(Path(cfg.h5_path)) == fp


def run_preprocess(cfg) -> PreprocessResult:
    """Build ``cfg.h5_path`` from ``cfg.data`` (see the module docstring); skip if it is up to date."""
    t0 = time.perf_counter()
    out = Path(cfg.h5_path)
    settings = settings_of(cfg)
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
    with _open_h5(out) as f:
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
            counts = _build(cfg, settings, sources, fp, tmp)
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


def _build(cfg, settings: dict, sources: list[Source], fp: str, tmp: Path) -> dict:
    """Read, tokenize, split, count, map and write. Memory: the provisional uint32 ids of the whole stream
    (4 bytes a token) plus the final stream (1-4 bytes a token); no per-window copies, and per-token
    Python objects only for one batch of about a megabyte of text at a time."""
    d = cfg.data
    tok_name = d.tokenizer
    window, stride = settings["window"], settings["stride"]
    closes_with_eor = tok_name in ("recipe", "char")
    line_token = EOS if tok_name == "whitespace" else NL
    specials = [UNK, EOR] if closes_with_eor else [UNK, EOS]
    interner = _Interner()  # token bytes -> provisional id
    for t in specials + [line_token]:
        interner[t.encode()]  # noqa: B018 -- fixed provisional ids for the specials
    if closes_with_eor:
        interner.alias(DOC_SEP, interner[EOR.encode()])  # the document separator *is* the EOR token
        sep_id = interner[EOR.encode()]
    else:
        sep_id = interner[DOC_SEP]  # removed from the stream after it has given the document lengths
    cp_ids = np.full(0x110000, np.iinfo(np.uint32).max, dtype=np.uint32) if tok_name == "char" else None

    def _char_ids(text: str) -> np.ndarray:
        """Characters -> provisional ids through a code-point table: no Python object per character."""
        cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        seen = np.unique(cps)
        for cp in seen[cp_ids[seen] == np.iinfo(np.uint32).max].tolist():
            cp_ids[cp] = lookup(DOC_SEP if cp == 2 else chr(cp).encode("utf-8"))
        return cp_ids[cps]

    stats = ReadStats()
    chunks: list[np.ndarray] = []  # provisional ids; each chunk holds whole documents
    chunk_docs: list[int] = []  # number of documents in each chunk
    doc_len: list[np.ndarray] = []
    doc_src: list[int] = []
    doc_ingr: list[tuple[int, int]] = []
    batch: list[str] = []
    batch_chars = 0
    structured = [False]  # the current file's documents have tab-separated tables (TAB tokens)
    lookup = interner.__getitem__

    def flush() -> None:
        nonlocal batch, batch_chars
        if not batch:
            return
        if tok_name == "char":
            ids = _char_ids("\x02".join(batch) + "\x02")
        else:
            toks = tokenize_documents_bytes(batch, tok_name, keep_tabs=structured[0])
            ids = np.fromiter(map(lookup, toks), dtype=np.uint32, count=len(toks))
            del toks
        ends = np.flatnonzero(ids == sep_id) + 1
        if len(ends) != len(batch):  # cannot happen: control characters were removed on reading
            raise RuntimeError(f"document separator count {len(ends)} != {len(batch)} documents")
        lens = np.diff(ends, prepend=0)
        if not closes_with_eor:
            ids = ids[ids != sep_id]
            lens = lens - 1
        chunks.append(ids)
        chunk_docs.append(len(batch))
        doc_len.append(lens.astype(np.int64))
        batch, batch_chars = [], 0

    for si, src in enumerate(sources):
        n_before = len(doc_src)
        for text, structured[0] in prepared_documents(src.path, d.document_start, d.format, d.repair, stats):
            batch.append(text)
            batch_chars += len(text)
            doc_src.append(si)
            doc_ingr.append(ingredient_block(text) if structured[0] or text[:6].lower() == "title:" else (0, 0))
            if batch_chars >= _BATCH_CHARS:
                flush()
        if len(doc_src) == n_before:
            raise InputError(f"{src.path}: the corpus file is empty (no text)")
        flush()  # batches hold one file's documents: one format, one tab rule
    if not doc_src:
        raise InputError(f"{sources[0].path}: the corpus is empty")
    n_docs = len(doc_src)
    lengths = np.concatenate(doc_len)
    del doc_len
    chunk_of_doc = np.repeat(np.arange(len(chunks), dtype=np.int64), chunk_docs)
    offset_in_chunk = np.zeros(n_docs, dtype=np.int64)  # start of each document inside its chunk
    first_doc = np.concatenate([[0], np.cumsum(chunk_docs)])
    for c in range(len(chunks)):
        a, b = first_doc[c], first_doc[c + 1]
        np.cumsum(lengths[a : b - 1], out=offset_in_chunk[a + 1 : b])

    # ---- split by document: the files of a {train, val, test} mapping, or a seeded shuffle
    if any(s.split for s in sources):
        split_of_src = np.array([SPLITS.index(s.split) for s in sources], dtype=np.uint8)
        doc_split = split_of_src[np.asarray(doc_src, dtype=np.int64)]
    else:
        doc_split = _assign_splits(n_docs, settings["split"], settings["seed"])

    # ---- vocabulary from the train documents only
    n_types = interner.next_id
    train_counts = np.zeros(n_types, dtype=np.int64)
    for c, ids in enumerate(chunks):
        a, b = first_doc[c], first_doc[c + 1]
        is_train = np.repeat(doc_split[a:b] == 0, lengths[a:b])
        train_counts += np.bincount(ids[is_train], minlength=n_types)
    itos_prov = interner.itos()
    keep = train_counts >= d.min_count
    keep[[interner[t.encode()] for t in specials + [line_token]]] = True
    if tok_name == "recipe" and TAB.encode() in interner:
        keep[interner[TAB.encode()]] = True  # the column break of structured formats is never <unk>
    special_ids = [interner[t.encode()] for t in specials]
    rest = [int(i) for i in np.flatnonzero(keep) if int(i) not in special_ids]
    rest.sort(key=lambda i: (-int(train_counts[i]), itos_prov[i]))
    final_prov = special_ids + rest
    vocab = [itos_prov[i].decode("utf-8") for i in final_prov]
    if len(vocab) <= len(set(specials + [line_token])):  # only the specials and the newline/EOS
        raise InputError(
            f"{_train_name(sources)}: the vocabulary is empty: no word occurs at least "
            f"data.min_count={d.min_count} times in the train split "
            f"({int(train_counts.sum())} tokens)"
        )
    unk_id = 0
    drop = d.rare == "drop"
    dtype = _smallest_uint(len(vocab) + (1 if drop else 0))
    DROP = np.iinfo(dtype).max  # a sentinel id beyond the vocabulary, for data.rare: drop
    lut = np.full(n_types, DROP if drop else unk_id, dtype=dtype)
    lut[np.asarray(final_prov, dtype=np.int64)] = np.arange(len(final_prov), dtype=dtype)
    total_before = int(lengths.sum())
    for c in range(len(chunks)):  # map chunk by chunk: the uint32 ids go as the small ones come
        ids = lut[chunks[c]]
        chunks[c] = None
        if drop:
            keep_tok = ids != DROP
            cs = np.concatenate([[0], np.cumsum(keep_tok, dtype=np.int64)])
            a, b = first_doc[c], first_doc[c + 1]
            st = offset_in_chunk[a:b]
            lengths[a:b] = cs[st + lengths[a:b]] - cs[st]
            offset_in_chunk[a:b] = cs[st]
            ids = ids[keep_tok]
        chunks[c] = ids

    # ---- the stream in split order: train, val, test; original order inside each
    order = np.argsort(doc_split, kind="stable")
    sorted_lengths = lengths[order]
    starts = np.zeros(n_docs, dtype=np.int64)
    np.cumsum(sorted_lengths[:-1], out=starts[1:])
    n_tok = int(sorted_lengths.sum())
    tokens = np.empty(n_tok, dtype=dtype)
    pos = 0
    for k, n in zip(order.tolist(), sorted_lengths.tolist()):  # one slice copy per document
        a = int(offset_in_chunk[k])
        tokens[pos : pos + n] = chunks[chunk_of_doc[k]][a : a + n]
        pos += n
    del chunks
    sorted_split = doc_split[order]
    split_tokens = [int(sorted_lengths[sorted_split == k].sum()) for k in range(3)]
    # Train counts per final id from the per-type counts (np.bincount over the stream would first cast all
    # of it to int64: 8 bytes a token).
    vocab_counts = np.zeros(len(vocab), dtype=np.int64)
    mapped_types = lut != DROP if drop else slice(None)
    np.add.at(vocab_counts, lut[mapped_types].astype(np.int64), train_counts[mapped_types])
    unk_total = int(np.count_nonzero(tokens == unk_id))
    bounds = np.cumsum([0] + split_tokens)
    ranges = {s: [int(bounds[i]), int(bounds[i + 1])] for i, s in enumerate(SPLITS)}
    windows = {}
    for s, (a, b) in ranges.items():
        windows[s] = np.arange(a, b - window, stride, dtype=np.int64)
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
    by_files = any(x.split for x in sources)
    if by_files:  # a {train, val, test} mapping: a held-out file the vocabulary cannot read is a mistake
        nonword = np.array([unk_id] + [i for i, t in enumerate(vocab) if t in (EOR, EOS, NL)], dtype=tokens.dtype)
        for s in ("val", "test"):
            a, b = ranges[s]
            seg = tokens[a:b]
            words = seg[~np.isin(seg, nonword[1:])]
            if len(words) and not np.any(words != unk_id):
                files = ", ".join(str(x.path) for x in sources if x.split == s)
                raise InputError(
                    f"{files}: every word of the {s} file is unknown to the vocabulary of the "
                    f"train file {_train_name(sources)} (another language, or another "
                    f"tokenization?)"
                )
    doc_counts = [int((sorted_split == k).sum()) for k in range(3)]
    counts = {
        "documents": n_docs,
        "documents_by_split": dict(zip(SPLITS, doc_counts)),
        "tokens": n_tok,
        "tokens_by_split": dict(zip(SPLITS, split_tokens)),
        "windows": {s: int(len(w)) for s, w in windows.items()},
        "vocab_size": len(vocab),
        "types_seen": n_types - (0 if closes_with_eor else 1),
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
    _write_h5(
        tmp,
        tokens,
        vocab,
        vocab_counts,
        starts,
        sorted_split,
        order,
        np.asarray(doc_src, dtype=np.int32)[order],
        np.asarray(doc_ingr, dtype=np.int32).reshape(-1, 2)[order],
        windows,
        settings,
        fp,
        ranges,
        sources,
        counts,
    )
    return counts


def prepared_documents(
    path: Path, document_start: str | None, fmt: str, repair: bool, stats: ReadStats
) -> Iterator[tuple[str, bool]]:
    """(text, structured) of each document of one input file as the tokenizer sees it: decoded, cleaned,
    mojibake repaired, MealMaster/MasterCook tables canonicalised; ``structured``: keep tab tokens. The one
    path from a file to documents, for preprocessing and for scoring any text (hpcrnn.evaluate)."""
    for raw in iter_documents(path, document_start, stats, fmt):
        text = clean_document(raw)
        if not text:
            continue
        if repair and not text.isascii():
            text, n_rep = repair_mojibake(text)
            if n_rep:
                stats.repaired_documents += 1
                stats.repaired_chars += n_rep
                text = unicodedata.normalize("NFC", text)
        kind = stats.formats[str(path)]
        if kind == "mealmaster":
            text = clean_document(_canon_mealmaster(text))
        elif kind == "mastercook":
            text = clean_document(_canon_mastercook(text))
        yield text, kind != "plain"


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


def _train_name(sources: list[Source]) -> str:
    train = [s for s in sources if s.split in (None, "train")]
    return str((train or sources)[0].path)


def _write_h5(
    tmp,
    tokens,
    vocab,
    vocab_counts,
    starts,
    doc_split,
    doc_index,
    doc_source,
    ingredient_lines,
    windows,
    settings,
    fp,
    ranges,
    sources,
    counts,
) -> None:
    h5py = _h5py()
    n_tok = len(tokens)
    with h5py.File(tmp, "w") as f:
        # gzip level 1 with byte shuffle: ~1.3 bytes a token on the recipe corpus, ~2 s for 35 M tokens;
        # higher levels cost several times the time for a few percent.
        f.create_dataset(
            "tokens",
            data=tokens,
            chunks=(max(1, min(_H5_CHUNK, n_tok)),),
            compression="gzip",
            compression_opts=1,
            shuffle=tokens.dtype.itemsize > 1,
        )
        f.create_dataset("vocab", data=np.array(vocab, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("vocab_counts", data=vocab_counts)
        f.create_dataset("documents", data=starts)
        f.create_dataset("document_split", data=doc_split)
        f.create_dataset("document_index", data=doc_index.astype(np.int64))
        f.create_dataset("document_source", data=doc_source)
        f.create_dataset("ingredient_lines", data=ingredient_lines)
        g = f.create_group("windows")
        for s, w in windows.items():
            if len(w):
                g.create_dataset(s, data=w, chunks=(min(len(w), 1 << 18),), compression="gzip", compression_opts=1)
            else:
                g.create_dataset(s, data=w)
        a = f.attrs
        a["format_version"] = FORMAT_VERSION
        a["hpcrnn_version"] = __version__
        for k, v in settings.items():
            a[k] = json.dumps(v) if isinstance(v, list) else v
        a["vocab_hash"] = hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest()
        a["fingerprint"] = fp
        a["split_ranges"] = json.dumps(ranges)
        a["sources"] = json.dumps([s.describe() for s in sources])
        a["source_formats"] = json.dumps(counts.get("formats", {}))
        # where each split came from: the files of a {train, val, test} mapping, or a seeded shuffle
        by_files = any(s.split for s in sources)
        a["split_mode"] = "files" if by_files else "shuffle"
        a["split_files"] = json.dumps(
            {k: [str(s.path) for s in sources if s.split == k] for k in SPLITS} if by_files else {}
        )
        a["counts"] = json.dumps(counts)
        a["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())


# ---------------------------------------------------------------- reading


class Corpus:
    """A read-only view of ``corpus.h5`` (see the module docstring). Build with ``open_corpus``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._tokens: np.ndarray | None = None
        self._windows: dict[str, np.ndarray] = {}
        try:
            with _open_h5(self.path) as f:
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
                self._document_index = f["document_index"][()] if "document_index" in f else None
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
        """The whole token stream (loaded once, cached; read-only)."""
        if self._tokens is None:
            try:
                with _open_h5(self.path) as f:
                    t = f["tokens"][()]
            except (OSError, KeyError, ValueError) as e:
                raise InputError(
                    f"{self.path}: cannot read the token stream (truncated or corrupt?): "
                    f"{str(e).splitlines()[0] if str(e) else e.__class__.__name__}"
                ) from None
            if len(t) != self._n_tokens:
                raise InputError(f"{self.path}: token stream has {len(t)} tokens, expected {self._n_tokens}")
            t.setflags(write=False)
            self._tokens = t
        return self._tokens

    def windows(self, split: str) -> np.ndarray:
        """int64 start offsets of the windows of ``split`` (train|val|test)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (expected train, val or test)")
        if split not in self._windows:
            try:
                with _open_h5(self.path) as f:
                    w = f["windows"][split][()].astype(np.int64, copy=False)
            except (OSError, KeyError, ValueError) as e:
                raise InputError(f"{self.path}: cannot read windows/{split}: {e}") from None
            w.setflags(write=False)
            self._windows[split] = w
        return self._windows[split]

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
    h5py = _h5py()
    try:
        ok = h5py.is_hdf5(p)
    except OSError:
        ok = False
    if not ok:
        raise InputError(f"{p}: not an HDF5 corpus file (truncated or corrupt?)")
    return Corpus(p)
