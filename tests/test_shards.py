"""Sharded preprocessing (data.shards): the same corpus.h5 as one process for any N, resumable by shard."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from hpcrnn.config import from_dict
from hpcrnn.data import shards
from hpcrnn.data.build import (
    preprocess_encode,
    preprocess_finish,
    preprocess_reduce,
    preprocess_shard,
    run_preprocess,
    shard_job,
)
from hpcrnn.data.corpus import open_h5
from hpcrnn.data.slices import plan_slices
from hpcrnn.data.sources import resolve_sources
from hpcrnn.errors import InputError
from tests.helpers import FORMATS, make_recipes

RECIPES_5K = Path("/work/shared/data/recipes/recipes-5k.txt")
RECIPES_ALL = Path("/work/shared/data/recipes/recipes-all.txt.xz")


def config(tmp_path: Path, corpus, name: str, shards_n: int, **data):
    raw = {
        "run": {"name": name},
        "paths": {"scratch": str(tmp_path / "scratch")},
        "data": {"corpus": corpus, "document_start": "^Title:", "min_count": 2, "window": 12, "shards": shards_n}
        | data,
    }
    return from_dict(raw, name)


def contents(path: Path) -> tuple[dict, dict]:
    """Every dataset and every attribute but the creation time."""
    arrays = {}
    with open_h5(path) as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if hasattr(obj, "shape") else None)
        attrs = {k: v for k, v in f.attrs.items() if k != "created"}
    return arrays, attrs


def assert_same_corpus(a: Path, b: Path) -> None:
    (da, aa), (db, ab) = contents(a), contents(b)
    assert sorted(da) == sorted(db)
    for k in da:
        assert da[k].dtype == db[k].dtype, k
        assert np.array_equal(da[k], db[k]), k
    assert aa == ab


def build_both(tmp_path: Path, corpus, ns=(2, 3), **data) -> None:
    ref = run_preprocess(config(tmp_path, corpus, "one", 1, **data)).path
    for n in ns:
        res = run_preprocess(config(tmp_path, corpus, f"n{n}", n, **data))
        assert_same_corpus(ref, res.path)
        leftovers = list(res.path.parent.glob(".corpus.h5.shards-*"))
        assert leftovers == [], leftovers  # the shard outputs are removed once corpus.h5 is in place


def test_fixture_corpus_equal_for_1_2_3_shards(tmp_path):
    corpus = tmp_path / "r.txt"
    corpus.write_text(make_recipes(300, seed=3))
    build_both(tmp_path, str(corpus))


def test_several_files_drop_and_whitespace_equal(tmp_path):
    """A directory of files (one gzip), rare words dropped, the whitespace tokenizer (its document separator
    is not a stored token)."""
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.txt").write_text(make_recipes(120, seed=1))
    (d / "b.txt").write_text("preamble line, not a recipe\n\n" + make_recipes(7, seed=2))
    (d / "c.txt.gz").write_bytes(gzip.compress(make_recipes(90, seed=4).encode()))
    build_both(tmp_path, str(d), ns=(2, 4), rare="drop", tokenizer="whitespace")


def test_split_files_and_char_tokenizer_equal(tmp_path):
    files = {}
    for i, split in enumerate(("train", "val", "test")):
        files[split] = str(tmp_path / f"{split}.txt")
        Path(files[split]).write_text(make_recipes(150 if split == "train" else 30, seed=10 + i))
    build_both(tmp_path, files, ns=(3,), tokenizer="char")


def test_file_without_document_start_is_one_slice(tmp_path):
    """Each file is one document without data.document_start: slices are whole files, fewer than asked."""
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.txt").write_text(make_recipes(20, seed=i))
    cfg = config(tmp_path, str(d), "x", 5, document_start=None, window=4)
    slices, _ = plan_slices(cfg.data, resolve_sources(cfg.data.corpus), 5)
    assert len(slices) == 5 and sum(1 for s in slices if s) == 3
    assert all(p.whole for s in slices for p in s)
    build_both(tmp_path, str(d), ns=(5,), document_start=None, window=4)


def test_slices_cut_at_document_starts(tmp_path):
    corpus = tmp_path / "r.txt"
    corpus.write_text("\r\n".join(make_recipes(200, seed=5).split("\n")))  # CRLF: bytes are not characters
    cfg = config(tmp_path, str(corpus), "x", 4)
    slices, formats = plan_slices(cfg.data, resolve_sources(cfg.data.corpus), 4)
    raw = corpus.read_bytes()
    assert formats == ["plain"] and [len(s) for s in slices] == [1, 1, 1, 1]
    for s in slices[1:]:
        assert raw[s[0].start - 2 : s[0].start + 6] == b"\r\nTitle:"
    assert slices[0][0].start == 0 and slices[-1][0].end == -1
    assert [s[0].end for s in slices[:-1]] == [s[0].start for s in slices[1:]]


@pytest.mark.skipif(not RECIPES_5K.is_file(), reason="the shared recipes-5k corpus is not on this machine")
def test_recipes_5k_equal_for_1_2_3_shards(tmp_path):
    build_both(tmp_path, str(RECIPES_5K), min_count=5, window=50)


def test_rerun_redoes_only_the_missing_shard(tmp_path):
    corpus = tmp_path / "r.txt"
    corpus.write_text(make_recipes(200, seed=7))
    ref = run_preprocess(config(tmp_path, str(corpus), "one", 1)).path
    cfg = config(tmp_path, str(corpus), "arr", 3)
    for i in range(3):  # as a job array would: each step a task of its own
        preprocess_shard(cfg, i, 3)
    work = shard_job(cfg, 3).work
    before = {p.name: p.stat().st_mtime_ns for p in work.glob("read-*")}
    (work / "read-1.npz").unlink()  # a task that died before its output was complete
    (work / "read-1.ids").unlink()
    for i in range(3):  # the requeued array
        preprocess_shard(cfg, i, 3)
    after = {p.name: p.stat().st_mtime_ns for p in work.glob("read-*")}
    assert sorted(after) == sorted(before)
    assert sorted(n for n in after if after[n] != before[n]) == ["read-1.ids", "read-1.npz"]
    preprocess_reduce(cfg, 3)
    for i in range(3):
        preprocess_encode(cfg, i, 3)
    (work / "enc-2.npz").unlink()
    preprocess_encode(cfg, 2, 3)
    res = preprocess_finish(cfg, 3)
    assert_same_corpus(ref, res.path)
    assert not work.exists()


def test_finish_before_the_shards_says_which_is_missing(tmp_path):
    corpus = tmp_path / "r.txt"
    corpus.write_text(make_recipes(50, seed=8))
    cfg = config(tmp_path, str(corpus), "arr", 2)
    preprocess_shard(cfg, 0, 2)
    with pytest.raises(Exception, match="read-1.npz: shard output missing"):
        preprocess_reduce(cfg, 2)


def test_an_empty_file_is_refused_as_one_process_does(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.txt").write_text(make_recipes(40, seed=1))
    (d / "b.txt").write_text("\n\n   \n")
    with pytest.raises(Exception, match=r"b\.txt: the corpus file is empty"):
        run_preprocess(config(tmp_path, str(d), "x", 2))


def test_other_work_dirs_are_removed(tmp_path):
    out = tmp_path / "corpus.h5"
    stale = shards.work_dir(out, "f" * 64, 2)
    stale.mkdir()
    (stale / "read-0.npz").write_bytes(b"x")
    shards.remove_other_work_dirs(out, None)
    assert not stale.exists()


@pytest.mark.slow
@pytest.mark.skipif(not RECIPES_ALL.is_file(), reason="the shared recipes-all corpus is not on this machine")
def test_recipes_all_equal_for_2_shards(tmp_path):
    """The whole archive (one .xz file: decompressed from the start by each slice's reader)."""
    build_both(tmp_path, str(RECIPES_ALL), ns=(2,), min_count=5, window=50)


def test_a_shard_tasks_input_error_reaches_the_caller(tmp_path):
    """An error in a worker process is the same one-line InputError one process raises."""
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.txt").write_text(make_recipes(40, seed=1))
    (d / "b.txt").write_text("Recipe: not a title line\nsome text\n")
    with pytest.raises(InputError, match=r"b\.txt: no document starts here"):
        run_preprocess(config(tmp_path, str(d), "x", 2))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_token_segments_make_the_stream_whatever_their_sizes(tmp_path, monkeypatch, dtype):
    """The corpus' token writer: segments around the HDF5 chunk size, regrouped into whole chunks that
    threads compress; every chunk stored exactly as HDF5's own shuffle and gzip filters store it, and the
    token map's copy (map_tmp) the same stream, uncompressed."""
    from hpcrnn.data import write_h5 as writer
    from hpcrnn.data.corpus import h5py_module

    h5py = h5py_module()
    monkeypatch.setattr(writer, "_H5_CHUNK", 7)
    rng = np.random.default_rng(0)
    for trial in range(40):
        top = np.iinfo(dtype).max
        segs = [rng.integers(0, top, k, endpoint=True).astype(dtype) for k in rng.integers(0, 20, rng.integers(1, 8))]
        segs.append(np.arange(1 + trial % 9, dtype=dtype))
        want, total = np.concatenate(segs), sum(len(s) for s in segs)
        ours, ref, raw = tmp_path / f"{trial}.h5", tmp_path / f"{trial}.ref.h5", tmp_path / f"{trial}.npy"
        with h5py.File(ours, "w") as f:
            writer._write_token_segments(f, iter(segs), total, dtype, raw)
        with h5py.File(ref, "w") as f:
            f.create_dataset("tokens", data=want, **writer._token_layout(total, dtype))
        with h5py.File(ours, "r") as a, h5py.File(ref, "r") as b:
            assert a["tokens"].chunks == (min(7, total),)
            assert np.array_equal(a["tokens"][()], want)
            for at in range(0, total, a["tokens"].chunks[0]):
                assert a["tokens"].id.read_direct_chunk((at,)) == b["tokens"].id.read_direct_chunk((at,)), at
        assert np.array_equal(np.load(raw), want) and np.load(raw).dtype == dtype


@pytest.mark.skipif(not FORMATS.is_dir(), reason="the shared format samples are not on this machine")
def test_mealmaster_and_mastercook_files_cut_at_their_recipe_starts(tmp_path):
    """Files in a recipe format (data.format auto, no document_start) are cut at that format's recipe start."""
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.mmf").write_text((FORMATS / "gourmet-mealmaster.mmf").read_text(encoding="utf-8", errors="replace") * 40)
    (d / "b.txt").write_text(
        (FORMATS / "lecture-allrecipes-excerpt.txt").read_text(encoding="utf-8", errors="replace") * 40
    )
    cfg = config(tmp_path, str(d), "x", 4, document_start=None, min_count=1, window=4)
    slices, formats = plan_slices(cfg.data, resolve_sources(cfg.data.corpus), 4)
    assert formats == ["mealmaster", "mastercook"]
    assert sum(1 for s in slices for p in s if not p.whole) >= 3  # cut inside the files, not only between
    build_both(tmp_path, str(d), ns=(4,), document_start=None, min_count=1, window=4)


def test_the_launchers_step_jobs_build_the_same_corpus(tmp_path):
    """What launch submits to Slurm for data.shards: 2 (read and encode once per shard, reduce and finish
    once, each pickled as submitit pickles it), run in order, builds the single process's corpus."""
    import pickle

    from hpcrnn.cluster.jobs import SHARD_STEPS, shard_step_jobs

    corpus = tmp_path / "r.txt"
    corpus.write_text(make_recipes(80, seed=5))
    ref = run_preprocess(config(tmp_path, str(corpus), "one", 1)).path
    cfg = config(tmp_path, str(corpus), "n2", 2)
    for step in SHARD_STEPS:
        jobs = shard_step_jobs(cfg, step, 2)
        assert len(jobs) == (2 if step in ("read", "encode") else 1)
        for job in jobs:
            pickle.loads(pickle.dumps(job))()
    assert_same_corpus(ref, cfg.h5_path)
    assert not list(cfg.h5_path.parent.glob(".corpus.h5.shards-*"))


def test_automatic_sharding_follows_the_input_text_size(tmp_path, monkeypatch, capsys):
    """data.shards: 0 (the default) runs one task per data.shard_mb MiB of input text (compressed inputs
    count decompressed); the corpus is the single process's."""
    from hpcrnn.data.slices import shard_count

    text = make_recipes(13000, seed=3)
    plain = tmp_path / "r.txt"
    plain.write_text(text)
    packed = tmp_path / "r.txt.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    mib = len(text.encode()) / 2**20
    assert 2 < mib < 3
    assert config(tmp_path, str(plain), "auto", 0).data.shards == 0  # automatic is what a config gets
    for corpus in (plain, packed):
        sources = resolve_sources(str(corpus))
        assert shard_count(config(tmp_path, str(corpus), "a", 0, shard_mb=1).data, sources) == 3
        assert shard_count(config(tmp_path, str(corpus), "b", 0).data, sources) == 1  # 1 GiB a task
        assert shard_count(config(tmp_path, str(corpus), "c", 2, shard_mb=1).data, sources) == 2  # as given
    ref = run_preprocess(config(tmp_path, str(plain), "one", 1)).path
    counts = []
    real = shards.run_local
    monkeypatch.setattr(shards, "run_local", lambda job, *a: counts.append(job.count) or real(job, *a))
    auto = run_preprocess(config(tmp_path, str(plain), "auto", 0, shard_mb=1)).path
    assert counts == [3]
    assert_same_corpus(ref, auto)


def _finish_traced(tmp_path: Path, n_recipes: int, n: int) -> tuple[int, int, dict, dict]:
    """Build the shards of a fixture corpus, then trace the finish: (numpy and Python peak, bytes of the
    corpus' arrays, split ranges, window starts)."""
    import json
    import tracemalloc

    tmp_path.mkdir()
    corpus = tmp_path / "r.txt"
    corpus.write_text(make_recipes(n_recipes, seed=11))
    cfg = config(tmp_path, str(corpus), "n", n, window=5)
    for i in range(n):
        preprocess_shard(cfg, i, n)
    preprocess_reduce(cfg, n)
    for i in range(n):
        preprocess_encode(cfg, i, n)
    out, job = tmp_path / "finished.h5", shard_job(cfg, n)
    tracemalloc.start()
    try:
        shards.finish_shards(job, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    names = ("tokens", "documents", "document_split", "document_index", "document_source", "ingredient_lines")
    with open_h5(out) as f:
        whole = sum(f[k].nbytes for k in names) + sum(f["windows"][s].nbytes for s in f["windows"])
        ranges = json.loads(f.attrs["split_ranges"])
        windows = {s: f["windows"][s][()] for s in ranges}
    return peak, whole, ranges, windows


def test_the_finish_holds_a_shard_not_the_corpus(tmp_path, monkeypatch):
    """The finish writes tokens, per-document arrays and window starts a shard's split at a time, so what
    it allocates follows the shard, not the corpus: 6x the corpus in 6x the shards adds under a sixth of
    the added arrays to its peak (holding any of them whole, as it did, adds all of that). The window
    starts, written from the split ranges in chunks smaller than a split, are the ranges' starts."""
    from hpcrnn.data import write_h5 as writer

    monkeypatch.setattr(writer, "_WINDOW_CHUNK", 1000)
    monkeypatch.setattr(writer, "_H5_CHUNK", 4096)  # the token writer holds one chunk: smaller than a shard
    _finish_traced(tmp_path / "warm", 1000, 2)  # what a process allocates once (imports, caches) is not counted
    small, small_whole, _, _ = _finish_traced(tmp_path / "small", 1000, 2)
    big, big_whole, ranges, windows = _finish_traced(tmp_path / "big", 6000, 12)
    assert big - small < (big_whole - small_whole) / 6, (small, big, small_whole, big_whole)
    assert len(windows["train"]) > 6 * 1000
    for s, (a, b) in ranges.items():
        assert np.array_equal(windows[s], np.arange(a, b - 5, 5)), s
