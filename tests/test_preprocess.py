"""`python -m hpcrnn.preprocess` as a real process: exit statuses, messages, skip, kill, shared data."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from hpcrnn.data.corpus import open_corpus
from tests.helpers import FORMATS, run_module, start_module, tiny_config


def write_config(tmp_path: Path, corpus, **data) -> Path:
    """The tiny config as run "pp", window 8, data keys as given."""
    return tiny_config(tmp_path, corpus, file="pp.yaml", run={"name": "pp"}, data={"window": 8, **data})


def small_corpus(path: Path, n: int = 50) -> Path:
    rng = random.Random(0)
    words = "salt pepper flour sugar butter eggs milk water onion garlic".split()
    path.write_text(
        "".join(
            f"Title: Dish {i}\nYield: 2 servings\n1 c  {rng.choice(words)}\n"
            f"Stir the {rng.choice(words)} and the {rng.choice(words)}.\n\n"
            for i in range(n)
        )
    )
    return path


def big_corpus(path: Path, mb: float) -> Path:
    """Megabytes of recipe-shaped text, quickly (numpy), so that a run lasts long enough to be killed."""
    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(3000)] + [",", ".", "\n"])
    n = int(mb * 1e6 / 4)
    words = vocab[rng.integers(0, len(vocab), n)]
    body = " ".join(words.tolist())
    parts = body.split(" . ")
    path.write_text("".join(f"Title: r{i}\n{p} .\n\n" for i, p in enumerate(parts)))
    return path


def test_cli_builds_then_skips(tmp_path):
    cfg = write_config(tmp_path, small_corpus(tmp_path / "r.txt"))
    r = run_module("hpcrnn.preprocess", str(cfg))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "scratch" / "pp" / "corpus.h5"
    assert "wrote" in r.stdout and out.is_file()
    assert open_corpus(out).attrs["counts"]["documents"] == 50
    mtime = out.stat().st_mtime_ns
    r2 = run_module("hpcrnn.preprocess", str(cfg))
    assert r2.returncode == 0 and "up to date" in r2.stdout and out.stat().st_mtime_ns == mtime
    r3 = run_module("hpcrnn.preprocess", str(cfg), "data.window=4")  # a changed setting rebuilds
    assert r3.returncode == 0 and "wrote" in r3.stdout and open_corpus(out).window == 4


def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path):
    cfg = write_config(tmp_path, tmp_path / "missing.txt")
    r = run_module("hpcrnn.preprocess", str(cfg))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.txt" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "scratch" / "pp" / "corpus.h5").exists()
    # an existing good file survives a failed rebuild
    good = small_corpus(tmp_path / "r.txt")
    cfg = write_config(tmp_path, good)
    assert run_module("hpcrnn.preprocess", str(cfg)).returncode == 0
    out = tmp_path / "scratch" / "pp" / "corpus.h5"
    before = out.read_bytes()
    r = run_module("hpcrnn.preprocess", str(cfg), "data.document_start=^Recipe:")
    assert r.returncode == 2 and "matches nowhere" in r.stderr and str(good) in r.stderr
    assert out.read_bytes() == before


def _run_until_tmp_appears(cfg: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    p = start_module("hpcrnn.preprocess", str(cfg))
    out_dir = tmp_path / "scratch" / "pp"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        tmps = list(out_dir.glob(".corpus.h5.*.tmp")) if out_dir.exists() else []
        if tmps:
            return p, tmps[0]
        time.sleep(0.002)
    p.kill()
    pytest.fail(f"the temporary file never appeared (exit {p.returncode}): {p.communicate()}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_midway_leaves_no_output_file(tmp_path, sig):
    # window=stride=1 makes the write phase (1 window per token) long enough to kill reliably
    cfg = write_config(tmp_path, big_corpus(tmp_path / "big.txt", 6), window=1, stride=1)
    p, tmp = _run_until_tmp_appears(cfg, tmp_path)
    p.send_signal(sig)
    p.communicate(timeout=60)
    out = tmp_path / "scratch" / "pp" / "corpus.h5"
    assert not out.exists()
    if sig == signal.SIGTERM:
        assert p.returncode == 130 and not tmp.exists()  # cleaned up on the way out
    # the next run removes a dead run's leftovers and builds the file
    r = run_module("hpcrnn.preprocess", str(cfg))
    assert r.returncode == 0, r.stderr
    assert out.is_file() and not tmp.exists()
    assert len(open_corpus(out).windows("train")) > 0


@pytest.mark.parametrize(
    "name",
    [
        "lecture-allrecipes-excerpt.txt",
        "krecipes-mxptest.txt",
        "gourmet-mealmaster.mmf",
        "gourmet-mealmaster_2_col.mmf",
    ],
)
def test_shared_formats_preprocess_without_error(tmp_path, name):
    src = FORMATS / name
    if not src.exists():
        pytest.skip(f"{src} not present")
    cfg = write_config(tmp_path, src, document_start=None, window=4, split=[1.0, 0.0, 0.0])
    r = run_module("hpcrnn.preprocess", str(cfg))
    assert r.returncode == 0, r.stderr
    c = open_corpus(tmp_path / "scratch" / "pp" / "corpus.h5")
    assert len(c.tokens()) > 50 and len(c.windows("train")) > 0


def test_real_5k_corpus(tmp_path, shared_5k):
    cfg = write_config(tmp_path, shared_5k, min_count=5, window=50)
    r = run_module("hpcrnn.preprocess", str(cfg))
    assert r.returncode == 0, r.stderr
    c = open_corpus(tmp_path / "scratch" / "pp" / "corpus.h5")
    counts = c.attrs["counts"]
    assert counts["documents"] == 4869
    assert counts["repaired_documents"] > 50 and counts["unk_rate"] < 0.05
    assert c.tokens().dtype == np.uint16
    size = (tmp_path / "scratch" / "pp" / "corpus.h5").stat().st_size
    assert size < 2.5 * counts["tokens"]  # offsets, not copies: ~2 bytes a token or less
    # window i read back equals the slice of the stream it encodes, and decodes to recipe text
    w = c.windows("test")
    toks = c.window_tokens("test", len(w) // 2)
    assert np.array_equal(toks, c.tokens()[w[len(w) // 2] : w[len(w) // 2] + 51])


def _e2e_config(tmp_path: Path, data: dict) -> Path:
    return tiny_config(
        tmp_path,
        data["corpus"],
        file="e2e.yaml",
        replace=("data", "train", "generate"),
        run={"name": "e2e"},
        data=data,
        train={
            "batch_size": 4,
            "max_steps": 3,
            "checkpoint_every": 3,
            "eval_every": 3,
            "eval_batches": 1,
            "log_every": 1,
            "device": "cpu",
        },
        generate={"num_recipes": 2, "batch_size": 2, "max_tokens": 60, "quality_sample": 0, "device": "cpu"},
    )


@pytest.mark.slow
@pytest.mark.parametrize("case", ["split-files", "mastercook", "char-mealmaster"])
def test_user_corpora_end_to_end(tmp_path, case, shared_5k):
    """Issue 8: each shape of user data goes through preprocess, train and generate (tiny model)."""
    if case == "split-files":
        docs = [d for d in shared_5k.read_text(encoding="utf-8").split("\n\nTitle:") if d.strip()]
        files = {}
        for k, part in {"train": docs[:200], "val": docs[200:220], "test": docs[220:240]}.items():
            files[k] = str(tmp_path / f"{k}.txt")
            Path(files[k]).write_text("\n".join(part) + "\n", encoding="utf-8")
        data = {"corpus": files, "tokenizer": "whitespace", "min_count": 1, "window": 20}
    elif case == "mastercook":
        data = {
            "corpus": [str(FORMATS / "lecture-allrecipes-excerpt.txt"), str(FORMATS / "krecipes-mxptest.txt")],
            "format": "mastercook",
            "min_count": 1,
            "window": 8,
            "split": [1.0, 0.0, 0.0],
        }
    else:
        data = {
            "corpus": str(FORMATS / "gourmet-mealmaster.mmf"),
            "tokenizer": "char",
            "min_count": 1,
            "window": 32,
            "split": [0.6, 0.2, 0.2],
        }
    cfg = _e2e_config(tmp_path, data)
    for stage in ("preprocess", "train", "generate"):
        r = run_module(f"hpcrnn.{stage}", str(cfg))
        assert r.returncode == 0, f"{stage}: {r.stderr[-2000:]}"
    c = open_corpus(tmp_path / "scratch" / "e2e" / "corpus.h5")
    if case == "split-files":
        assert c.attrs["split_mode"] == "files" and c.document_split().tolist() == [0, 1, 2]
    elif case == "mastercook":
        assert set(c.attrs["counts"]["formats"].values()) == {"mastercook"} and c.num_documents == 4
    else:
        assert c.tokenizer == "char" and c.num_documents == 5
    out = list((tmp_path / "scratch" / "e2e" / "generated").glob("*/recipe-*.txt"))
    assert len(out) == 2 and all(p.read_text(encoding="utf-8") for p in out)


def test_cli_shards_build_the_same_corpus_one_process_would_skip(tmp_path):
    """data.shards is not a corpus setting: a corpus built in 2 shards is up to date for 1 shard."""
    cfg = write_config(tmp_path, small_corpus(tmp_path / "r.txt", n=80))
    r = run_module("hpcrnn.preprocess", str(cfg), "data.shards=2")
    assert r.returncode == 0, r.stderr
    assert "shard 2/2" in r.stdout and "wrote" in r.stdout
    out = tmp_path / "scratch" / "pp" / "corpus.h5"
    assert open_corpus(out).attrs["counts"]["documents"] == 80
    assert not list(out.parent.glob(".corpus.h5.shards-*"))
    r1 = run_module("hpcrnn.preprocess", str(cfg), "data.shards=1")
    assert r1.returncode == 0 and "up to date" in r1.stdout
