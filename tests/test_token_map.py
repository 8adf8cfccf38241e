"""Readers map the corpus' tokens (hpcrnn/data/token_map.py, issue 27): one uncompressed copy beside
corpus.h5, written by preprocessing (or by the first reader), shared by every reader; a reader's private
memory does not grow with the corpus; a stale, torn or unwritable copy never changes what is read."""

import json
import os
import textwrap

import numpy as np
import pytest

from hpcrnn.data import token_map as TM
from hpcrnn.data.corpus import open_corpus, open_h5
from tests.helpers import make_recipes, prepared, run_python


def _h5_tokens(path):
    with open_h5(path) as f:
        return f["tokens"][()]


def _maps(cfg):
    return sorted(cfg.h5_path.parent.glob("corpus.tokens-*.npy"))


@pytest.fixture
def built(tmp_path):
    corpus = tmp_path / "recipes.txt"
    corpus.write_text(make_recipes(300))
    return prepared(tmp_path, corpus)[1]


@pytest.mark.parametrize("shards", [1, 2])
def test_preprocessing_writes_the_map_with_the_corpus_never_reading_it_back(tmp_path, monkeypatch, shards):
    """The map is written from the chunks corpus.h5 is written from (one process, or the sharded finish)
    and renamed into place: the corpus' tokens are never read back and decompressed to make it."""
    from hpcrnn.data.corpus import Corpus

    def refuse(self, lo, hi):
        raise AssertionError("the corpus' tokens were read back")

    corpus = tmp_path / "recipes.txt"
    corpus.write_text(make_recipes(300))
    monkeypatch.setattr(Corpus, "_read_tokens", refuse)
    cfg = prepared(tmp_path, corpus, data={"shards": shards})[1]
    monkeypatch.undo()
    (m,) = _maps(cfg)
    assert (
        np.array_equal(np.load(m), _h5_tokens(cfg.h5_path)) and np.load(m).dtype == open_corpus(cfg.h5_path).token_dtype
    )
    assert os.path.samefile(open_corpus(cfg.h5_path).tokens().filename, m)
    assert not list(cfg.h5_path.parent.glob(".corpus.h5.*"))  # no temporary left


def test_a_map_copy_that_cannot_be_written_never_fails_the_corpus(tmp_path, monkeypatch):
    """A full disk while the writer copies the tokens for the map: the partial copy is deleted (its space
    goes back to corpus.h5), the corpus is written, and the map is made from it afterwards as a reader
    would."""
    import errno
    import io

    from hpcrnn.data import write_h5

    class Full(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(write_h5._MapCopy, "_open", lambda self, n, dtype: setattr(self, "fh", Full(self.path, "wb")))
    corpus = tmp_path / "recipes.txt"
    corpus.write_text(make_recipes(200))
    cfg = prepared(tmp_path, corpus)[1]
    (m,) = _maps(cfg)
    assert np.array_equal(np.load(m), _h5_tokens(cfg.h5_path))
    assert not list(cfg.h5_path.parent.glob(".corpus.h5.*"))


def test_preprocessing_writes_the_map_and_readers_share_it(built):
    (m,) = _maps(built)
    c = open_corpus(built.h5_path)
    t = c.tokens()
    assert isinstance(t, np.memmap) and os.path.samefile(t.filename, m)
    assert not t.flags.writeable
    assert t.dtype == c.token_dtype and np.array_equal(t, _h5_tokens(built.h5_path))
    assert np.array_equal(c.window_tokens("train", 3), np.asarray(t[c.windows("train")[3] :][: c.window + 1]))


def test_a_missing_or_torn_map_is_written_again(built, monkeypatch):
    want = _h5_tokens(built.h5_path)
    (m,) = _maps(built)
    m.unlink()
    monkeypatch.setattr(TM, "_CHUNK", 1000)  # the copy goes in many pieces
    assert np.array_equal(open_corpus(built.h5_path).tokens(), want)
    assert _maps(built) == [m]
    m.write_bytes(m.read_bytes()[: m.stat().st_size // 2])  # torn: a header that promises more
    t = open_corpus(built.h5_path).tokens()
    assert isinstance(t, np.memmap) and np.array_equal(t, want)
    assert not list(m.parent.glob(".*.tmp"))


def test_a_rebuilt_corpus_never_maps_the_old_copy(built, tmp_path):
    (old,) = _maps(built)
    (tmp_path / "recipes.txt").write_text(make_recipes(200, seed=1))
    from hpcrnn.data.build import run_preprocess

    run_preprocess(built)  # nothing trained on it yet: replaced
    (new,) = _maps(built)
    assert new != old and not old.exists()
    assert np.array_equal(open_corpus(built.h5_path).tokens(), _h5_tokens(built.h5_path))


def test_where_no_copy_can_be_written_the_tokens_are_loaded(built, monkeypatch):
    want = _h5_tokens(built.h5_path)
    for m in _maps(built):
        m.unlink()

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(TM, "_write", refuse)
    t = open_corpus(built.h5_path).tokens()
    assert not isinstance(t, np.memmap) and not t.flags.writeable and np.array_equal(t, want)
    assert not _maps(built)


@pytest.mark.slow
def test_a_readers_private_memory_does_not_hold_the_corpus(tmp_path):
    """Every token read through the map (as stream-mode batches gather them) adds file cache, not the
    reader's private memory; loading the stream (the control) adds all of it."""
    corpus = tmp_path / "recipes.txt"
    corpus.write_text(make_recipes(60000))
    cfg = prepared(tmp_path, corpus)[1]
    script = textwrap.dedent(
        f"""
        import json, numpy as np
        from hpcrnn.data.corpus import open_corpus
        from hpcrnn.data.sequences import gather_rows

        def anon():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024

        c = open_corpus({str(cfg.h5_path)!r})
        before = anon()
        t = c.tokens()
        total = 0
        for lo in range(0, len(t) - 64 * 4096, 64 * 4096):
            total += int(gather_rows(t, lo + 4096 * np.arange(64), 4096).sum())
        mapped = anon() - before
        loaded = c._read_tokens(0, len(c))
        print(json.dumps(dict(bytes=int(loaded.nbytes), mapped=mapped, loaded=anon() - before - mapped)))
        """
    )
    r = run_python("-c", script)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["bytes"] > 3_000_000
    assert got["loaded"] > 0.9 * got["bytes"]  # the measurement sees a loaded stream
    assert got["mapped"] < 0.2 * got["bytes"], got


@pytest.mark.parametrize("window, stride", [(12, 12), (7, 3)])
def test_window_ranges_are_the_stored_window_starts(tmp_path, window, stride):
    """Training's windows mode computes each start from the split's range instead of holding them."""
    corpus = tmp_path / "recipes.txt"
    corpus.write_text(make_recipes(120))
    cfg = prepared(tmp_path, corpus, data={"window": window, "stride": stride})[1]
    c = open_corpus(cfg.h5_path)
    for s in ("train", "val", "test"):
        assert np.array_equal(np.array(c.window_range(s), dtype=np.int64), c.windows(s)), s


def test_window_order_is_the_seeded_permutation_without_the_starts_held():
    """The same batches as holding the starts and their permuted copy (16 bytes a window), from 4 bytes a
    window: every rank, across epochs."""
    from hpcrnn.data.batches import WindowBatches

    starts = range(5, 5 + 3 * 997, 3)
    held = np.array(starts, dtype=np.int64)
    for rank in (0, 1):
        wb = WindowBatches(starts, 20, rank, 2, seed=7, window=3)
        for step in (0, 1, 48, 49, 50, 120):
            epoch, pos = divmod(step, len(held) // 20)
            want = held[np.random.default_rng([7, epoch]).permutation(len(held))][pos * 20 + rank * 10 :][:10]
            assert np.array_equal(wb.rank_starts(step), want), (rank, step)
        assert wb._order.dtype == np.int32 and isinstance(wb.starts, range)
        assert np.array_equal(WindowBatches(held, 20, rank, 2, seed=7).rank_starts(77), wb.rank_starts(77))
