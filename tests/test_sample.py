"""`hpcrnn sample`: recipes to the terminal, the generation job's own (same settings and seed, same text),
without the quality indexes; and the generation job's folder for other settings under the default name."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

import hpcrnn
from hpcrnn import console
from hpcrnn import sample as S
from hpcrnn.cluster import plan as launch_plan
from hpcrnn.cluster.run_status import collect_status
from hpcrnn.config import load_config, save_resolved
from hpcrnn.data.build import run_preprocess
from hpcrnn.data.corpus import open_corpus
from hpcrnn.errors import InputError
from hpcrnn.generate import describe as DS
from hpcrnn.generate import job as G
from hpcrnn.generate import quality as Q
from hpcrnn.model.rnn import build_model
from hpcrnn.model.source import generation_done
from hpcrnn.run import generated as F
from hpcrnn.train import checkpoint as ckpt
from tests.helpers import make_recipes, run_module, run_python, tiny_config

torch.set_num_threads(1)

_SECTIONS = {
    "data": {"split": [0.8, 0.1, 0.1]},
    "train": {"device": "cpu"},
    "generate": {"num_recipes": 3, "batch_size": 3, "max_tokens": 30, "quality_sample": 3, "device": "cpu"},
}
SEP = f"\n{S.SEPARATOR}\n\n"


def _run(tmp: Path):
    """A preprocessed run with a random-weight checkpoint at step 5 (no training): (config path, cfg)."""
    (tmp / "recipes.txt").write_text(make_recipes(120))
    cfg_path = tiny_config(tmp, tmp / "recipes.txt", **_SECTIONS)
    cfg = load_config(cfg_path)
    run_preprocess(cfg)
    c = open_corpus(cfg.h5_path)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(c.vocab), c.eor_id)
    with torch.no_grad():
        model.head.bias[c.eor_id] += 1.2  # recipes of several lengths
    meta = {"config": cfg.to_dict(), "vocab_hash": c.vocab_hash, "vocab_size": len(c.vocab), "done": True}
    ckpt.save_checkpoint(cfg.checkpoint_dir, 5, model.state_dict(), {}, meta)
    save_resolved(cfg)  # the run directory's config.yaml, as training writes it
    return cfg_path, cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("sample"))


def _with(cfg_path: Path, *overrides: str):
    return load_config(cfg_path, list(overrides))


def _files(out: Path) -> list[str]:
    return [p.read_text() for p in sorted(out.glob("recipe-*.txt"))]


def _no_quality(monkeypatch):
    """Building the quality figures' context (ingredient words, the copy index) fails the test."""

    def refuse(*a, **k):
        raise AssertionError("sampling built a quality index")

    monkeypatch.setattr(DS, "build_quality_context", refuse)
    monkeypatch.setattr(Q.CopyIndex, "__init__", refuse)
    monkeypatch.setattr(Q, "build_ingredient_words", refuse)


def _one_line(err: str, *words: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------ hpcrnn sample


def test_sample_prints_the_jobs_recipes_without_a_quality_index(run, capsys, monkeypatch):
    cfg_path, cfg = run
    _no_quality(monkeypatch)
    args = ["-n", "3", "--seed", "4", "--temperature", "0.9", "--top-k", "20", "--max-tokens", "25"]
    assert S.main([str(cfg.run_dir), *args, "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    texts = out.split(SEP)
    assert len(texts) == 3 and all(t.endswith("\n") for t in texts)
    assert texts == hpcrnn.load(cfg.run_dir, device="cpu").generate(3, seed=4, temperature=0.9, top_k=20, max_tokens=25)
    monkeypatch.undo()  # the job computes its figures
    same = ["generate.seed=4", "generate.temperature=0.9", "generate.top_k=20", "generate.max_tokens=25"]
    r = G.run_generate(_with(cfg_path, "generate.name=same", *same))
    assert texts == _files(r.out_dir)


def test_prompt_text_file_and_checkpoint(run, capsys, tmp_path):
    _, cfg = run
    assert S.main([str(cfg.run_dir), "-n", "2", "--prompt", "apple pie", "--checkpoint", "5"]) == 0
    texts = capsys.readouterr().out.split(SEP)
    assert len(texts) == 2 and all(t.startswith("Title: Apple Pie\n") for t in texts)
    (tmp_path / "p.txt").write_text("apple pie\n")
    assert S.main([str(cfg.run_dir / "config.yaml"), "-n", "2", "--prompt", f"file:{tmp_path / 'p.txt'}"]) == 0
    assert capsys.readouterr().out.split(SEP) == texts


def test_interactive_reads_one_prompt_a_line(run, capsys, monkeypatch):
    _, cfg = run
    monkeypatch.setattr(sys, "stdin", io.StringIO("apple pie\n\nzzqx qqxz\nfig jam\n"))
    assert S.main([str(cfg.run_dir), "-n", "2", "--interactive", "--seed", "1"]) == 2  # a refused prompt
    out, err = capsys.readouterr()
    _one_line(err, "hpcrnn.sample: error:", "unknown")
    lm = hpcrnn.load(cfg.run_dir, device="cpu")
    want = [t for p in ("apple pie", "", "fig jam") for t in lm.generate(2, p, seed=1)]
    assert out.split(SEP) == want
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert S.main([str(cfg.run_dir), "--interactive"]) == 0 and capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "args, words",
    [
        (["--top-p", "0"], ["--top-p"]),
        (["--temperature", "-1"], ["--temperature"]),
        (["-n", "0"], ["-n"]),
        (["--prompt", "file:/nonexistent/prompt.txt"], ["--prompt", "no such file"]),
        (["--prompt", "zzqx qqxz"], ["unknown"]),
        (["--checkpoint", "77"], ["step-00000077"]),
        (["--interactive", "--prompt", "x"], ["--interactive"]),
    ],
)
def test_errors_are_one_line_exit_2(run, capsys, args, words):
    _, cfg = run
    assert S.main([str(cfg.run_dir), *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    _one_line(err, "hpcrnn.sample: error:", *words)


def test_bad_paths_are_one_line_exit_2(capsys, tmp_path):
    assert S.main([str(tmp_path / "nowhere")]) == 2
    _one_line(capsys.readouterr().err, "not found")
    (tmp_path / "empty.pt").write_text("")
    assert S.main([str(tmp_path / "empty.pt")]) == 2
    _one_line(capsys.readouterr().err, "empty")


@pytest.mark.filterwarnings("ignore:'hpcrnn.sample' found in sys.modules")  # runpy: this module imported it
def test_console_knows_sample(run, capsys):
    _, cfg = run
    assert "sample" in console.COMMANDS
    assert console.main([]) == 2 and "  sample " in capsys.readouterr().err
    assert console.main(["sample", str(cfg.run_dir), "-n", "1", "--seed", "2"]) == 0
    assert capsys.readouterr().out == hpcrnn.load(cfg.run_dir, device="cpu").generate(1, seed=2)[0]


@pytest.mark.slow
def test_python_m_and_the_console_script(run):
    _, cfg = run
    want = hpcrnn.load(cfg.run_dir, device="cpu").generate(2, seed=7)
    r = run_module("hpcrnn.sample", str(cfg.run_dir), "-n", "2", "--seed", "7")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(SEP) == want
    r = run_python("-c", "from hpcrnn.console import console; console()", "sample", str(cfg.run_dir), "--top-k", "-1")
    assert r.returncode == 2
    _one_line(r.stderr, "--top-k")


# ------------------------------------------------------------------------------------ the job's folder


def test_other_settings_under_the_default_name_get_a_folder_of_their_own(tmp_path, capsys):
    cfg_path, cfg = _run(tmp_path)
    gen = cfg.run_dir / "generated"
    assert G.run_generate(cfg).out_dir == gen / "default"
    hot = _with(cfg_path, "generate.temperature=1.0")
    assert F.output_dir(hot) == gen / "t1.0" and not generation_done(hot)
    capsys.readouterr()
    r = G.run_generate(hot)
    assert r.out_dir == gen / "t1.0" and r.complete
    said = [x for x in capsys.readouterr().out.splitlines() if "writing generated/t1.0/" in x]
    assert len(said) == 1 and "generate.temperature=0.8 (config: 1.0)" in said[0], said
    assert json.loads((gen / "t1.0" / "summary.json").read_text())["name"] == "t1.0"
    assert json.loads((gen / "t1.0" / "plan.json").read_text())["settings"]["temperature"] == 1.0
    # everything that asks finds the same folder: "is generation done", the launcher's plan, status
    assert generation_done(hot) and generation_done(cfg)
    assert launch_plan.stage_complete(hot, "generate")[0]
    status = collect_status(hot)
    assert status["generated_dir"] == str(gen / "t1.0") and status["recipes"] == 3
    # an explicit generate.name=default is the default name; a rerun continues, nothing to write
    again = _with(cfg_path, "generate.temperature=1.0", "generate.name=default")
    assert F.output_dir(again) == gen / "t1.0" and G.run_generate(again).written == 0
    # several settings: each that differs, joined by "-", a valid generate.name
    other = _with(cfg_path, "generate.seed=3", "generate.top_p=0.9", "generate.prompt=apple pie")
    name = F.output_name(other)
    assert re.fullmatch(r"seed3-topp0\.9-prompt[0-9a-f]{8}", name), name
    assert _with(cfg_path, f"generate.name={name}").generate.name == name


def test_a_named_folder_of_other_settings_names_the_generate_name_to_pass(tmp_path):
    cfg_path, cfg = _run(tmp_path)
    G.run_generate(_with(cfg_path, "generate.name=mine"))
    with pytest.raises(
        InputError, match=r"generate\.temperature=0\.8 \(config: 0\.5\).*pass generate\.name=mine-t0\.5"
    ):
        G.run_generate(_with(cfg_path, "generate.name=mine", "generate.temperature=0.5"))
    r = G.run_generate(_with(cfg_path, "generate.name=mine-t0.5", "generate.temperature=0.5"))
    assert r.complete
    # the default folder without recipes (or without a plan) stays the default folder
    assert F.output_dir(_with(cfg_path, "generate.temperature=0.5")) == cfg.run_dir / "generated" / "default"


def test_the_launcher_checks_the_folder_the_job_will_write(tmp_path):
    cfg_path, cfg = _run(tmp_path)
    G.run_generate(cfg)
    plans = [launch_plan.StagePlan("train", True, ""), launch_plan.StagePlan("generate", True, "")]
    with pytest.raises(Exception, match="generated/default"):
        launch_plan._check_generate_folder(cfg, plans)  # training continues past the folder's checkpoint
    launch_plan._check_generate_folder(_with(cfg_path, "generate.temperature=1.0"), plans)  # a new folder


def test_print_config_of_a_run_and_a_model_file(run, capsys, tmp_path, monkeypatch):
    """--print-config prints the config the recipes would come from, the options in its generate section,
    and loads no model (a run) or builds none (a model file)."""
    _, cfg = run
    monkeypatch.setattr(hpcrnn, "load", lambda *a, **k: pytest.fail("--print-config loaded the model"))
    assert S.main([str(cfg.run_dir), "--temperature", "0.3", "--top-k", "7", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["generate"]["temperature"] == 0.3 and printed["generate"]["top_k"] == 7
    assert printed["model"] == cfg.to_dict()["model"] and printed["run"]["name"] == cfg.run.name
    monkeypatch.undo()
    from hpcrnn.export import main as export_main

    assert export_main([str(cfg.run_dir), "-o", str(tmp_path / "m.pt")]) == 0
    capsys.readouterr()
    assert S.main([str(tmp_path / "m.pt"), "--seed", "9", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["generate"]["seed"] == 9 and printed["model"] == cfg.to_dict()["model"]
