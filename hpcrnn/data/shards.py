"""Sharded preprocessing (``data.shards: N``): the same ``corpus.h5`` as one process, in N tasks of bounded memory.

The steps, each a function a launcher can run as a job (a Slurm array for the per-shard ones):

1. ``read_shard(job, i)``: task ``i`` reads its slice of the inputs (``hpcrnn.data.slices``), tokenizes and
   interns it with its own interner, and writes its provisional ids, its documents (length, source,
   ingredient lines) and its token strings.
2. ``reduce_shards(job, given)``: counts the documents of all shards, which gives the splits (the seeded
   shuffle is over the global document index); counts each word in the train documents shard by shard;
   chooses the vocabulary as one process does (the counts and the strings decide, not the ids); writes
   the vocabulary, the splits and each shard's lookup table (its ids -> final ids).
3. ``encode_shard(job, i)``: maps shard ``i`` to final ids (dropping rare words with ``data.rare: drop``)
   and writes its tokens split by split.
4. ``finish_shards(job, tmp)``: writes ``corpus.h5`` streaming the shards' tokens in stored order (the
   train documents of every shard, then val, then test), one shard's split at a time.

Every output is written under a temporary name and renamed, so a rerun (a requeued array task) redoes
only what is missing. The outputs live in a folder beside ``corpus.h5`` named by the fingerprint and N,
removed once ``corpus.h5`` is in place. Memory: a task holds its slice (about 4 bytes a token), the reduce
one shard's ids at a time plus the word counts, the finish one shard's split of tokens and of
per-document arrays (the window starts are written from the split ranges, a chunk at a time).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hpcrnn.data.encode import (
    _check_held_out_split,
    _choose_given_vocabulary,
    _choose_vocabulary,
    _corpus_counts,
    _held_out_words,
    _log,
    _lookup_table,
    _split_documents,
    _vocab_counts,
    split_positions,
)
from hpcrnn.data.slices import Piece, piece_documents, plan_slices
from hpcrnn.data.sources import SPLITS, ReadStats, Source
from hpcrnn.data.stream import _new_stream, _read_source
from hpcrnn.data.write_h5 import BuiltCorpus, Pieces, write_h5
from hpcrnn.errors import InputError
from hpcrnn.fsutil import fsync_dir
from hpcrnn.process import available_cpus


@dataclass
class ShardJob:
    """What every step needs: the ``data`` settings, the inputs, the fingerprint and the slices."""

    data: object  # cfg.data
    settings: dict
    sources: list[Source]
    fingerprint: str
    out: Path  # corpus.h5
    count: int
    slices: list[list[Piece]]
    formats: list[str]  # the format each input is read in
    batch_chars: int

    @property
    def work(self) -> Path:
        return work_dir(self.out, self.fingerprint, self.count)


def work_dir(out: Path, fingerprint: str, count: int) -> Path:
    return out.parent / f".{out.name}.shards-{fingerprint[:16]}-{count}"


def remove_other_work_dirs(out: Path, keep: Path | None) -> None:
    """Shard folders of earlier builds of ``out`` (other inputs, settings or N): never resumed."""
    for d in out.parent.glob(f".{out.name}.shards-*"):
        if d != keep and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


def make_job(data, settings: dict, sources: list[Source], fp: str, out: Path, count: int, batch_chars: int):
    """The job of ``count`` shards; its slices from the folder's ``plan.json`` when an earlier task wrote it
    (finding the cuts reads the inputs around them), else found now and written there."""
    plan = work_dir(out, fp, count) / "plan.json"
    if plan.is_file():
        raw = json.loads(plan.read_text())
        slices = [[Piece(*p) for p in s] for s in raw["slices"]]
        formats = raw["formats"]
    else:
        slices, formats = plan_slices(data, sources, count)
        plan.parent.mkdir(parents=True, exist_ok=True)
        raw = {"slices": [[[p.source, p.start, p.end] for p in s] for s in slices], "formats": formats}
        _atomic_write(plan, lambda fh: fh.write(json.dumps(raw).encode()))
    return ShardJob(data, settings, sources, fp, out, count, slices, formats, batch_chars)


def _atomic_write(path: Path, write) -> None:
    # host and pid: tasks of an array on other nodes may write the same file (plan.json) on a shared disk
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save(path: Path, **arrays) -> None:
    _atomic_write(path, lambda fh: np.savez(fh, **arrays))


def _peak_mib() -> float:
    """This process's peak resident memory. Linux keeps ``ru_maxrss`` across exec, so a spawned worker
    would report its parent's peak: the memory map's own high-water mark (VmHWM) where there is one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def read_shard(job: ShardJob, index: int) -> float:
    """Step 1 for shard ``index`` (skipped when its output exists); returns this process's peak RSS in MiB."""
    meta = job.work / f"read-{index}.npz"
    if meta.is_file():
        return _peak_mib()
    stats = ReadStats()
    stream = _new_stream(job.data.tokenizer)
    for piece in job.slices[index]:
        path = job.sources[piece.source].path
        docs = piece_documents(job.data, path, piece, job.formats[piece.source], stats)
        _read_source(stream, piece.source, docs, job.batch_chars, lambda: None)
    _atomic_write(job.work / f"read-{index}.ids", lambda fh: [c.tofile(fh) for c in stream.chunks])
    n_tok = sum(len(c) for c in stream.chunks)
    stream.chunks = []
    itos = stream.interner.itos()
    _save(
        meta,
        lengths=np.concatenate(stream.doc_len) if stream.doc_len else np.zeros(0, dtype=np.int64),
        doc_src=np.asarray(stream.doc_src, dtype=np.int32),
        doc_ingr=np.asarray(stream.doc_ingr, dtype=np.int32).reshape(-1, 2),
        itos=np.frombuffer(b"".join(itos), dtype=np.uint8),
        itos_at=np.cumsum([0] + [len(w) for w in itos], dtype=np.int64),
        stats=np.array(json.dumps(asdict(stats))),
    )
    peak = _peak_mib()
    _log(f"shard {index + 1}/{job.count}: {len(stream.doc_src)} documents, {n_tok} tokens, peak RSS {peak:.0f} MiB")
    return peak


def _itos(meta) -> list[bytes]:
    blob, at = meta["itos"].tobytes(), meta["itos_at"].tolist()
    return [blob[a:b] for a, b in zip(at[:-1], at[1:])]


_ID_BLOCK = 1 << 22  # provisional ids read at a time after the read step: 16 MB, not 4 bytes a token at once


def _id_blocks(job: ShardJob, index: int):
    """(offset, ids) of shard ``index``'s provisional ids, a block at a time."""
    path = job.work / f"read-{index}.ids"
    n = path.stat().st_size // 4
    for a in range(0, n, _ID_BLOCK):
        yield a, np.fromfile(path, dtype=np.uint32, count=min(_ID_BLOCK, n - a), offset=4 * a)


def _read_outputs(job: ShardJob) -> list[Path]:
    """The read step's outputs (documents, strings) of every shard, each checked to exist."""
    paths = [job.work / f"read-{i}.npz" for i in range(job.count)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: shard output missing: run its preprocess task first")
    return paths


def reduce_shards(job: ShardJob, given) -> None:
    """Step 2 (skipped when its output exists). ``given``: the vocabulary of ``data.vocab_from`` or None."""
    out = job.work / "vocab.npz"
    if out.is_file():
        return
    metas = [np.load(p) for p in _read_outputs(job)]
    n_docs = [len(m["lengths"]) for m in metas]
    doc_src = np.concatenate([m["doc_src"] for m in metas])
    per_source = np.bincount(doc_src, minlength=len(job.sources))
    for src, n in zip(job.sources, per_source.tolist()):
        if n == 0:
            raise InputError(f"{src.path}: the corpus file is empty (no text)")
    doc_split = _split_documents(job.sources, doc_src, job.settings)
    interner = _new_stream(job.data.tokenizer).interner  # the specials first, as in one process
    local_to_global = [np.array([interner[w] for w in _itos(m)], dtype=np.int64) for m in metas]
    n_types = interner.next_id
    train_counts = np.zeros(n_types, dtype=np.int64)
    first_doc = np.concatenate([[0], np.cumsum(n_docs)]).astype(np.int64)
    for i, m in enumerate(metas):
        is_train = np.repeat(doc_split[first_doc[i] : first_doc[i + 1]] == 0, m["lengths"])
        local = np.zeros(len(local_to_global[i]), dtype=np.int64)
        for a, ids in _id_blocks(job, i):
            local += np.bincount(ids[is_train[a : a + len(ids)]], minlength=len(local))
        train_counts[local_to_global[i]] += local
    tok, sources = job.data.tokenizer, job.sources
    if given is not None:
        vocab, final_prov, train_counts = _choose_given_vocabulary(interner, train_counts, tok, given, sources)
    else:
        vocab, final_prov, train_counts = _choose_vocabulary(interner, train_counts, tok, job.data.min_count, sources)
    lut, drop_id = _lookup_table(interner.next_id, final_prov, len(vocab), job.data.rare == "drop")
    closes_with_eor = tok in ("recipe", "char")
    _save(
        out,
        vocab=np.frombuffer("".join(vocab).encode("utf-8"), dtype=np.uint8),
        vocab_at=np.cumsum([0] + [len(w.encode("utf-8")) for w in vocab], dtype=np.int64),
        vocab_counts=_vocab_counts(lut, drop_id, train_counts, len(vocab)),
        doc_split=doc_split,
        first_doc=first_doc,
        types_seen=np.int64(n_types - (0 if closes_with_eor else 1)),
        drop_id=np.int64(-1 if drop_id is None else drop_id),
        **{f"lut_{i}": lut[g] for i, g in enumerate(local_to_global)},
    )


def _vocabulary(v) -> list[str]:
    blob, at = v["vocab"].tobytes(), v["vocab_at"].tolist()
    return [blob[a:b].decode("utf-8") for a, b in zip(at[:-1], at[1:])]


def encode_shard(job: ShardJob, index: int) -> float:
    """Step 3 for shard ``index`` (skipped when its output exists); returns this process's peak RSS in MiB."""
    out = job.work / f"enc-{index}.npz"
    if out.is_file():
        return _peak_mib()
    meta, v = np.load(job.work / f"read-{index}.npz"), np.load(job.work / "vocab.npz")
    first = int(v["first_doc"][index])
    lengths = meta["lengths"].copy()
    doc_split = v["doc_split"][first : first + len(lengths)]
    lut = v[f"lut_{index}"]
    tokens = np.empty(int(lengths.sum()), dtype=lut.dtype)
    for a, ids in _id_blocks(job, index):
        tokens[a : a + len(ids)] = lut[ids]
    before = len(tokens)
    drop_id = int(v["drop_id"])
    if drop_id >= 0:  # rare words leave the stream and shorten their documents
        keep = tokens != drop_id
        cs = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
        ends = np.cumsum(lengths)
        lengths = cs[ends] - cs[ends - lengths]
        tokens = tokens[keep]
    arrays = {"dropped": np.int64(before - len(tokens)), "unk": np.int64(np.count_nonzero(tokens == 0))}
    by_files = any(s.split for s in job.sources)
    vocab = _vocabulary(v) if by_files else []
    for k, s in enumerate(SPLITS):
        seg = tokens[np.repeat(doc_split == k, lengths)]
        arrays[f"tokens_{s}"], arrays[f"lengths_{s}"] = seg, lengths[doc_split == k]
        arrays[f"words_{s}"] = np.array(_held_out_words(seg, vocab) if by_files else (0, 0), dtype=np.int64)
    _save(out, **arrays)
    return _peak_mib()


def finish_shards(job: ShardJob, tmp: Path, map_tmp: Path | None = None) -> dict:
    """Step 4: write ``corpus.h5`` to ``tmp`` (the caller renames it), and the token map's copy to
    ``map_tmp`` if given; returns its counts. Everything is written one shard's split at a time, in stored
    order (train documents of every shard, then val, then test), each shard's files open only while it is
    read; what is held whole is one byte a document (the splits) and the vocabulary."""
    _read_outputs(job)
    v = np.load(job.work / "vocab.npz")
    vocab, doc_split = _vocabulary(v), v["doc_split"]
    split_tokens, words, unk, dropped = [0, 0, 0], {"val": 0, "test": 0}, 0, 0
    for i in range(job.count):
        with _enc(job, i) as e:
            split_tokens = [n + int(e[f"lengths_{s}"].sum()) for n, s in zip(split_tokens, SPLITS)]
            words = {s: words[s] + e[f"words_{s}"] for s in words}
            unk, dropped = unk + int(e["unk"]), dropped + int(e["dropped"])
    ranges, windows = split_positions(split_tokens, job.settings, job.sources)
    if any(x.split for x in job.sources):
        for s in ("val", "test"):
            _check_held_out_split(s, *words[s].tolist(), job.sources)
    stats = _merged_stats(job)
    counts = _corpus_counts(doc_split, split_tokens, windows, len(vocab), int(v["types_seen"]), unk, dropped, stats)
    built = BuiltCorpus(
        tokens=np.zeros(0, dtype=v["lut_0"].dtype),
        vocab=vocab,
        vocab_counts=v["vocab_counts"],
        **_document_columns(job, doc_split, v["first_doc"]),
        windows=windows,
        ranges=ranges,
        counts=counts,
    )
    write_h5(tmp, built, job.settings, job.fingerprint, job.sources, segments=_tokens(job), map_tmp=map_tmp)
    return counts


def _tokens(job: ShardJob):
    """The stream in stored order, one shard's split at a time."""
    for k, i in _segments(job):
        with _enc(job, i) as e:
            yield e[f"tokens_{SPLITS[k]}"]


def _segments(job: ShardJob) -> list[tuple[int, int]]:
    """(split, shard) in stored order: the train documents of every shard, then val, then test."""
    return [(k, i) for k in range(len(SPLITS)) for i in range(job.count)]


def _document_columns(job: ShardJob, doc_split: np.ndarray, first_doc: np.ndarray) -> dict:
    """The per-document datasets as ``Pieces``, one shard's split at a time in stored order."""
    segments = _segments(job)

    def picks(k: int, i: int) -> np.ndarray:
        return np.flatnonzero(doc_split[first_doc[i] : first_doc[i + 1]] == k)

    def starts():
        pos = 0
        for k, i in segments:
            with _enc(job, i) as e:
                lengths = e[f"lengths_{SPLITS[k]}"].astype(np.int64)
            yield pos + np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)[: len(lengths)]
            pos += int(lengths.sum())

    def column(key: str):
        def pieces():
            for k, i in segments:
                with np.load(job.work / f"read-{i}.npz") as m:
                    yield m[key][picks(k, i)]

        return pieces

    with np.load(job.work / "read-0.npz") as m:
        src, ingr = m["doc_src"], m["doc_ingr"]
    n, split_dtype = len(doc_split), doc_split.dtype
    return {
        "starts": Pieces(np.dtype(np.int64), (n,), starts),
        "doc_split": Pieces(
            split_dtype, (n,), lambda: (np.full(len(picks(k, i)), k, split_dtype) for k, i in segments)
        ),
        "doc_index": Pieces(np.dtype(np.int64), (n,), lambda: (first_doc[i] + picks(k, i) for k, i in segments)),
        "doc_source": Pieces(src.dtype, (n,), column("doc_src")),
        "ingredient_lines": Pieces(ingr.dtype, (n, *ingr.shape[1:]), column("doc_ingr")),
    }


def _enc(job: ShardJob, i: int):
    return np.load(job.work / f"enc-{i}.npz")


def _merged_stats(job: ShardJob) -> ReadStats:
    total = ReadStats()
    for i in range(job.count):
        with np.load(job.work / f"read-{i}.npz") as m:
            part = json.loads(str(m["stats"]))
        for k, val in part.items():
            if k == "formats":
                total.formats.update(val)  # shards in input order: the files in the order they were read
            else:
                setattr(total, k, getattr(total, k) + val)
    return total


def run_local(job: ShardJob, given, tmp: Path, map_tmp: Path | None = None) -> dict:
    """All four steps here: the per-shard ones in a pool of min(N, CPUs) fresh ("spawn") processes."""
    empty = sum(1 for s in job.slices if not s)
    if empty:
        _log(
            f"data.shards={job.count}: the inputs split into only {job.count - empty} slices (a file without "
            f"data.document_start is one document, and a slice holds whole documents)"
        )
    cpus = available_cpus()
    t = [time.perf_counter()]
    with multiprocessing.get_context("spawn").Pool(min(job.count, cpus)) as pool:
        peaks = pool.starmap(read_shard, [(job, i) for i in range(job.count)])
        t.append(time.perf_counter())
        reduce_shards(job, given)
        t.append(time.perf_counter())
        peaks += pool.starmap(encode_shard, [(job, i) for i in range(job.count)])
        t.append(time.perf_counter())
    counts = finish_shards(job, tmp, map_tmp)
    t.append(time.perf_counter())
    took = ", ".join(f"{name} {b - a:.1f} s" for name, a, b in zip(("read", "reduce", "encode", "finish"), t, t[1:]))
    _log(
        f"{job.count} shards on {min(job.count, cpus)} processes: {took}; peak RSS {max(peaks):.0f} MiB in a "
        f"shard task, {_peak_mib():.0f} MiB in this one"
    )
    return counts
