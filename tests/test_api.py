"""Using a trained model: ``hpcrnn.load`` (generate, evaluate), ``python -m hpcrnn.export`` and its model
file, ``train.init_from``, ``data.vocab_from`` and ``generate.prompt: file:PATH``; each against the job
it must agree with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hpcrnn
from hpcrnn.config import load_config, save_resolved
from hpcrnn.data.build import is_current, run_preprocess
from hpcrnn.data.corpus import open_corpus
from hpcrnn.errors import ConfigError, InputError
from hpcrnn.generate.job import run_generate
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train.loop import run_train
from tests.helpers import make_recipes, run_module, run_python, stop_at, tiny_config

torch.set_num_threads(1)

_SECTIONS = {
    "data": {"split": [0.8, 0.1, 0.1]},
    "train": {"max_steps": 10, "checkpoint_every": 5, "eval_every": 5, "deterministic": False, "device": "cpu"},
    "generate": {"num_recipes": 4, "batch_size": 3, "max_tokens": 40, "quality_sample": 3, "device": "cpu"},
}
_TEXT = "Title: BEAN SOUP\nCategories: Soups\nYield: 4 Servings\n2 c  Beans\n1 ts Salt\nBoil the beans and salt.\n"


def _sections(**extra) -> dict:
    return {s: {**_SECTIONS.get(s, {}), **extra.get(s, {})} for s in {*_SECTIONS, *extra}}


def _recipes(out: Path) -> list[str]:
    return [p.read_text() for p in sorted(out.glob("recipe-*.txt"))]


def _one_line(e: Exception | str, *words: str) -> None:
    msg = str(e).strip()
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run (checkpoints at steps 5 and 10) and the recipes its generation job wrote."""
    d = tmp_path_factory.mktemp("api")
    (d / "recipes.txt").write_text(make_recipes(200))
    cfg_path = tiny_config(d, d / "recipes.txt", **_sections())
    cfg = load_config(cfg_path)
    run_preprocess(cfg)
    run_train(cfg)
    run_generate(cfg)
    return cfg_path, cfg


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    _, cfg = run
    out = tmp_path_factory.mktemp("export") / "tiny.pt"
    r = run_module("hpcrnn.export", str(cfg.run_dir), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and out.is_file()
    return out


class _CorpusAway:
    """The run's corpus.h5 moved elsewhere for the block, so nothing can read it."""

    def __init__(self, cfg):
        self.h5 = Path(cfg.h5_path)
        self.away = self.h5.with_name("moved-away.h5")

    def __enter__(self):
        self.h5.rename(self.away)

    def __exit__(self, *exc):
        self.away.rename(self.h5)


# ------------------------------------------------------------------------------------------ hpcrnn.load


def test_import_hpcrnn_stays_cheap():
    r = run_python("-c", "import sys, hpcrnn; assert 'torch' not in sys.modules; hpcrnn.load; print('ok')")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_generate_is_the_generation_jobs_recipes(run):
    cfg_path, cfg = run
    lm = hpcrnn.load(cfg.run_dir)
    job = _recipes(cfg.run_dir / "generated" / "default")
    assert len(job) == 4
    assert lm.generate(n=4) == job
    assert lm.generate(n=4, batch_size=1) == job  # recipe i depends on (seed, i) only
    # other settings: the job under the same overrides
    over = ["generate.name=other", "generate.prompt=apple pie", "generate.top_p=0.9", "generate.seed=3"]
    run_generate(load_config(cfg_path, over))
    other = _recipes(cfg.run_dir / "generated" / "other")
    assert lm.generate(n=4, prompt="apple pie", top_p=0.9, seed=3) == other
    assert other != job and all(r.startswith("Title: Apple Pie\n") for r in other)
    greedy = lm.generate(n=2, temperature=0.0, max_tokens=15)
    assert greedy[0] == greedy[1]


def test_load_a_config_file_or_a_step_and_what_it_offers(run):
    cfg_path, cfg = run
    lm = hpcrnn.load(cfg_path, checkpoint=5)
    assert lm.step == 5 and lm.source.name == "step-00000005"
    assert isinstance(lm.model, torch.nn.Module) and not lm.model.training
    assert lm.config.run.name == "tiny" and lm.config.model.hidden == 16
    corpus = open_corpus(cfg.h5_path)
    assert list(lm.vocab) == corpus.vocab and len(lm.vocab) == len(corpus.vocab) and "beans" in lm.vocab
    assert lm.vocab.encode("zucchini") == [corpus.unk_id]
    assert hpcrnn.load(cfg.run_dir).step == 10
    with pytest.raises(ConfigError, match="top_p"):
        lm.generate(top_p=0)
    with pytest.raises(ConfigError, match="n: 0"):
        lm.generate(n=0)


@pytest.mark.slow
def test_evaluate_is_what_the_evaluate_command_reports(run, tmp_path):
    _, cfg = run
    f = tmp_path / "soup.txt"
    f.write_text(_TEXT + "\n" + make_recipes(5, seed=9))
    r = run_module("hpcrnn.evaluate", str(cfg.run_dir), "--text", str(f), "--json")
    assert r.returncode == 0, r.stderr
    want = json.loads(r.stdout)["results"][0]
    lm = hpcrnn.load(cfg.run_dir)
    for got in (lm.evaluate(f.read_text()), lm.evaluate(f)):
        assert got["tokens"] == want["tokens"] and got["acc"] == want["acc"] and got["protocol"] == "standard"
        assert got["ppl"] == pytest.approx(want["ppl"], rel=1e-9)
    with pytest.raises(InputError) as e:
        lm.evaluate("zzqx qqxz\n")
    _one_line(e.value, "lm.evaluate: the text", "no document starts here")


def test_a_run_without_a_complete_checkpoint_is_one_clear_error(tmp_path, tiny_corpus):
    cfg = load_config(tiny_config(tmp_path, tiny_corpus))
    run_preprocess(cfg)
    save_resolved(cfg)  # as python -m hpcrnn.preprocess does
    for path in (cfg.run_dir, tmp_path / "tiny.yaml"):
        with pytest.raises(InputError) as e:
            hpcrnn.load(path)
        _one_line(e.value, "no complete checkpoint")


def test_bad_paths_are_one_line_errors(run, tmp_path):
    _, cfg = run
    (tmp_path / "notes.txt").write_text("just: [text\n")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    cases = [
        (tmp_path / "missing", "not found"),
        (tmp_path / "notes.txt", "invalid YAML"),
        (ckpt.latest(cfg.checkpoint_dir).path / "model.pt", "not an hpcrnn model file"),
        (tmp_path / "other.pt", "not an hpcrnn model file"),
    ]
    for path, words in cases:
        with pytest.raises((InputError, ConfigError)) as e:
            hpcrnn.load(path)
        _one_line(e.value, str(path.name), words)


# ------------------------------------------------------------------------------------------ the model file


@pytest.mark.slow
def test_export_then_load_and_generate_without_the_corpus(run, exported, tmp_path):
    cfg_path, cfg = run
    job = _recipes(cfg.run_dir / "generated" / "default")
    f = tmp_path / "soup.txt"
    f.write_text(_TEXT)
    want = hpcrnn.load(cfg.run_dir).evaluate(f)
    raw = torch.load(exported, weights_only=True)  # plain values and tensors only
    assert raw["format"] == "hpcrnn-model" and raw["text"]["tokenizer"] == "recipe"
    prov = raw["provenance"]
    assert prov["step"] == 10 and prov["corpus_fingerprint"] == open_corpus(cfg.h5_path).fingerprint
    assert prov["metrics"]["final"]["val"]["ppl"] > 1
    with _CorpusAway(cfg):
        lm = hpcrnn.load(exported)
        assert lm.step == 10 and lm.config.model.hidden == 16
        assert lm.generate(n=4) == job
        got = lm.evaluate(f)
        assert got["tokens"] == want["tokens"] and got["ppl"] == pytest.approx(want["ppl"], rel=1e-9)
        # the generation job, in another scratch with no corpus at all, from the file
        other = tiny_config(tmp_path, tmp_path / "nowhere.txt", file="other.yaml", **_sections())
        r = run_module("hpcrnn.generate", str(other), f"generate.checkpoint={exported}")
        assert r.returncode == 0, r.stderr
        out = tmp_path / "scratch" / "tiny" / "generated" / "default"
        assert _recipes(out) == job
        assert json.loads((out / "summary.json").read_text())["checkpoint"]["step"] == 10
        r = run_module("hpcrnn.generate", str(other), f"generate.checkpoint={exported}", "generate.prompt=random")
        assert r.returncode == 2 and "model file holds none" in r.stderr, r.stderr


@pytest.mark.slow
def test_export_an_earlier_checkpoint(run, tmp_path):
    _, cfg = run
    out = tmp_path / "sub" / "five.pt"
    r = run_module("hpcrnn.export", str(cfg.run_dir), "--checkpoint", "5", "-o", str(out))
    assert r.returncode == 0, r.stderr
    lm = hpcrnn.load(out)
    assert lm.step == 5
    assert lm.generate(n=4) == hpcrnn.load(cfg.run_dir, checkpoint=5).generate(n=4)


@pytest.mark.slow
def test_bad_model_files_and_export_errors(run, exported, tmp_path, tiny_corpus):
    _, cfg = run
    cut = tmp_path / "cut.pt"
    cut.write_bytes(exported.read_bytes()[:2000])
    with pytest.raises(InputError) as e:
        hpcrnn.load(cut)
    _one_line(e.value, "cut.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"format": "hpcrnn-model", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(InputError) as e:
        hpcrnn.load(tmp_path / "evil.pt")
    _one_line(e.value, "not loaded")
    raw = torch.load(exported, weights_only=True)
    raw["vocab"] = raw["vocab"][:-1] + ["tampered"]
    torch.save(raw, tmp_path / "tampered.pt")
    with pytest.raises(InputError, match="does not match its recorded hash"):
        hpcrnn.load(tmp_path / "tampered.pt")
    # the CLI: one line, exit 2
    fresh = load_config(tiny_config(tmp_path, tiny_corpus, file="fresh.yaml", run={"name": "fresh"}))
    run_preprocess(fresh)
    save_resolved(fresh)
    for args, words in (
        ([str(fresh.run_dir), "-o", str(tmp_path / "x.pt")], "no complete checkpoint"),
        ([str(cfg.run_dir), "-o", str(tmp_path)], "a directory"),
        ([str(cfg.run_dir), "--checkpoint", "7", "-o", str(tmp_path / "x.pt")], "not a usable checkpoint"),
    ):
        r = run_module("hpcrnn.export", *args)
        assert r.returncode == 2, r.stderr
        _one_line(r.stderr, *words.split(","))
    r = run_module("hpcrnn.generate", str(fresh.run_dir), f"generate.checkpoint={tmp_path / 'tampered.pt'}")
    assert r.returncode == 2 and "recorded hash" in r.stderr, r.stderr
    assert not (tmp_path / "x.pt").exists()


# -------------------------------------------------------------------- train.init_from, data.vocab_from


def _second_run(tmp_path: Path, name: str, **sections):
    """A run on other recipes, one of which names a word the first run never saw."""
    corpus = tmp_path / "more.txt"
    if not corpus.exists():
        corpus.write_text(make_recipes(60, seed=7).replace("Title: APPLE PIE", "Title: ZUCCHINI PIE", 1))
    return load_config(tiny_config(tmp_path, corpus, file=f"{name}.yaml", run={"name": name}, **_sections(**sections)))


def test_vocab_from_a_run_or_a_model_file(run, exported, tmp_path):
    _, cfg = run
    source = open_corpus(cfg.h5_path)
    for name, src in (("from-run", cfg.run_dir), ("from-file", exported)):
        new = _second_run(tmp_path, name, data={"vocab_from": str(src)})
        run_preprocess(new)
        c = open_corpus(new.h5_path)
        assert c.vocab == source.vocab and c.vocab_hash == source.vocab_hash
        assert "zucchini" not in c.vocab and c.attrs["counts"]["unk_tokens"] >= 1
        assert is_current(new)  # the fingerprint holds the vocabulary's hash: a second run has nothing to do
    own = _second_run(tmp_path, "own")
    run_preprocess(own)
    assert "zucchini" in open_corpus(own.h5_path).vocab  # without vocab_from the word is its own token


def test_init_from_starts_from_identical_weights(run, exported, tmp_path):
    _, cfg = run
    want = ckpt.load_model_state(ckpt.latest(cfg.checkpoint_dir))
    for name, src in (("init-run", cfg.run_dir), ("init-file", exported)):
        new = _second_run(tmp_path, name, data={"vocab_from": str(src)}, train={"init_from": str(src)})
        run_preprocess(new)
        res = run_train(new, on_step_boundary=stop_at(0))  # checkpoint before the first step
        assert res.step == 0
        got = ckpt.load_model_state(ckpt.latest(new.checkpoint_dir))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        res = run_train(new)  # then it trains on from there
        assert res.status == "done" and res.step == 10


@pytest.mark.slow
def test_mismatches_are_one_line_errors_naming_both_sides(run, tmp_path):
    _, cfg = run
    src = str(cfg.run_dir)
    char = _second_run(tmp_path, "char", data={"tokenizer": "char", "vocab_from": src})
    with pytest.raises(InputError) as e:
        run_preprocess(char)
    _one_line(e.value, "data.vocab_from", "'recipe'", "'char'")

    own = _second_run(tmp_path, "own-vocab", train={"init_from": src})
    run_preprocess(own)
    r = run_module("hpcrnn.train", own.source)
    assert r.returncode == 2, r.stderr
    _one_line(r.stderr.strip().splitlines()[-1], "train.init_from", "has vocabulary", "data.vocab_from")

    wide = _second_run(tmp_path, "wide", data={"vocab_from": src}, train={"init_from": src}, model={"hidden": 24})
    run_preprocess(wide)
    with pytest.raises(InputError) as e:
        run_train(wide)
    _one_line(e.value, "train.init_from", "model.hidden: 16 there, 24 here")

    chars = _second_run(tmp_path, "chars", data={"tokenizer": "char"}, train={"init_from": src})
    run_preprocess(chars)
    with pytest.raises(InputError) as e:
        run_train(chars)
    _one_line(e.value, "train.init_from", "'recipe'", "'char'")
    assert not ckpt.list_complete(wide.checkpoint_dir) and not ckpt.list_complete(chars.checkpoint_dir)


# ------------------------------------------------------------------------------------ prompts from files


def test_a_file_prompt_is_the_inline_prompt(run, tmp_path):
    cfg_path, cfg = run
    text = "Title: NUT CAKE\nCategories: Desserts\nYield: 2 Servings\n"
    (tmp_path / "prompt.txt").write_text(text)
    spec = f"generate.prompt=file:{tmp_path / 'prompt.txt'}"
    by_file = load_config(cfg_path, [spec, "generate.name=by-file"])
    assert by_file.generate.prompt == text  # the resolved config holds the text: a requeued job needs no file
    run_generate(by_file)
    run_generate(_inline(cfg_path, text))
    files = _recipes(cfg.run_dir / "generated" / "by-file")
    assert files == _recipes(cfg.run_dir / "generated" / "inline")
    assert all(f.startswith("Title: Nut Cake\nCategories: Desserts\nYield: 2 servings\n") for f in files)
    lm = hpcrnn.load(cfg.run_dir)
    assert lm.generate(n=4, prompt=f"file:{tmp_path / 'prompt.txt'}") == lm.generate(n=4, prompt=text) == files


def _inline(cfg_path: Path, text: str):
    cfg = load_config(cfg_path, ["generate.name=inline"])
    cfg.generate.prompt = text
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "directory", "empty name", "not utf-8", "control character"])
def test_bad_prompt_files_are_one_line_config_errors(run, tmp_path, case):
    cfg_path, _ = run
    target = {
        "missing": str(tmp_path / "nope.txt"),
        "directory": str(tmp_path),
        "empty name": "",
        "not utf-8": str(tmp_path / "latin1.txt"),
        "control character": str(tmp_path / "bell.txt"),
    }[case]
    (tmp_path / "latin1.txt").write_bytes("Crème brûlée\n".encode("latin-1"))
    (tmp_path / "bell.txt").write_text("Title: soup\x07\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path, [f"generate.prompt=file:{target}"])
    _one_line(e.value, "generate.prompt")
    r = run_module("hpcrnn.generate", str(cfg_path), f"generate.prompt=file:{target}")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
