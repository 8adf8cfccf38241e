"""Recipes from given prompts: ``generate.prompts: FILE`` (many prompts in one job, batched and sharded),
``generate.prompts_cut``, ``lm.generate(prompt=[...])`` and ``hpcrnn.recipe_prompt``, and the measures
``listed_used`` / ``extra_items`` (hpcrnn/generate/quality.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import hpcrnn
from hpcrnn.errors import ConfigError, InputError
from hpcrnn.generate import job as G
from hpcrnn.generate import prompts as P
from hpcrnn.generate import quality as Q
from tests.helpers import ROOT
from tests.test_generate import files_of, prepared_run, with_

torch.set_num_threads(1)

# three prompts in the corpus layout: a title alone, a title and ingredients, a whole recipe
PROMPTS = """Title: APPLE PIE

Title: BEAN SOUP
Categories: Soups
Yield: 4 Servings
2 c  Beans
1 ts Salt
1 lb Ham

Title: FIG JAM
Categories: Desserts
Yield: 2 Servings
3 c  Figs
1 c  Sugar
Boil the figs and sugar -- 30 minutes at 350F.
"""


def _index(out) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


@pytest.fixture
def run(tmp_path):
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    cfg_path, cfg = prepared_run(tmp_path)
    return tmp_path, cfg_path, cfg


def test_measures_listed_used_and_extra_items():
    listed = ["6 lg Eggplants", "2    Lemons, juiced", "2 tb Olive oil", "Salt"]
    assert [Q.head_noun(x) for x in listed] == ["eggplant", "lemon", "oil", "salt"]
    assert Q.head_noun("1 lg Garlic clove") == "garlic"  # clove is a unit; the docstring says so
    assert Q.name_words("1 lg Garlic clove") == {"garlic"}
    words = frozenset({"eggplant", "lemon", "oil", "salt", "onion", "rice"})
    f = Q.listed_figures(listed, "Roast the eggplants. Add the lemon juice, then onion and rice.", words)
    assert f == {"listed": 4, "listed_used": 0.5, "extra_items": 2}  # oil and salt unused; onion, rice extra
    assert Q.listed_figures([], "Add onion.", words)["listed_used"] is None  # nothing listed: no figure
    s = Q.summarize([{**Q.recipe_quality("Title: x\n", [1, 2], words, None), **f}])
    assert s["listed_used_mean"] == 0.5 and s["extra_items_mean"] == 2 and s["listed_recipes"] == 1


def test_prompts_file_read_like_the_corpus_and_cut_after_the_ingredients(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(PROMPTS)
    entries = P.read_prompts_file(path)
    assert [e.title for e in entries] == ["APPLE PIE", "BEAN SOUP", "FIG JAM"]
    assert entries[0].listed == [] and entries[1].listed == ["2 c  Beans", "1 ts Salt", "1 lb Ham"]
    with pytest.raises(InputError, match=r"prompt 1: generate.prompts_cut: ingredients: no ingredient block"):
        P.read_prompts_file(path, "ingredients")  # a title alone has no ingredient block to cut after
    path.write_text(PROMPTS.split("\n\n", 1)[1])
    cut = P.read_prompts_file(path, "ingredients")[1]
    assert cut.text.endswith("1 c  Sugar\n") and "Boil" not in cut.text and "Boil the figs" in cut.real
    (tmp_path / "none.txt").write_text("no title line here\n")
    with pytest.raises(InputError, match="none.txt"):
        P.read_prompts_file(tmp_path / "none.txt")


def test_recipe_prompt_in_the_corpus_layout_and_import_hpcrnn_stays_light():
    text = hpcrnn.recipe_prompt("Bean soup", ["2 c  Beans", "1 ts Salt"], categories=["Soups"], servings=4)
    assert text == "Title: Bean soup\nCategories: Soups\nYield: 4 Servings\n2 c  Beans\n1 ts Salt\n"
    assert Q.parse_recipe(text).ingredient_lines == ["2 c  Beans", "1 ts Salt"]
    with pytest.raises(InputError, match=r"ingredients\[1\]"):
        hpcrnn.recipe_prompt("Soup", ["Beans", "two\nlines"])
    code = "import sys, hpcrnn; assert 'torch' not in sys.modules; assert 'recipe_prompt' in hpcrnn.__all__"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_config_key_resolved_checked_and_num_recipes_per_prompt(run, monkeypatch):
    tmp, cfg_path, cfg = run
    assert cfg.generate.prompts is None and cfg.generate.num_recipes == 7  # the test config's own
    monkeypatch.chdir(tmp)
    c = with_(cfg_path, "generate.prompts=prompts.txt", "~generate.num_recipes")
    assert c.generate.prompts == str(tmp / "prompts.txt") and c.generate.num_recipes == 1
    assert with_(cfg_path, "~generate.num_recipes").generate.num_recipes == 100
    with pytest.raises(ConfigError, match=r"generate.prompts: .*missing.txt: no such file") as e:
        with_(cfg_path, "generate.prompts=missing.txt")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="either generate.prompt or generate.prompts"):
        with_(cfg_path, "generate.prompts=prompts.txt", "generate.prompt=apple pie")


def test_job_writes_recipes_for_each_prompt_and_names_them(run):
    tmp, cfg_path, cfg = run
    c = with_(cfg_path, f"generate.prompts={tmp / 'prompts.txt'}", "generate.num_recipes=2", "generate.name=p")
    r = G.run_generate(c)
    assert r.complete and r.written == 6
    index = _index(r.out_dir)
    # copy-major: recipe i is prompt (i - 1) % 3 + 1
    assert [(x["recipe"], x["prompt_number"]) for x in index] == [(i, (i - 1) % 3 + 1) for i in range(1, 7)]
    assert [x["prompt_title"] for x in index[:3]] == ["APPLE PIE", "BEAN SOUP", "FIG JAM"]
    texts = {x["recipe"]: (r.out_dir / x["file"]).read_text() for x in index}
    assert texts[1].startswith("Title: Apple Pie\n") and texts[2].startswith("Title: Bean Soup\nCategories: Soups")
    assert "\n2 c Beans\n" in texts[5] and texts[6].startswith("Title: Fig Jam")
    assert index[0]["quality"]["listed_used"] is None and index[1]["quality"]["listed"] == 3
    assert isinstance(index[1]["quality"]["extra_items"], int)
    s = json.loads((r.out_dir / "summary.json").read_text())
    assert s["prompts"]["prompts"] == 3 and s["prompts"]["recipes"] == 6 and s["num_recipes"] == 2
    assert s["generated"]["listed_recipes"] == 4 and "listed_used_mean" in s["generated"]
    assert "real_prompted" not in s and "listed_used" in s["definitions"]
    # another prompts file into the same folder: refused in one line, naming the way out
    (tmp / "other.txt").write_text("Title: MINT TEA\n")
    with pytest.raises(InputError, match="other prompts.*generate.name"):
        G.run_generate(with_(cfg_path, f"generate.prompts={tmp / 'other.txt'}", "generate.name=p"))


def test_prompted_recipes_independent_of_batch_size_and_shards(run):
    tmp, cfg_path, cfg = run
    base = [f"generate.prompts={tmp / 'prompts.txt'}", "generate.num_recipes=3"]
    G.run_generate(with_(cfg_path, *base, "generate.name=a", "generate.batch_size=5"))
    for s in range(2):
        G.run_generate(with_(cfg_path, *base, "generate.name=b", "generate.batch_size=1"), shard=s, num_shards=2)
    gen = tmp / "scratch" / "tiny" / "generated"
    a, b = files_of(gen / "a"), files_of(gen / "b")
    assert len(a) == 9 and a == b
    assert (gen / "a" / "index.jsonl").read_bytes() == (gen / "b" / "index.jsonl").read_bytes()
    # more recipes per prompt: the first ones stay, only the new ones are written
    r = G.run_generate(with_(cfg_path, *base[:1], "generate.num_recipes=4", "generate.name=a"))
    assert r.written == 3 and r.skipped == 9 and files_of(gen / "a").items() >= a.items()


def test_cut_prompts_report_the_real_recipes_figures(run):
    tmp, cfg_path, cfg = run
    (tmp / "whole.txt").write_text(PROMPTS.split("\n\n", 1)[1])  # the two prompts with ingredients
    c = with_(
        cfg_path, f"generate.prompts={tmp / 'whole.txt'}", "generate.prompts_cut=ingredients", "~generate.num_recipes"
    )
    r = G.run_generate(c)
    texts = [p.read_text() for p in sorted(r.out_dir.glob("recipe-*.txt"))]
    assert len(texts) == 2 and texts[1].startswith("Title: Fig Jam") and "\n1 c Sugar\n" in texts[1]
    s = json.loads((r.out_dir / "summary.json").read_text())
    real = s["real_prompted"]
    # the real fig jam's instructions name figs and sugar, both listed: all used, nothing extra; the bean
    # soup has no instructions: none of its three listed ingredients is used
    assert real["recipes"] == 2 and real["listed_recipes"] == 2 and real["listed_used_mean"] == 0.5
    assert real["extra_items_mean"] == 0 and s["prompts"]["cut"] == "ingredients"


def test_api_takes_a_list_of_prompts_like_the_job(run):
    tmp, cfg_path, cfg = run
    lm = hpcrnn.load(cfg_path)
    given = [P.recipe_prompt("Bean soup", ["2 c  Beans", "1 ts Salt"]), "Title: APPLE PIE\n"]
    (tmp / "given.txt").write_text("\n".join(given))
    out = G.run_generate(with_(cfg_path, f"generate.prompts={tmp / 'given.txt'}", "generate.num_recipes=2")).out_dir
    job = {x["recipe"]: (out / x["file"]).read_text() for x in _index(out)}
    got = lm.generate(n=2, prompt=given)
    # prompt by prompt: bean soup's two recipes (job recipes 1 and 3), then apple pie's (2 and 4)
    assert got == [job[1], job[3], job[2], job[4]]
    assert lm.generate(n=2, prompt=given, batch_size=1) == got
    with pytest.raises(ConfigError, match=r"prompt\[1\]"):
        lm.generate(prompt=["Title: soup\n", ""])


def test_unknown_words_of_many_prompts_are_one_warning(run, capsys):
    """A prompts file's words unknown to the vocabulary: one line for the set (how many prompts, the
    first one's words), not a line per prompt; a single prompt still names its own."""
    tmp, cfg_path, cfg = run
    texts = ["Title: Zzyzx soup\n", "Title: Bean soup\n2 c  Beans\n", "Title: Qwerty pie\n"]
    (tmp / "odd.txt").write_text("\n".join(texts))
    cv = G.CorpusView.open(cfg.h5_path)
    pp = P.plan_prompts(with_(cfg_path, f"generate.prompts={tmp / 'odd.txt'}"), cv)
    assert len(pp.plans) == 3
    err = [ln for ln in capsys.readouterr().err.splitlines() if "unknown to the vocabulary" in ln]
    assert len(err) == 1 and "2 of 3 prompts" in err[0] and "(prompt 1: zzyzx" in err[0], err
    P.plan_prompt(with_(cfg_path, "generate.prompt=Zzyzx soup"), cv)
    err = capsys.readouterr().err
    assert "generate.prompt: unknown to the vocabulary, fed as <unk>: zzyzx" in err, err
