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

This module runs the stage (fingerprint, run lock, temporary file and rename); reading and tokenizing are in
``hpcrnn.data.stream``, the splits, vocabulary, encoding and HDF5 writing in ``hpcrnn.data.encode``. With
``data.shards > 1`` (or, with ``data.shards: 0``, inputs larger than ``data.shard_mb``) the same corpus is
built in N tasks of bounded memory (``hpcrnn.data.shards``; the steps a launcher would run are
``preprocess_shard``, ``preprocess_reduce``, ``preprocess_encode`` and ``preprocess_finish`` at the end of
this module).
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

from hpcrnn.config import corpus_settings
from hpcrnn.data import shards
from hpcrnn.data.corpus import FORMAT_VERSION, open_corpus, open_h5
from hpcrnn.data.encode import (
    _assign_splits,  # noqa: F401 -- re-exported: bench/scale_split.py imports it from here
    _build_corpus,
    _log,
)
from hpcrnn.data.slices import shard_count
from hpcrnn.data.sources import Source, resolve_sources
from hpcrnn.data.write_h5 import write_h5
from hpcrnn.errors import InputError, StorageError
from hpcrnn.fsutil import fsync_dir
from hpcrnn.run.checkpoints import list_complete
from hpcrnn.run.corpus_users import trained_on
from hpcrnn.run.lock import RunLock
from hpcrnn.text.tokenize import TEXT_REVISION

_BATCH_CHARS = 1 << 20  # documents are tokenized and interned in batches of about this many characters


@dataclass
class PreprocessResult:
    path: Path
    skipped: bool
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0
    exit_code: int = 0


def data_settings(cfg) -> dict:
    """The ``data.*`` settings a corpus file depends on (its attributes and part of its fingerprint). With
    ``data.vocab_from`` the hash of that vocabulary is one of them (and only then: the fingerprints of
    corpora built without it stay as they were)."""
    settings = corpus_settings(cfg)
    if cfg.data.vocab_from:
        settings["vocab_from"] = fixed_vocabulary(cfg).vocab_hash
    return settings


def fixed_vocabulary(cfg):
    """The vocabulary of ``data.vocab_from`` (hpcrnn/model/file.py), refused when its tokenizer is not
    ``data.tokenizer``: the same words would be other tokens."""
    from hpcrnn.data.vocab_from import load_vocabulary  # noqa: PLC0415 -- reads a model file with torch

    v = load_vocabulary(cfg.data.vocab_from)
    if v.tokenizer != cfg.data.tokenizer:
        raise InputError(
            f"data.vocab_from: {cfg.data.vocab_from} was tokenized with {v.tokenizer!r}, but "
            f"data.tokenizer is {cfg.data.tokenizer!r}: set data.tokenizer: {v.tokenizer}"
        )
    if cfg.data.sequences == "documents" and v.eor_id is None and v.eos_id is None:
        raise InputError(
            f"data.vocab_from: {cfg.data.vocab_from} has no end-of-document token (<eor> or <eos>), which "
            f"data.sequences: documents starts every sequence from: use stream or windows, or another vocabulary"
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


def _tmp_name(out: Path) -> Path:
    """This process's temporary file: host and pid, so a preprocess on another node is never mistaken for
    a dead one of ours (a pid means nothing on another host)."""
    return out.parent / f".{out.name}.{socket.gethostname()}-{os.getpid()}.tmp"


def _map_tmp_name(tmp: Path) -> Path:
    """Where the token map's copy is written beside ``tmp`` (the same owner, so stale ones go with it)."""
    return tmp.with_name(tmp.name[: -len(".tmp")] + "-map.tmp")


def _remove_stale_tmp(out: Path) -> None:
    """Remove temporary files of earlier preprocess runs on this host that died (SIGKILL) before renaming;
    another host's are left to it (the run lock keeps two from writing at once)."""
    host = socket.gethostname()
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        owner, _, pid_text = tmp.name[len(out.name) + 2 : -4].removesuffix("-map").rpartition("-")
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
    map_tmp = _map_tmp_name(tmp)
    with _SigtermAsInterrupt() as guard:
        try:
            given = fixed_vocabulary(cfg) if cfg.data.vocab_from else None
            count = shard_count(cfg.data, sources)
            if count > 1:
                job = _shard_job(cfg, settings, sources, fp, count)
                shards.remove_other_work_dirs(out, job.work)
                counts = shards.run_local(job, given, tmp, map_tmp)
            else:
                built = _build_corpus(cfg, settings, sources, given, _BATCH_CHARS)
                write_h5(tmp, built, settings, fp, sources, map_tmp=map_tmp)
                counts = built.counts
            if guard.received:
                raise KeyboardInterrupt("SIGTERM")
            os.replace(tmp, out)
            fsync_dir(out.parent)
            shards.remove_other_work_dirs(out, None)  # the shards' outputs are in corpus.h5 now
            open_corpus(out).token_map(ready=map_tmp)  # what training's ranks will map (not one write per rank)
        except OSError as e:  # disk full, quota: the old corpus.h5 (if any) is untouched
            raise StorageError(f"{out}: cannot write the corpus: {e.strerror or e}") from None
        finally:
            map_tmp.unlink(missing_ok=True)
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
    others = trained_on(out, _existing_fingerprint(out))
    if others:
        raise InputError(
            f"{out}: its inputs or data settings changed, but complete checkpoints ({others[0]}"
            f"{f' and {len(others) - 1} more' if len(others) > 1 else ''}) were trained on it: give this run "
            f"(or sweep) a new name, or another data.h5_path, to preprocess the new data"
        )
    trained = list_complete(cfg.checkpoint_dir, warn=False)
    if trained:
        raise InputError(
            f"{out}: its inputs or data settings changed, but the checkpoints of run {cfg.run.name!r} "
            f"({trained[-1].path}) were trained on it: give a new run.name to preprocess and train on the new data"
        )


# The sharded stage as a launcher runs it (a job array: ``preprocess_shard`` and ``preprocess_encode`` once per
# shard index, ``preprocess_reduce`` and ``preprocess_finish`` once, in the order read, reduce, encode,
# finish); ``run_preprocess`` with ``data.shards > 1`` runs all of them here. Each step skips what an
# earlier run of it wrote, so a requeued task redoes only its own shard.


def _shard_job(cfg, settings: dict, sources: list, fp: str, count: int):
    return shards.make_job(cfg.data, settings, sources, fp, Path(cfg.h5_path), count, _BATCH_CHARS)


def shard_job(cfg, count: int | None = None):
    """The sharded job of ``cfg`` (``count`` shards, default ``data.shards`` or the automatic count)."""
    settings, sources = data_settings(cfg), resolve_sources(cfg.data.corpus)
    count = count or shard_count(cfg.data, sources)
    return _shard_job(cfg, settings, sources, fingerprint_of(settings, sources), count)


def preprocess_shard(cfg, index: int, count: int) -> float:
    """Read and tokenize slice ``index`` of ``count``; returns the task's peak RSS in MiB."""
    return shards.read_shard(shard_job(cfg, count), index)


def preprocess_reduce(cfg, count: int) -> None:
    """Count the train words of all shards and choose the vocabulary."""
    shards.reduce_shards(shard_job(cfg, count), fixed_vocabulary(cfg) if cfg.data.vocab_from else None)


def preprocess_encode(cfg, index: int, count: int) -> float:
    """Map shard ``index`` to the vocabulary; returns the task's peak RSS in MiB."""
    return shards.encode_shard(shard_job(cfg, count), index)


def preprocess_finish(cfg, count: int) -> PreprocessResult:
    """Write ``corpus.h5`` from the shards and remove their outputs (under the run's preprocess lock)."""
    t0 = time.perf_counter()
    job = shard_job(cfg, count)
    out = Path(cfg.h5_path)
    with RunLock(cfg.run_dir, "preprocess"):
        if _existing_fingerprint(out) == job.fingerprint:
            return _up_to_date(out, t0)
        _refuse_replacing_a_trained_corpus(cfg, out)
        tmp = _tmp_name(out)
        map_tmp = _map_tmp_name(tmp)
        try:
            counts = shards.finish_shards(job, tmp, map_tmp)
            os.replace(tmp, out)
            fsync_dir(out.parent)
            open_corpus(out).token_map(ready=map_tmp)  # what training's ranks will map (not one write per rank)
        finally:
            map_tmp.unlink(missing_ok=True)
            if tmp.exists():
                tmp.unlink()
        shards.remove_other_work_dirs(out, None)
    return PreprocessResult(out, False, counts, time.perf_counter() - t0)
