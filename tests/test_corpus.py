"""The corpus builder and the HDF5 reader (hpcrnn.corpus), in process, on small corpora the tests write."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import multiprocessing as mp
import random
import re

import h5py
import numpy as np
import pytest

from hpcrnn.config import from_dict
from hpcrnn.data.build import run_preprocess
from hpcrnn.data.corpus import FORMAT_VERSION, open_corpus
from hpcrnn.data.documents import clean_document
from hpcrnn.data.sources import SPLITS
from hpcrnn.errors import InputError
from hpcrnn.text.tokenize import EOR, NL, UNK, tokenize

WORDS = (
    "salt pepper flour sugar butter eggs milk water onion garlic oil rice beans cheese cream "
    "tomato lemon basil chicken beef"
).split()
VERBS = "stir bake boil simmer chop mix pour serve whisk fold".split()


def make_recipe(rng: random.Random, i: int, extra: str = "") -> str:
    ings = "\n".join(f"{rng.randint(1, 4)} c  {rng.choice(WORDS).capitalize()}" for _ in range(rng.randint(2, 5)))
    steps = " ".join(
        f"{rng.choice(VERBS).capitalize()} the {rng.choice(WORDS)}, then {rng.choice(VERBS)}."
        for _ in range(rng.randint(2, 6))
    )
    return f"Title: Dish number {i}{extra}\nCategories: Test\nYield: {rng.randint(1, 8)} servings\n{ings}\n{steps}\n\n"


def write_corpus(path, n=60, seed=0, extra=lambda i: "") -> list[str]:
    rng = random.Random(seed)
    docs = [make_recipe(rng, i, extra(i)) for i in range(n)]
    path.write_text("".join(docs), encoding="utf-8")
    return docs


def cfg_for(tmp_path, corpus, **data):
    d = {
        "corpus": corpus if not hasattr(corpus, "__fspath__") else str(corpus),
        "document_start": "^Title:",
        "min_count": 1,
        "window": 8,
    }
    d.update(data)
    return from_dict({"run": {"name": "t"}, "paths": {"scratch": str(tmp_path / "scratch")}, "data": d}, "test.yaml")


def expected_stream(docs: list[str], c, tokenizer="recipe") -> np.ndarray:
    """The stream the file must hold, computed independently: documents tokenized one by one, grouped by
    the file's own split assignment, encoded with its vocabulary."""
    with h5py.File(c.path, "r") as f:
        index = f["document_index"][()]
    out = []
    for k in index:
        toks = tokenize(clean_document(docs[k]), tokenizer) + ([EOR] if tokenizer != "whitespace" else [])
        out.append(c.encode(toks))
    return np.concatenate(out)


# ---------------------------------------------------------------- the file


def test_layout_vocab_and_attributes(tmp_path):
    src = tmp_path / "r.txt"
    docs = write_corpus(src)
    res = run_preprocess(cfg_for(tmp_path, src))
    assert not res.skipped and res.path.is_file()
    c = open_corpus(res.path)
    assert c.vocab[:2] == [UNK, EOR] and NL in c.stoi
    assert c.unk_id == 0 and c.eor_id == 1 and c.eos_id is None
    assert c.tokens().dtype == np.uint8  # the smallest unsigned type that fits ~40 words
    assert c.vocab_hash == hashlib.sha256("\n".join(c.vocab).encode()).hexdigest()
    assert c.window == 8 and c.stride == 8 and c.tokenizer == "recipe"
    a = c.attrs
    assert a["format_version"] == FORMAT_VERSION and a["seed"] == 0 and a["split"] == [0.9, 0.05, 0.05]
    assert a["sources"][0]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert a["sources"][0]["size"] == src.stat().st_size
    assert a["counts"]["documents"] == len(docs) == c.num_documents
    assert res.counts["tokens"] == len(c.tokens())
    # counts are the train split's
    tr = c.split_ranges["train"]
    assert (np.bincount(c.tokens()[tr[0] : tr[1]], minlength=len(c.vocab)) == c.counts).all()
    with h5py.File(res.path) as f:
        assert f["tokens"].compression == "gzip" and f["tokens"].chunks is not None


def test_every_window_is_the_corpus_slice_it_encodes(tmp_path):
    src = tmp_path / "r.txt"
    docs = write_corpus(src, n=80)
    c = open_corpus(run_preprocess(cfg_for(tmp_path, src, window=7, stride=3, split=[0.6, 0.2, 0.2])).path)
    want = expected_stream(docs, c)
    assert np.array_equal(c.tokens(), want)
    for split in SPLITS:
        a, b = c.split_ranges[split]
        w = c.windows(split)
        assert w.dtype == np.int64 and len(w) == (b - a - 7 - 1) // 3 + 1
        assert np.all(np.diff(w) == 3) and w[0] == a and w[-1] + 7 + 1 <= b  # inside its split
        for i in range(len(w)):
            assert np.array_equal(c.window_tokens(split, i), want[w[i] : w[i] + 8])


def test_split_is_by_document_and_disjoint(tmp_path):
    src = tmp_path / "r.txt"
    write_corpus(src, n=100, extra=lambda i: f" uniq{i}")
    c = open_corpus(run_preprocess(cfg_for(tmp_path, src, split=[0.8, 0.1, 0.1], seed=3)).path)
    ds = c.document_split()
    assert [int((ds == k).sum()) for k in range(3)] == [80, 10, 10]
    assert np.all(np.diff(ds) >= 0)  # grouped: train, then val, then test
    with h5py.File(c.path) as f:
        index = f["document_index"][()]
    assert sorted(index.tolist()) == list(range(100))  # each document exactly once
    for k in range(3):  # original order inside each split
        assert np.all(np.diff(index[ds == k]) > 0)
    starts = c.documents()
    for split in SPLITS:
        a, b = c.split_ranges[split]
        for d in c.documents_of(split):
            s, e = c.document_range(d)
            assert a <= s < e <= b  # no document straddles splits
            assert c.tokens()[e - 1] == c.eor_id  # every document closes with EOR
    assert starts[0] == 0
    # each recipe's unique title word: known in train (the vocabulary's split), unknown elsewhere
    titles = [c.decode(c.document_tokens(d))[5] for d in range(100)]
    assert len({t for t, k in zip(titles, ds) if k == 0}) == 80
    assert {t for t, k in zip(titles, ds) if k != 0} == {UNK}
    # another seed, another split
    other = open_corpus(
        run_preprocess(cfg_for(tmp_path, src, split=[0.8, 0.1, 0.1], seed=4, h5_path=str(tmp_path / "o.h5"))).path
    )
    with h5py.File(other.path) as f:
        assert not np.array_equal(f["document_index"][()], index)


def test_same_inputs_same_file_contents(tmp_path):
    src = tmp_path / "r.txt"
    write_corpus(src)
    a = open_corpus(run_preprocess(cfg_for(tmp_path, src, h5_path=str(tmp_path / "a.h5"))).path)
    b = open_corpus(run_preprocess(cfg_for(tmp_path, src, h5_path=str(tmp_path / "b.h5"))).path)
    assert np.array_equal(a.tokens(), b.tokens()) and a.vocab == b.vocab
    for s in SPLITS:
        assert np.array_equal(a.windows(s), b.windows(s))


def test_rare_words_become_unk_or_are_dropped(tmp_path):
    src = tmp_path / "r.txt"
    docs = write_corpus(src, n=40, extra=lambda i: " zyzzyva" if i == 0 else "")
    cfg = cfg_for(tmp_path, src, min_count=2, split=[1.0, 0.0, 0.0])
    c = open_corpus(run_preprocess(cfg).path)
    assert "zyzzyva" not in c.stoi and "dish" in c.stoi
    assert c.attrs["counts"]["unk_tokens"] >= 1
    n_tokens = len(c.tokens())
    title0 = c.decode(c.document_tokens(0)[:7])
    assert title0[:4] == ["title", ":", "dish", "number"] and title0[5:] == [UNK, NL]
    d = open_corpus(
        run_preprocess(
            cfg_for(tmp_path, src, min_count=2, split=[1.0, 0.0, 0.0], rare="drop", h5_path=str(tmp_path / "drop.h5"))
        ).path
    )
    assert d.attrs["counts"]["dropped_tokens"] == c.attrs["counts"]["unk_tokens"]
    assert len(d.tokens()) == n_tokens - d.attrs["counts"]["dropped_tokens"]
    assert d.decode(d.document_tokens(0)[:5]) == ["title", ":", "dish", "number", NL]  # "0" is rare too
    assert not np.any(d.tokens() == d.unk_id)
    # document offsets follow the dropped tokens
    assert all(d.tokens()[d.document_range(k)[1] - 1] == d.eor_id for k in range(len(docs)))


def test_vocabulary_comes_from_the_train_split_only(tmp_path):
    src = tmp_path / "r.txt"
    write_corpus(src, n=60, extra=lambda i: f" w{i}")
    c = open_corpus(run_preprocess(cfg_for(tmp_path, src, split=[0.5, 0.25, 0.25])).path)
    ds = c.document_split()
    for d in range(c.num_documents):
        word = c.decode(c.document_tokens(d))[5]
        assert (word == UNK) == (ds[d] != 0)  # the unique title words of val/test are unknown


def test_ingredient_lines_are_recoverable(tmp_path):
    src = tmp_path / "r.txt"
    src.write_text(
        "Title: Soup\nCategories: Soups\nYield: 2 servings\n1 c  Water\n2 ts Salt\n"
        "Boil the water with the salt for a long while, stirring now and then.\n\n"
        "Title: Tea\nCategories: Drinks\nYield: 1 servings\n1 c  Water\nSteep the tea.\n"
    )
    c = open_corpus(run_preprocess(cfg_for(tmp_path, src, window=2, split=[1.0, 0.0, 0.0])).path)
    assert c.ingredient_lines(0) == [["1", "c", "water"], ["2", "ts", "salt"]]
    assert c.ingredient_lines(1) == [["1", "c", "water"]]


def test_encode_maps_unknown_words_to_unk(tmp_path):
    src = tmp_path / "r.txt"
    write_corpus(src)
    c = open_corpus(run_preprocess(cfg_for(tmp_path, src)).path)
    ids = c.encode(["salt", "no-such-word", NL])
    assert ids.dtype == np.int64 and ids.tolist() == [c.stoi["salt"], c.unk_id, c.stoi[NL]]


# ---------------------------------------------------------------- inputs


def test_xz_gz_directory_and_list_inputs_give_the_same_stream(tmp_path):
    src = tmp_path / "r.txt"
    write_corpus(src)
    data = src.read_bytes()
    (tmp_path / "r.txt.xz").write_bytes(lzma.compress(data))
    (tmp_path / "r.txt.gz").write_bytes(gzip.compress(data))
    half = data.index(b"Title: Dish number 30")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_bytes(data[:half])
    (tmp_path / "dir" / "b.txt.gz").write_bytes(gzip.compress(data[half:]))
    (tmp_path / "dir" / "notes.pdf").write_bytes(b"%PDF")  # not a text file: ignored
    ref = open_corpus(run_preprocess(cfg_for(tmp_path, src, h5_path=str(tmp_path / "ref.h5"))).path)
    for i, corpus in enumerate(
        [
            tmp_path / "r.txt.xz",
            tmp_path / "r.txt.gz",
            tmp_path / "dir",
            [str(tmp_path / "dir" / "a.txt"), str(tmp_path / "dir" / "b.txt.gz")],
        ]
    ):
        c = open_corpus(run_preprocess(cfg_for(tmp_path, corpus, h5_path=str(tmp_path / f"{i}.h5"))).path)
        assert np.array_equal(c.tokens(), ref.tokens()) and c.vocab == ref.vocab, corpus


def test_decoding_fallback_nfc_crlf_and_repair(tmp_path):
    src = tmp_path / "r.txt"
    body = (
        "Title: Caf\xe9 au lait\r\nYield: 1\r\nBring to 80\xf8C.\r\n\r\n"  # latin-1 bytes, CRLF
        "Title: Cre\u0301me\nYield: 1\nBake at 350øF.\nText\x00with a NUL\n"
    )
    src.write_bytes(body[: body.index("Title: Cre")].encode("latin-1") + body[body.index("Title: Cre") :].encode())
    res = run_preprocess(cfg_for(tmp_path, src, window=2, split=[1.0, 0.0, 0.0]))
    c = open_corpus(res.path)
    words = set(c.decode(c.tokens()))
    assert {"café", "créme", "°", "textwith"} <= words  # cp1252 fallback, NFC, both repairs, NUL removed
    assert "\r" not in words and "ø" not in words
    assert res.counts["fallback_lines"] == 2 and res.counts["repaired_documents"] == 2
    assert res.counts["control_chars_removed"] == 1


def test_without_document_start_each_file_is_one_document(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(3):
        (tmp_path / "d" / f"{i}.txt").write_text(f"file {i} says hello world\nsecond line\n")
    c = open_corpus(
        run_preprocess(cfg_for(tmp_path, tmp_path / "d", document_start=None, window=3, split=[1.0, 0.0, 0.0])).path
    )
    assert c.num_documents == 3


def test_whitespace_tokenizer_stream(tmp_path):
    src = tmp_path / "ptb.txt"
    src.write_text(" the cat sat \n a dog ran \n the dog sat \n")
    c = open_corpus(
        run_preprocess(
            cfg_for(tmp_path, src, document_start=None, tokenizer="whitespace", window=3, split=[1.0, 0.0, 0.0])
        ).path
    )
    assert c.eos_id is not None and c.eor_id is None
    assert c.decode(c.tokens()) == "the cat sat <eos> a dog ran <eos> the dog sat <eos>".split()
    # a one-word vocabulary is still a vocabulary (EOS is a special, not a word)
    src.write_text("x x x\n")
    c = open_corpus(
        run_preprocess(
            cfg_for(tmp_path, src, document_start=None, tokenizer="whitespace", window=2, split=[1.0, 0.0, 0.0])
        ).path
    )
    assert c.vocab == [UNK, "<eos>", "x"]


# ---------------------------------------------------------------- re-running


def test_second_run_skips_and_changes_rebuild(tmp_path):
    from hpcrnn.data.build import is_current

    src = tmp_path / "r.txt"
    write_corpus(src)
    cfg = cfg_for(tmp_path, src)
    assert not is_current(cfg)
    first = run_preprocess(cfg)
    assert is_current(cfg) and not is_current(cfg_for(tmp_path, src, window=5))
    mtime = first.path.stat().st_mtime_ns
    again = run_preprocess(cfg)
    assert again.skipped and again.path == first.path and first.path.stat().st_mtime_ns == mtime
    assert again.counts == first.counts
    changed = run_preprocess(cfg_for(tmp_path, src, window=5))
    assert not changed.skipped and open_corpus(changed.path).window == 5
    write_corpus(src, seed=1)  # same size class, other content
    rebuilt = run_preprocess(cfg_for(tmp_path, src, window=5))
    assert not rebuilt.skipped


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "case, msg",
    [
        ("missing", "not found"),
        ("empty", "empty"),
        ("nodir", "no text files"),
        ("binary", "binary"),
        ("nomatch", "matches nowhere"),
        ("mincount", "vocabulary is empty"),
        ("window", "longer than"),
        ("badxz", "corrupt"),
    ],
)
def test_bad_input_is_one_line_naming_the_file_and_leaves_no_output(tmp_path, case, msg):
    src = tmp_path / "r.txt"
    extra = {}
    if case == "missing":
        src = tmp_path / "nope.txt"
    elif case == "empty":
        src.write_text("\n  \n")
    elif case == "nodir":
        src = tmp_path / "d"
        src.mkdir()
        (src / "x.bin").write_bytes(b"x")
    elif case == "binary":
        src.write_bytes(bytes(range(256)) * 40)
    elif case == "nomatch":
        src.write_text("no recipes here\n")
    elif case == "mincount":
        write_corpus(src, n=5)
        extra = {"min_count": 10**6}
    elif case == "window":
        write_corpus(src, n=5)
        extra = {"window": 10**6}
    elif case == "badxz":
        src = tmp_path / "r.txt.xz"
        src.write_bytes(lzma.compress(b"Title: x\n" * 100)[:40])
    cfg = cfg_for(tmp_path, src, **extra)
    with pytest.raises(InputError) as e:
        run_preprocess(cfg)
    text = str(e.value)
    assert msg in text and "\n" not in text and str(src) in text
    assert not cfg.h5_path.exists()
    assert not list(cfg.h5_path.parent.glob(".*.tmp")) if cfg.h5_path.parent.exists() else True


def test_failed_rebuild_keeps_the_previous_file(tmp_path):
    src = tmp_path / "r.txt"
    write_corpus(src)
    good = run_preprocess(cfg_for(tmp_path, src))
    before = good.path.read_bytes()
    src.write_text("")
    with pytest.raises(InputError):
        run_preprocess(cfg_for(tmp_path, src))
    assert good.path.read_bytes() == before


# ---------------------------------------------------------------- reading


def test_open_corpus_rejects_missing_truncated_corrupt_and_other_versions(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_corpus(tmp_path / "none.h5")
    src = tmp_path / "r.txt"
    write_corpus(src, n=200)
    path = run_preprocess(cfg_for(tmp_path, src)).path
    data = path.read_bytes()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as e:
        open_corpus(trunc).tokens()
    assert str(trunc) in str(e.value) and "\n" not in str(e.value)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(InputError, match="junk.h5"):
        open_corpus(junk)
    old = tmp_path / "old.h5"
    old.write_bytes(data)
    with h5py.File(old, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(InputError, match="format version"):
        open_corpus(old)


def _child_sum(path, q):
    c = open_corpus(path)
    q.put(int(c.tokens().astype(np.int64).sum()) + len(c.windows("train")))


def test_readable_by_many_processes_and_after_fork(tmp_path):
    src = tmp_path / "r.txt"
    write_corpus(src)
    path = run_preprocess(cfg_for(tmp_path, src)).path
    c = open_corpus(path)
    want = int(c.tokens().astype(np.int64).sum()) + len(c.windows("train"))
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    # children of a process that has the corpus open and loaded, reading the file at the same time
    procs = [ctx.Process(target=_child_sum, args=(path, q)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert got == [want] * 3 and all(p.exitcode == 0 for p in procs)

    # an inherited Corpus object works in the child too
    def inherited(q2):
        q2.put(int(c.tokens().astype(np.int64).sum()) + len(c.windows("train")))

    q2 = ctx.Queue()
    p = ctx.Process(target=inherited, args=(q2,))
    p.start()
    assert q2.get(timeout=60) == want
    p.join(timeout=60)


# ---------------------------------------------------------------- issue 8: split files, formats, chars


def _mapping(tmp_path, texts: dict) -> dict:
    out = {}
    for k, t in texts.items():
        p = tmp_path / f"{k}.txt"
        p.write_text(t)
        out[k] = str(p)
    return out


def test_split_mapping_takes_files_as_they_are(tmp_path):
    corpus = _mapping(
        tmp_path,
        {
            "train": " the cat sat \n a dog ran \n the dog sat \n",
            "val": " the cat ran \n a zebra sat \n",
            "test": " a dog sat \n",
        },
    )
    cfg = cfg_for(tmp_path, corpus, document_start=None, tokenizer="whitespace", window=2)
    c = open_corpus(run_preprocess(cfg).path)
    assert c.attrs["split_mode"] == "files"
    assert c.attrs["split_files"] == {k: [v] for k, v in corpus.items()}
    assert [s["split"] for s in c.attrs["sources"]] == ["train", "val", "test"]
    assert c.document_split().tolist() == [0, 1, 2]  # one document a file, no shuffle
    assert "zebra" not in c.stoi  # the vocabulary comes from the train file only
    a, b = c.split_ranges["val"]
    assert c.decode(c.tokens()[a:b]) == ["the", "cat", "ran", "<eos>", "a", UNK, "sat", "<eos>"]
    assert len(c.windows("test")) == 1 and c.attrs["counts"]["windows"]["test"] == 1


def test_split_mapping_of_recipe_files_keeps_file_order(tmp_path, shared_5k):
    docs = [d for d in re.split(r"(?m)^(?=Title:)", shared_5k.read_text(encoding="utf-8")) if d.strip()]
    parts = {"train": docs[:300], "val": docs[300:340], "test": docs[340:380]}
    corpus = _mapping(tmp_path, {k: "".join(v) for k, v in parts.items()})
    c = open_corpus(run_preprocess(cfg_for(tmp_path, corpus, window=50, min_count=2)).path)
    assert [int((c.document_split() == k).sum()) for k in range(3)] == [300, 40, 40]
    with h5py.File(c.path) as f:
        assert f["document_index"][()].tolist() == list(range(380))  # file order, no shuffle
    trained = set(c.decode(c.tokens()[: c.split_ranges["train"][1]]))
    assert set(c.vocab) <= trained | {UNK, EOR}


def test_split_mapping_errors_name_the_file(tmp_path):
    corpus = _mapping(tmp_path, {"train": "a b c\n", "val": "a b\n", "test": "a c\n"})
    missing = dict(corpus, val=str(tmp_path / "nope.txt"))
    with pytest.raises(InputError, match="nope.txt"):
        run_preprocess(cfg_for(tmp_path, missing, document_start=None, tokenizer="whitespace", window=1))
    foreign = dict(corpus, test=str(tmp_path / "fr.txt"))
    (tmp_path / "fr.txt").write_text("le chat noir\nun chien\n")
    cfg = cfg_for(tmp_path, foreign, document_start=None, tokenizer="whitespace", window=1)
    with pytest.raises(InputError) as e:
        run_preprocess(cfg)
    assert "fr.txt" in str(e.value) and "unknown" in str(e.value) and not cfg.h5_path.exists()


@pytest.mark.parametrize(
    "name, fmt, n_docs",
    [
        ("lecture-allrecipes-excerpt.txt", "mastercook", 2),
        ("krecipes-mxptest.txt", "mastercook", 2),
        ("gourmet-mealmaster.mmf", "mealmaster", 5),
        ("gourmet-mealmaster_2_col.mmf", "mealmaster", 1),
    ],
)
def test_recipe_file_formats_are_recognised_and_split(tmp_path, name, fmt, n_docs):
    from hpcrnn.text.formats import detect_format
    from tests.helpers import FORMATS

    src = FORMATS / name
    if not src.exists():
        pytest.skip(f"{src} not present")
    assert detect_format(src.read_text()) == fmt
    for asked in ("auto", fmt):
        c = open_corpus(
            run_preprocess(
                cfg_for(
                    tmp_path,
                    src,
                    document_start=None,
                    format=asked,
                    window=4,
                    split=[1.0, 0.0, 0.0],
                    h5_path=str(tmp_path / f"{asked}.h5"),
                )
            ).path
        )
        assert c.num_documents == n_docs and c.attrs["counts"]["formats"] == {str(src): fmt}
        assert "\t" in c.stoi  # table columns are kept as tokens
    # a corpus that quotes a recipe of another format further down stays plain under auto
    quoting = tmp_path / "quoting.txt"
    quoting.write_text("Title: Notes\nYield: 1\nSee below.\n\n" + src.read_text())
    assert detect_format(quoting.read_text()) == "plain"
    assert open_corpus(
        run_preprocess(cfg_for(tmp_path, quoting, window=4, split=[1.0, 0.0, 0.0], h5_path=str(tmp_path / "q.h5"))).path
    ).attrs["counts"]["formats"] == {str(quoting): "plain"}  # document_start given: plain under auto
    plain = open_corpus(
        run_preprocess(
            cfg_for(
                tmp_path,
                src,
                document_start=None,
                format="plain",
                window=4,
                split=[1.0, 0.0, 0.0],
                h5_path=str(tmp_path / "p.h5"),
            )
        ).path
    )
    assert plain.num_documents == 1 and "\t" not in plain.stoi  # plain: the file as it is, tabs are spaces
    other = "mealmaster" if fmt == "mastercook" else "mastercook"
    with pytest.raises(InputError) as e:
        run_preprocess(cfg_for(tmp_path, src, format=other, h5_path=str(tmp_path / "x.h5")))
    assert str(src) in str(e.value) and f"not a {other} file" in str(e.value)


def test_lecture_layout_round_trips_and_ingredients_are_found(tmp_path):
    from hpcrnn.text.detokenize import detokenize
    from tests.helpers import FORMATS

    src = FORMATS / "lecture-allrecipes-excerpt.txt"
    if not src.exists():
        pytest.skip(f"{src} not present")
    c = open_corpus(run_preprocess(cfg_for(tmp_path, src, document_start=None, window=4, split=[1.0, 0.0, 0.0])).path)
    first = src.read_text().split("\n\nCafe Mexicano")[0] + "\n"
    text = detokenize(c.decode(c.document_tokens(0)), "recipe")
    assert text.lower() == first.lower()  # the same tab table, lines and words (case aside)
    assert text.startswith("Almond Liqueur\n\nAmount\tMeasure\tIngredient\tPreparation Method\n3\tcup\tsugar\t\n")
    ingr = c.ingredient_lines(0)
    assert len(ingr) == 6 and ingr[0] == ["3", "\t", "cup", "\t", "sugar", "\t"]


def test_mealmaster_layout_comes_back_in_its_columns(tmp_path):
    from hpcrnn.text.detokenize import detokenize
    from tests.helpers import FORMATS

    src = FORMATS / "gourmet-mealmaster_2_col.mmf"
    if not src.exists():
        pytest.skip(f"{src} not present")
    c = open_corpus(run_preprocess(cfg_for(tmp_path, src, document_start=None, window=4, split=[1.0, 0.0, 0.0])).path)
    text = detokenize(c.decode(c.document_tokens(0)), "recipe")
    lines = text.split("\n")
    assert lines[0].startswith("MMMMM----- Recipe via Meal-Master") and lines[-2] == "MMMMM"
    assert "      Title: Chiles Rellenos De Queso" in lines
    assert "  1 1/3 oz Cheese, monterey jack" in lines  # the left column of a two-column line
    assert "   3/16 c  Flour, all purpose" in lines  # its right column, now a line of its own
    assert "MMMMM------------------------TOMATO SAUCE-----------------------------" in lines
    assert "  Prepare tomato sauce; keep warm." in lines
    assert len(c.ingredient_lines(0)) >= 14


def test_char_tokenizer_stream_and_round_trip(tmp_path):
    src = tmp_path / "r.txt"
    docs = write_corpus(src, n=30)
    c = open_corpus(run_preprocess(cfg_for(tmp_path, src, tokenizer="char", split=[1.0, 0.0, 0.0])).path)
    from hpcrnn.text.detokenize import detokenize

    assert c.attrs["counts"]["unk_tokens"] == 0 and "T" in c.stoi and " " in c.stoi  # case and spaces kept
    assert c.tokens().dtype == np.uint8
    assert detokenize(c.decode(c.tokens()), "char") == "\n".join(clean_document(d) for d in docs)
    assert (
        c.ingredient_lines(0)[0][:4]
        == list(c.decode(c.document_tokens(0)))[sum(len(x) + 1 for x in clean_document(docs[0]).split("\n")[:3]) :][:4]
    )
