"""``python -m hpcrnn.evaluate RUN --complete FILE`` (hpcrnn/generate/complete.py): real recipes cut after
their ingredient block, the rest generated, figures beside the real ones, and the perplexity of the real
instructions given the real ingredients."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from hpcrnn.generate import complete as C
from hpcrnn.generate import job as G
from hpcrnn.generate.corpus_view import CorpusView
from hpcrnn.generate.prompts import plan_prompts
from hpcrnn.model.restore import open_latest
from tests.test_generate import prepared_run, with_

torch.set_num_threads(1)

REAL = """Title: BEAN SOUP
Categories: Soups
Yield: 4 Servings
2 c  Beans
1 ts Salt
Boil the beans and salt -- 30 minutes at 350F.

Title: FIG JAM
Categories: Desserts
Yield: 2 Servings
3 c  Figs
1 c  Sugar
Boil the figs and sugar -- 30 minutes at 350F.
Stir the figs.
"""


@pytest.fixture
def run(tmp_path):
    (tmp_path / "real.txt").write_text(REAL)
    cfg_path, cfg = prepared_run(tmp_path)
    return tmp_path, cfg_path, cfg


def test_perplexity_scores_only_the_tokens_after_the_cut(run):
    tmp, cfg_path, cfg = run
    _, model, _ = open_latest(cfg.checkpoint_dir, None, "cpu")
    model.eval()
    cv = CorpusView.open(cfg.h5_path)
    c = with_(cfg_path, f"generate.prompts={tmp / 'real.txt'}", "generate.prompts_cut=ingredients")
    pp = plan_prompts(c, cv)
    got = C.instructions_figures(model, cv, pp)
    # one recipe at a time, by hand: the whole recipe read from its start, the loss after the cut only
    total, n = 0.0, 0
    for e, plan in zip(pp.entries, pp.plans):
        ids = [cv.boundary_id] + cv.ids(C.tokenize(e.real, cv.tokenizer)) + [cv.eor_id]
        x = torch.tensor([ids])
        with torch.no_grad():
            logits, _ = model(x[:, :-1], None)
        cut = len(plan.fixed)
        total += F.cross_entropy(logits[0, cut - 1 :], x[0, cut:], reduction="sum").item()
        n += len(ids) - cut
    assert got["tokens"] == n and n > 20
    assert math.isclose(got["loss"], total / n, rel_tol=1e-5)


@pytest.mark.parametrize("bf16", ["0", "1"], ids=["fp32 CPU", "bf16 CPU"])
def test_complete_generates_like_the_job_and_reports_both_sides(run, capsys, monkeypatch, bf16):
    """The job's recipes, figures and precision: generate.precision auto resolved as the job resolves it
    (a CPU with bf16 kernels, or without: forced by HPCRNN_CPU_BF16)."""
    monkeypatch.setenv("HPCRNN_CPU_BF16", bf16)
    tmp, cfg_path, cfg = run
    res = C.run_complete(cfg, None, tmp / "real.txt")
    assert res["recipes"] == 2 and res["step"] == 5 and res["real_instructions"]["tokens"] > 0
    assert res["precision"] == ("bf16" if bf16 == "1" else "fp32")
    assert f"{res['precision']} products" in C.format_complete(res)
    # the job primed by the same cuts writes the same recipes: same figures
    job = with_(
        cfg_path, f"generate.prompts={tmp / 'real.txt'}", "generate.prompts_cut=ingredients", "~generate.num_recipes"
    )
    out = G.run_generate(job).out_dir
    s = json.loads((out / "summary.json").read_text())
    assert res["generated"] == s["generated"] and res["real"] == s["real_prompted"]
    index = (out / "index.jsonl").read_text().splitlines()
    assert {json.loads(line)["precision"] for line in index} == {res["precision"]}
    # both real recipes' instructions use all they list (beans, salt; figs, sugar) and nothing else
    assert res["real"]["listed_used_mean"] == 1.0 and res["real"]["extra_items_mean"] == 0
    assert 0 <= res["generated"]["listed_used_mean"] <= 1 and "stopped_at_end_of_recipe" in res["generated"]
    assert C.main([str(cfg_path), "--complete", str(tmp / "real.txt")]) == 0
    table = capsys.readouterr().out
    for word in ("listed-used", "extra items", "structure", "ending", "real instructions given the real"):
        assert word in table, table
    assert C.main([str(cfg_path), "--complete", str(tmp / "real.txt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["generated"] == res["generated"]


def test_complete_refuses_recipes_without_ingredients_in_one_line(run, capsys):
    tmp, cfg_path, cfg = run
    (tmp / "bad.txt").write_text("Title: APPLE PIE\n")
    assert C.main([str(cfg_path), "--complete", str(tmp / "bad.txt")]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and "bad.txt: prompt 1" in err[0] and "ingredient block" in err[0]
