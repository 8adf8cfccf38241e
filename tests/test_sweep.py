"""Sweeps without Slurm: expansion, naming (hostile values), errors, shared preprocess, the job arrays a Slurm
launch submits (with sbatch replaced by a recorder), a real local sweep and its relaunch, the status table."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from hpcrnn.cluster import launch as L
from hpcrnn.cluster import status as status_cmd
from hpcrnn.cluster import sweep as S
from hpcrnn.cluster import sweep_dir as SD
from hpcrnn.cluster.records import read_jobs
from hpcrnn.cluster.run_status import collect_status
from hpcrnn.cluster.status import format_status
from hpcrnn.config import save_resolved
from hpcrnn.errors import ConfigError
from hpcrnn.run.provenance import git_commit
from tests.helpers import run_module, tiny_config

torch.set_num_threads(1)

SAFE_NAME = re.compile(r"[A-Za-z0-9_.+-]+")  # config.py's _check_name


def quiet(_: str) -> None:
    pass


# ------------------------------------------------------------------------------------------ expansion, naming


def test_split_values_keeps_brackets_and_quotes_whole():
    assert S.split_values("16,32") == ["16", "32"]
    assert S.split_values(" a , b ") == ["a", "b"]
    assert S.split_values("[0.8,0.1,0.1],[0.9,0.05,0.05]") == ["[0.8,0.1,0.1]", "[0.9,0.05,0.05]"]
    assert S.split_values("'Soup, hot',\"Stew, cold\",x") == ["'Soup, hot'", '"Stew, cold"', "x"]
    assert S.split_values("{a: 1, b: 2}") == ["{a: 1, b: 2}"]


def test_product_in_order_named_after_values(tmp_path, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_corpus)
    sw = S.expand(cfg, ["model.cell=lstm,gru", "train.lr=0.001,1e-3,0.01", "train.max_steps=7"])
    assert [r.name for r in sw.runs] == [
        "tiny-cell_lstm-lr_0.001",
        "tiny-cell_lstm-lr_1e-3",
        "tiny-cell_lstm-lr_0.01",
        "tiny-cell_gru-lr_0.001",
        "tiny-cell_gru-lr_1e-3",
        "tiny-cell_gru-lr_0.01",
    ]
    r = sw.runs[4]
    assert (r.cfg.model.cell, r.cfg.train.lr, r.cfg.train.max_steps) == ("gru", 0.001, 7)  # 1e-3 as a number
    assert sw.dir == tmp_path / "scratch" / "tiny-sweep"
    assert r.cfg.run_dir == sw.dir / "tiny-cell_gru-lr_1e-3"  # the runs live in the sweep directory
    assert r.made_by == ["model.cell=gru", "train.lr=1e-3", "train.max_steps=7"]  # in the order given
    assert sw.plain == ["train.max_steps=7"] and list(sw.keys) == ["model.cell", "train.lr"]
    # a plain run.name override names the sweep and its runs
    sw2 = S.expand(cfg, ["run.name=exp2", "model.hidden=8,16"])
    assert [r.name for r in sw2.runs] == ["exp2-hidden_8", "exp2-hidden_16"] and sw2.dir.name == "exp2-sweep"


def test_list_values_are_swept_whole(tmp_path, tiny_corpus):
    sw = S.expand(tiny_config(tmp_path, tiny_corpus), ["data.split=[0.8,0.1,0.1],[0.9,0.05,0.05]"])
    assert [r.cfg.data.split for r in sw.runs] == [[0.8, 0.1, 0.1], [0.9, 0.05, 0.05]]
    assert all(SAFE_NAME.fullmatch(r.name) for r in sw.runs) and len(sw.corpus_groups()) == 2


def test_labels_are_the_shortest_tails_that_tell_keys_apart():
    assert S.labels(["model.hidden", "train.lr"]) == {"model.hidden": "hidden", "train.lr": "lr"}
    assert S.labels(["train.seed", "data.seed", "model.layers"]) == {
        "train.seed": "train.seed",
        "data.seed": "data.seed",
        "model.layers": "layers",
    }
    assert S.labels(["slurm.train.time_min", "slurm.generate.time_min"]) == {
        "slurm.train.time_min": "train.time_min",
        "slurm.generate.time_min": "generate.time_min",
    }


def test_hostile_values_give_safe_distinct_names_inside_the_sweep_dir(tmp_path, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_corpus)
    hostile = ["../../etc", "a/b", "a_b", "x;rm -rf ~", "$(id)", "..", "'...'", "ü", "'.'", "a" * 300, "'a b'"]
    sw = S.expand(cfg, ["generate.prompt=" + ",".join(hostile)])
    names = [r.name for r in sw.runs]
    assert len(set(names)) == len(hostile)
    home = sw.dir.resolve()
    for r in sw.runs:
        assert SAFE_NAME.fullmatch(r.name) and len(r.name) <= 200, r.name
        assert r.cfg.run_dir.resolve().parent == home
    assert names[2] == "tiny-prompt_a_b"  # a clean value stays as it is
    assert names[1] != names[2] and names[1].startswith("tiny-prompt_a_b_")  # "a/b": safe part + hash
    assert sw.runs[0].cfg.generate.prompt == "../../etc"  # the value itself is the run's, unchanged


@pytest.mark.parametrize(
    "items, message",
    [
        (["model.hiden=16,32"], r"model\.hiden: unknown key \(did you mean 'model\.hidden'\?\)"),
        (["model.hidden=16,abc"], r"model\.hidden: expected an integer, got 'abc'"),
        (["run.name=a,b"], r"sweep: run\.name cannot be swept"),
        (["paths.scratch=/a,/b"], r"sweep: paths\.scratch cannot be swept"),
        (["data.h5_path=a.h5,b.h5"], r"sweep: data\.h5_path cannot be swept"),
        (["model.hidden=16,16"], r"sweep: model\.hidden: value '16' listed twice"),
        (["model.hidden=16,32", "model.hidden=8,4"], r"sweep: model\.hidden is swept twice"),
        (["model.hidden=16"], r"sweep: nothing to sweep"),
        (["../x=1,2"], r"is not a dotted key"),
        (["model.cell=lstm,!!python/object:os.system"], r"model\.cell"),
    ],
)
def test_bad_sweeps_are_one_line_errors_naming_the_key(tmp_path, tiny_corpus, items, message):
    with pytest.raises(ConfigError, match=message):
        S.expand(tiny_config(tmp_path, tiny_corpus), items)


def test_cli_error_is_one_line_and_writes_nothing(tmp_path, tiny_corpus):
    r = run_module("hpcrnn.sweep", str(tiny_config(tmp_path, tiny_corpus)), "model.hiden=16,32", "--cluster", "local")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "model.hiden: unknown key" in r.stderr
    assert not (tmp_path / "scratch").exists() and not (tmp_path / "jobs").exists()


def test_print_config_prints_every_run_and_runs_nothing(tmp_path, tiny_corpus):
    r = run_module("hpcrnn.sweep", str(tiny_config(tmp_path, tiny_corpus)), "model.hidden=8,16", "--print-config")
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert [(d["run"]["name"], d["model"]["hidden"]) for d in docs] == [("tiny-hidden_8", 8), ("tiny-hidden_16", 16)]
    assert not (tmp_path / "scratch").exists()


# ------------------------------------------------------------------------------------------ shared preprocess


def test_runs_with_equal_data_share_one_corpus_and_others_do_not(tmp_path, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_corpus)
    sw = S.expand(cfg, ["model.hidden=16,32"])
    a, b = sw.runs
    assert a.cfg.h5_path == b.cfg.h5_path and a.cfg.h5_path.parent == sw.dir
    assert re.fullmatch(r"corpus-[0-9a-f]{12}\.h5", a.cfg.h5_path.name)
    assert len(sw.corpus_groups()) == 1
    w = S.expand(cfg, ["data.window=8,12"])
    assert w.runs[0].cfg.h5_path != w.runs[1].cfg.h5_path and len(w.corpus_groups()) == 2
    # the same data section gives the same file in every sweep of the config (a relaunch finds its corpus)
    assert S.expand(cfg, ["model.hidden=16,64"]).runs[0].cfg.h5_path == a.cfg.h5_path
    # a data.h5_path of the user's is kept where all runs share it, and refused where they cannot
    own = str(tmp_path / "mine.h5")
    assert S.expand(cfg, ["model.hidden=16,32", f"data.h5_path={own}"]).runs[1].cfg.h5_path == Path(own)
    with pytest.raises(ConfigError, match=r"data\.h5_path: .*differ in their data settings"):
        S.expand(cfg, ["data.window=8,12", f"data.h5_path={own}"])


def test_shared_corpus_is_preprocessed_once(tmp_path, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_corpus, train={"max_steps": 4})
    sw = S.expand(cfg, ["model.hidden=8,16", "data.window=8,12"])
    res = S.launch_sweep(sw, "debug", ["preprocess"], out=quiet)
    assert res.exit_code == 0 and not res.failed
    built = sorted(p.name for p in sw.dir.glob("corpus-*.h5"))
    assert len(built) == 2  # two data sections, four runs
    ran = {n: [p.stage for p in r.plans if p.run] for n, r in res.ran.items()}
    # the first run of each data section built it; the second found it current and skipped
    assert ran == {
        "tiny-hidden_8-window_8": ["preprocess"],
        "tiny-hidden_8-window_12": ["preprocess"],
        "tiny-hidden_16-window_8": [],
        "tiny-hidden_16-window_12": [],
    }


# ------------------------------------------------------------------------------------------ Slurm arrays


class _FakeSlurm:
    """L.make_executor and L._submit replaced: each submission gets the next job id (ID, or ID_i for an
    array as submitit names its tasks) and is recorded with its stage, dependency and job folder."""

    def __init__(self, monkeypatch):
        self.subs: list[dict] = []
        self.next_id = 100
        monkeypatch.setattr(L, "make_executor", self.make_executor)
        monkeypatch.setattr(L, "_submit", self.submit)
        monkeypatch.setattr(L, "resolve_cluster", lambda c: c)
        # the fake ids mean nothing to a real Slurm on this machine: every recorded job has left the queue
        monkeypatch.setattr(L.slurm, "job_states", lambda ids: {})
        monkeypatch.setattr(L.slurm, "job_nodes", lambda ids: {})

    def make_executor(self, cfg, stage, cluster, dependency=None):
        assert cluster == "slurm"
        return SimpleNamespace(folder=cfg.jobs_dir / stage, stage=stage, dep=dependency, run=cfg.run.name)

    def submit(self, ex, jobs):
        self.next_id += 1
        jid = str(self.next_id)
        ids = [f"{jid}_{i}" for i in range(len(jobs))] if len(jobs) > 1 else [jid]
        self.subs.append(
            {"stage": ex.stage, "id": jid, "dep": ex.dep, "folder_of": ex.run, "jobs": [repr(j) for j in jobs]}
        )
        paths = SimpleNamespace(stdout=Path(ex.folder) / f"{ids[0]}.out", stderr=Path(ex.folder) / f"{ids[0]}.err")
        return [SimpleNamespace(job_id=i, paths=paths) for i in ids]

    def summary(self) -> list[tuple]:
        return [(s["stage"], s["id"], len(s["jobs"]), s["dep"]) for s in self.subs]


def _records(sw) -> dict[str, dict[str, str]]:
    """run -> stage -> job id (or action) of its newest launch."""
    out = {}
    for r in sw.runs:
        stages = read_jobs(r.cfg.run_dir)["launches"][-1]["stages"]
        out[r.name] = {s: rec.get("job_id", rec["action"]) for s, rec in stages.items()}
    return out


def test_slurm_sweep_submits_each_stage_as_one_array(tmp_path, tiny_corpus, monkeypatch):
    fake = _FakeSlurm(monkeypatch)
    sw = S.expand(tiny_config(tmp_path, tiny_corpus), ["model.hidden=8,16"])
    res = S.launch_sweep(sw, "slurm", out=quiet)
    assert fake.summary() == [
        ("preprocess", "101", 1, None),  # one corpus for both runs
        ("train", "102", 2, "afterok:101"),
        ("generate", "103", 2, "aftercorr:102"),  # generate task i after train task i
    ]
    assert [s["folder_of"] for s in fake.subs] == ["tiny-hidden_8", "tiny-sweep", "tiny-sweep"]
    assert fake.subs[1]["jobs"] == ["TrainJob(tiny-hidden_8)", "TrainJob(tiny-hidden_16)"]
    assert _records(sw) == {
        "tiny-hidden_8": {"preprocess": "101", "train": "102_0", "generate": "103_0"},
        "tiny-hidden_16": {"preprocess": "101", "train": "102_1", "generate": "103_1"},
    }
    rec = read_jobs(sw.runs[1].cfg.run_dir)["launches"][-1]
    assert rec["cluster"] == "slurm" and rec["sweep"] == str(sw.dir)
    assert rec["stages"]["preprocess"]["shared_with"] == "tiny-hidden_8"
    assert [j["stage"] for j in res.jobs] == ["preprocess", "train", "generate"]
    assert (sw.dir / "sweep.yaml").is_file()
    for r in sw.runs:  # each run's resolved config is saved, pointing at the shared corpus
        assert yaml.safe_load((r.cfg.run_dir / "config.yaml").read_text())["data"]["h5_path"] == str(r.cfg.h5_path)


def test_slurm_sweep_arrays_follow_data_shards_and_resources(tmp_path, tiny_corpus, monkeypatch):
    fake = _FakeSlurm(monkeypatch)
    cfg = tiny_config(tmp_path, tiny_corpus)
    S.launch_sweep(S.expand(cfg, ["data.window=8,12"]), "slurm", out=quiet)
    assert fake.summary() == [
        ("preprocess", "101", 2, None),  # two corpora: one array
        ("train", "102", 2, "afterok:101"),
        ("generate", "103", 2, "aftercorr:102"),
    ]
    # several shards a run: no task-to-task mapping, so each run's generate array waits for its own train task
    fake.subs.clear()
    S.launch_sweep(S.expand(cfg, ["run.name=sh", "model.hidden=8,16", "generate.shards=2"]), "slurm", out=quiet)
    assert fake.summary() == [
        ("preprocess", "104", 1, None),
        ("train", "105", 2, "afterok:104"),
        ("generate", "106", 2, "afterok:105_0"),
        ("generate", "107", 2, "afterok:105_1"),
    ]
    # different train resources cannot share an array
    fake.subs.clear()
    S.launch_sweep(S.expand(cfg, ["run.name=res", "slurm.train.time_min=10,20"]), "slurm", out=quiet)
    assert fake.summary() == [
        ("preprocess", "108", 1, None),
        ("train", "109", 1, "afterok:108"),
        ("train", "110", 1, "afterok:108"),
        ("generate", "111", 1, "afterok:109"),
        ("generate", "112", 1, "afterok:110"),
    ]


def test_slurm_sweep_submits_only_what_is_unfinished(tmp_path, tiny_corpus, monkeypatch):
    cfg = tiny_config(tmp_path, tiny_corpus, train={"max_steps": 4})
    S.launch_sweep(S.expand(cfg, ["model.hidden=8,16"]), "debug", out=quiet)  # both runs complete
    fake = _FakeSlurm(monkeypatch)
    sw = S.expand(cfg, ["model.hidden=8,16,24"])
    S.launch_sweep(sw, "slurm", out=quiet)
    # the corpus is current: the new run trains at once, alone, and its generate waits for that job only
    assert fake.summary() == [("train", "101", 1, None), ("generate", "102", 1, "afterok:101")]
    assert _records(sw)["tiny-hidden_8"] == {"preprocess": "skipped", "train": "skipped", "generate": "skipped"}
    assert _records(sw)["tiny-hidden_24"] == {"preprocess": "skipped", "train": "101", "generate": "102"}
    # a new generate.name for the finished runs: generate only, one array with no dependency
    fake.subs.clear()
    S.launch_sweep(S.expand(cfg, ["model.hidden=8,16", "generate.name=hot"]), "slurm", out=quiet)
    assert fake.summary() == [("generate", "103", 2, None)]
    # everything complete: nothing submitted, every stage recorded as skipped
    fake.subs.clear()
    lines = []
    S.launch_sweep(S.expand(cfg, ["model.hidden=8,16"]), "slurm", out=lines.append)
    assert fake.subs == [] and "nothing to submit: every stage of every run is complete" in lines


def test_refused_sbatch_cancels_the_sweeps_queued_jobs(tmp_path, tiny_corpus, monkeypatch):
    from submitit.core.utils import FailedJobError

    fake = _FakeSlurm(monkeypatch)
    real_submit = fake.submit

    def submit(ex, jobs):
        if ex.stage == "generate":
            raise FailedJobError("sbatch: error: invalid partition specified: nope")
        return real_submit(ex, jobs)

    cancelled = []
    monkeypatch.setattr(L, "_submit", submit)
    monkeypatch.setattr(S.slurm, "cancel", cancelled.extend)
    sw = S.expand(tiny_config(tmp_path, tiny_corpus), ["model.hidden=8,16"])
    with pytest.raises(ConfigError, match=r"slurm\.generate: sbatch refused the generate job .*invalid partition"):
        S.launch_sweep(sw, "slurm", out=quiet)
    assert cancelled == ["101", "102"]
    assert not any((r.cfg.run_dir / "jobs.json").exists() for r in sw.runs)  # nothing recorded as queued


# ------------------------------------------------------------------------------------------ local, for real


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """A 2-value sweep of a tiny config run with --cluster local (submitit's local executor, real processes),
    then launched again."""
    from tests.helpers import make_recipes

    base = tmp_path_factory.mktemp("sweep")
    corpus = base / "recipes.txt"
    corpus.write_text(make_recipes(300))
    cfg = tiny_config(base, corpus, train={"max_steps": 12, "eval_every": 6})
    args = [str(cfg), "model.hidden=8,16", "--cluster", "local"]
    first = run_module("hpcrnn.sweep", *args, timeout=300)
    again = run_module("hpcrnn.sweep", *args, timeout=120)
    return S.expand(cfg, ["model.hidden=8,16"]), first, again


@pytest.mark.slow
def test_local_sweep_runs_both_and_a_relaunch_runs_nothing(local_sweep):
    sw, first, again = local_sweep
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "sweep tiny: 2 run(s) ran, 0 had nothing to do, 0 failed" in first.stdout
    for r in sw.runs:
        out = r.cfg.run_dir / "generated" / "default"
        assert len(list(out.glob("recipe-*.txt"))) == 4 and (out / "summary.json").is_file()
        assert read_jobs(r.cfg.run_dir)["launches"][0]["cluster"] == "local"
    assert [p.name for p in sw.dir.glob("corpus-*.h5")] == [sw.runs[0].cfg.h5_path.name]
    for r in sw.runs:  # each run in the sweep directory, with the overrides that made it
        assert r.cfg.run_dir.parent == sw.dir
        assert yaml.safe_load((r.cfg.run_dir / "overrides.yaml").read_text()) == [
            f"model.hidden={r.values['model.hidden']}"
        ]
    pre = [read_jobs(r.cfg.run_dir)["launches"][0]["stages"]["preprocess"]["action"] for r in sw.runs]
    assert pre == ["ran", "skipped"]  # one preprocess for the shared corpus
    assert again.returncode == 0, again.stderr
    assert "sweep tiny: 0 run(s) ran, 2 had nothing to do, 0 failed" in again.stdout
    assert "(local):" not in again.stdout  # the launcher prints "== STAGE (local): why" for each stage it runs
    for r in sw.runs:
        last = read_jobs(r.cfg.run_dir)["launches"][-1]["stages"]
        assert {s: v["action"] for s, v in last.items()} == dict.fromkeys(
            ("preprocess", "train", "generate"), "skipped"
        )


@pytest.mark.slow
def test_status_of_a_sweep_is_one_table(local_sweep):
    sw, *_ = local_sweep
    r = run_module("hpcrnn.status", str(sw.dir))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].split() == ["run", "model.hidden", *S.FIXED_COLUMNS]
    assert [ln.split()[:4] for ln in lines[2:-1]] == [
        ["tiny-hidden_8", "8", "done", "12"],
        ["tiny-hidden_16", "16", "done", "12"],
    ]
    assert lines[-1] == S.LEGEND and all(re.search(r" \d+\.\d%", ln) for ln in lines[2:-1])  # accuracy in %

    # options before the directory as after it
    table = json.loads(run_module("hpcrnn.status", "--json", "--sort", "hidden", "--desc", str(sw.dir)).stdout)
    assert [row["run"] for row in table["runs"]] == ["tiny-hidden_16", "tiny-hidden_8"]  # 16 > 8: numeric
    for row in table["runs"]:
        assert row["state"] == "done" and row["step"] == 12
        assert row["val_ppl"] > 1 and row["test_ppl"] > 1 and 0 <= row["test_acc_pct"] <= 100
        summary = json.loads((Path(row["run_dir"]) / "generated" / "default" / "summary.json").read_text())
        assert row["coherence"] == summary["generated"]["coherence_mean"]  # None where no recipe names an ingredient
        # the validation perplexity is the run's status' own figure, with its protocol
        own = json.loads(run_module("hpcrnn.status", row["run_dir"], "--json").stdout)["val_ppl"]
        assert (row["val_ppl"], row["protocol"]) == (own["ppl"], own["protocol"])
        text = run_module("hpcrnn.status", row["run_dir"]).stdout
        assert f"validation perplexity: {row['val_ppl']:.2f}" in text and f"{row['val_ppl']:.2f}" in r.stdout
    rows = list(
        csv.DictReader(io.StringIO(run_module("hpcrnn.status", str(sw.dir), "--csv", "--sort", "test_ppl").stdout))
    )
    assert [float(x["test_ppl"]) for x in rows] == sorted(float(x["test_ppl"]) for x in rows)
    assert rows[0]["model.hidden"] in ("8", "16") and set(rows[0]) == set(table["columns"])
    assert float(rows[0]["test_acc_pct"]) > 1  # a percentage in CSV too (raw number, the unit in the name)
    bad = run_module("hpcrnn.status", str(sw.dir), "--sort", "nope")
    assert bad.returncode == 2 and "--sort: no column 'nope'; columns: run, model.hidden, state" in bad.stderr
    # the per-run status is unchanged
    one = run_module("hpcrnn.status", str(sw.runs[0].cfg.run_dir))
    assert one.returncode == 0 and "generate   done" in one.stdout


def test_sort_is_numeric_where_numeric_and_missing_last():
    rows = [
        {"run": "a", "train.lr": "0.01", "state": "done", "test_ppl": 30.0},
        {"run": "b", "train.lr": "1e-3", "state": "train running", "test_ppl": None},
        {"run": "c", "train.lr": "0.1", "state": "not launched", "test_ppl": 20.5},
        {"run": "d", "train.lr": None, "state": "done", "test_ppl": 100.0},
    ]
    table = {"columns": ["run", "train.lr", *S.FIXED_COLUMNS], "runs": rows}
    S.sort_rows(table, "lr")
    assert [r["run"] for r in table["runs"]] == ["b", "a", "c", "d"]  # 1e-3 < 0.01 < 0.1, missing last
    S.sort_rows(table, "test_ppl", desc=True)
    assert [r["run"] for r in table["runs"]] == ["d", "a", "c", "b"]  # missing last in either direction
    S.sort_rows(table, "state")
    assert [r["run"] for r in table["runs"]][:2] in (["d", "a"], ["a", "d"])
    with pytest.raises(ConfigError, match="no column 'ppl'"):
        S.sort_rows(table, "ppl")


def test_a_failed_run_does_not_stop_the_others(tmp_path, tiny_corpus):
    """A run that fails (here: generation from a checkpoint step that never exists) does not stop the runs
    after it; the sweep's exit status is the failure's, and status names the failed stage."""
    cfg = tiny_config(tmp_path, tiny_corpus, train={"max_steps": 4})
    sw = S.expand(cfg, ["generate.checkpoint=999,4"])
    res = S.launch_sweep(sw, "debug", out=quiet)
    assert list(res.failed) == ["tiny-checkpoint_999"] and res.exit_code == 2
    assert "step-00000999" in str(res.failed["tiny-checkpoint_999"])
    assert list(res.ran) == ["tiny-checkpoint_4"]
    assert (sw.runs[1].cfg.run_dir / "generated" / "default" / "summary.json").exists()
    rows = {r["run"]: r for r in S.sweep_status(sw.dir)["runs"]}
    assert rows["tiny-checkpoint_999"]["state"] == "generate failed" and rows["tiny-checkpoint_4"]["state"] == "done"


def test_a_sweep_directory_belongs_to_one_config(tmp_path, tiny_corpus):
    a = tiny_config(tmp_path, tiny_corpus, train={"max_steps": 2})
    S.launch_sweep(S.expand(a, ["model.hidden=8,16"]), "debug", ["preprocess"], out=quiet)
    b = tiny_config(tmp_path, tiny_corpus, file="other.yaml", run={"name": "tiny"})
    with pytest.raises(ConfigError, match=r"tiny-sweep: holds a sweep of .*tiny\.yaml, not of .*other\.yaml"):
        S.launch_sweep(S.expand(b, ["model.hidden=8,16"]), "debug", out=quiet)
    # a later launch of the same config with more values extends the table
    S.launch_sweep(S.expand(a, ["model.hidden=8,32"]), "debug", ["preprocess"], out=quiet)
    table = S.sweep_status(tmp_path / "scratch" / "tiny-sweep")
    assert [r["run"] for r in table["runs"]] == ["tiny-hidden_8", "tiny-hidden_16", "tiny-hidden_32"]
    assert table["keys"] == {"model.hidden": ["8", "16", "32"]}


# ------------------------------------------------------------------------------------------ layout, provenance


def _tree(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(d.rglob("*"))}


@pytest.fixture
def prepped(tmp_path, tiny_corpus):
    """A 2-run sweep launched here for its preprocess only (fast): both runs set up, one corpus built."""
    cfg = tiny_config(tmp_path, tiny_corpus, train={"max_steps": 2})
    sw = S.expand(cfg, ["train.max_steps=3", "model.hidden=8,16", "train.lr=0.01"])
    assert S.launch_sweep(sw, "debug", ["preprocess"], out=quiet).exit_code == 0
    return sw


def test_runs_live_in_the_sweep_dir_with_their_overrides_and_commit(prepped):
    sw = prepped
    listed = {r["name"]: r["run_dir"] for r in S.read_sweep_file(sw.dir)["runs"]}
    assert listed == {r.name: str(sw.dir / r.name) for r in sw.runs}  # sweep.yaml names the new places
    assert sorted(p.name for p in (sw.dir.parent).iterdir()) == ["tiny-sweep"]  # nothing else at scratch/'s top
    for r in sw.runs:
        d = sw.dir / r.name
        assert (d / "config.yaml").is_file()
        # Hydra's overrides.yaml: plain and swept, in the order given, as strings
        want = ["train.max_steps=3", f"model.hidden={r.values['model.hidden']}", "train.lr=0.01"]
        assert yaml.safe_load((d / "overrides.yaml").read_text()) == want
        prov = json.loads((d / "provenance.json").read_text())
        assert prov["git"] == git_commit() and prov["launches"][-1]["overrides"] == want
        if prov["git"] is not None:  # this checkout is a git repository: the commit of the code that ran
            assert re.fullmatch(r"[0-9a-f]{40}", prov["git"]["commit"]) and isinstance(prov["git"]["dirty"], bool)
        # everything that works on a run works on it: its status, loading its config
        one = status_cmd.main([str(d), "--json"])
        assert one == 0
    # launched again: the same places, nothing lost from provenance
    again = S.expand(sw.config, ["train.max_steps=3", "model.hidden=8,16", "train.lr=0.01"])
    assert [r.cfg.run_dir for r in again.runs] == [r.cfg.run_dir for r in sw.runs]
    S.launch_sweep(again, "debug", ["preprocess"], out=quiet)
    assert len(json.loads((sw.runs[0].cfg.run_dir / "provenance.json").read_text())["launches"]) == 2


def test_a_sweep_launched_before_runs_moved_continues_where_its_runs_are(tmp_path, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_corpus)
    sw = S.expand(cfg, ["model.hidden=8,16"])
    old = sw.runs[0].cfg
    old.paths.scratch = str(sw.dir.parent)  # the earlier layout: <paths.scratch>/<run>/
    save_resolved(old)
    S.write_sweep_file(sw)
    again = S.expand(cfg, ["model.hidden=8,16"])
    assert again.runs[0].cfg.run_dir == sw.dir.parent / sw.runs[0].name
    assert again.runs[1].cfg.run_dir == sw.dir / sw.runs[1].name


def test_a_run_name_may_not_be_one_of_the_sweeps_files(tmp_path):
    for name in ("sweep.yaml", "corpus-0123456789ab.h5", "corpus-0123456789ab.h5.runs", "curves.png"):
        with pytest.raises(ConfigError, match=rf"run name '{re.escape(name)}' is the name of the sweep's own file"):
            SD._check_free(name, tmp_path)
    SD._check_free("corpus-hidden_8", tmp_path)  # a run of a sweep named corpus is fine


def test_a_plain_launch_writes_overrides_and_a_relaunch_keeps_them(tmp_path, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_corpus)
    args = ["--cluster", "debug", "--stages", "preprocess"]
    assert L.main([str(cfg), "train.max_steps=3", "--model.hidden=8", *args]) == 0
    run_dir = tmp_path / "scratch" / "tiny"
    assert yaml.safe_load((run_dir / "overrides.yaml").read_text()) == ["train.max_steps=3", "model.hidden=8"]
    # launched again from its directory: the new overrides apply on top of the old, so they are appended
    assert L.main([str(run_dir), "train.lr=0.5", *args]) == 0
    assert yaml.safe_load((run_dir / "overrides.yaml").read_text()) == [
        "train.max_steps=3",
        "model.hidden=8",
        "train.lr=0.5",
    ]
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert [x["overrides"] for x in prov["launches"]] == [["train.max_steps=3", "model.hidden=8"], ["train.lr=0.5"]]
    # from the config file again: that launch's overrides are the whole story
    assert L.main([str(cfg), "train.max_steps=3", *args]) == 0
    assert yaml.safe_load((run_dir / "overrides.yaml").read_text()) == ["train.max_steps=3"]


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_of_a_checkout_clean_dirty_or_none(tmp_path, monkeypatch):
    pkg = tmp_path / "repo" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    assert git_commit(pkg) is None  # not a git checkout
    _git(pkg.parent, "init", "-q")
    assert git_commit(pkg) is None  # a checkout, but the package is not part of it (no commit yet)
    _git(pkg.parent, "add", ".")
    _git(pkg.parent, "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=pkg, capture_output=True, text=True).stdout.strip()
    assert git_commit(pkg) == {"commit": head, "dirty": False}
    (pkg / "other.txt").write_text("untracked\n")
    assert git_commit(pkg) == {"commit": head, "dirty": False}  # untracked files do not count
    (pkg / "__init__.py").write_text("x = 2\n")
    assert git_commit(pkg) == {"commit": head, "dirty": True}
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))  # the caller's GIT_DIR is not the package's
    assert git_commit(pkg) == {"commit": head, "dirty": True}
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # git missing: null, never an error
    assert git_commit(pkg) is None


# ------------------------------------------------------------------------------------------ the table


def test_status_sorts_with_the_option_before_or_after_the_directory(tmp_path, capsys):
    d = tmp_path / "x-sweep"
    d.mkdir()
    runs = [
        {"name": f"x-hidden_{h}", "values": {"model.hidden": str(h)}, "run_dir": str(d / f"x-hidden_{h}")}
        for h in (16, 8, 32)
    ]
    (d / "sweep.yaml").write_text(
        yaml.safe_dump({"config": "x.yaml", "keys": {"model.hidden": ["16", "8", "32"]}, "runs": runs})
    )
    orders = []
    for argv in (
        ["--sort", "hidden", "--json", str(d)],
        [str(d), "--sort", "hidden", "--json"],
        ["--json", str(d), "--sort=hidden"],
    ):
        assert status_cmd.main(argv) == 0
        orders.append([r["run"] for r in json.loads(capsys.readouterr().out)["runs"]])
    assert orders == [["x-hidden_8", "x-hidden_16", "x-hidden_32"]] * 3
    assert status_cmd.main(["--desc", "--sort", "hidden", "--json", str(d)]) == 0
    assert [r["run"] for r in json.loads(capsys.readouterr().out)["runs"]] == [
        "x-hidden_32",
        "x-hidden_16",
        "x-hidden_8",
    ]


def test_print_config_prints_each_runs_config_and_touches_nothing(prepped, capsys):
    sw = prepped
    entries = S.read_sweep_file(sw.dir)
    entries["runs"].append(
        {"name": "tiny-hidden_99", "values": {"model.hidden": "99"}, "run_dir": str(sw.dir / "tiny-hidden_99")}
    )
    (sw.dir / "sweep.yaml").write_text(yaml.safe_dump(entries))
    before = _tree(sw.dir)
    assert status_cmd.main([str(sw.dir), "--print-config"]) == 0
    out, err = capsys.readouterr()
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [(d["run"]["name"], d["model"]["hidden"]) for d in docs] == [("tiny-hidden_8", 8), ("tiny-hidden_16", 16)]
    heads = [ln for ln in out.splitlines() if ln.startswith("# run ")]
    assert heads == [f"# run {r.name}: {r.cfg.run_dir}" for r in sw.runs] and out.count("---\n") == 2
    assert "tiny-hidden_99: not launched yet" in err
    assert _tree(sw.dir) == before  # nothing written


def test_table_shows_the_figures_the_runs_status_shows(prepped):
    """Hand-written metrics: periodic validation in the run's own protocol, then the final val and test in
    it and in the standard one. The table's val_ppl and protocol are collect_status' figure, the test
    figures in that protocol, accuracy as a percentage, and empty cells explained."""
    sw = prepped
    run = sw.runs[0].cfg
    recs = [
        {"split": "val", "step": 2, "ppl": 50.0, "acc": 0.30, "protocol": "windows"},
        {"split": "val", "step": 3, "ppl": 40.0, "acc": 0.40, "protocol": "windows", "final": True},
        {"split": "val", "step": 3, "ppl": 45.0, "acc": 0.41, "protocol": "standard", "final": True},
        {"split": "test", "step": 3, "ppl": 42.0, "acc": 0.4612, "protocol": "windows", "final": True},
        {"split": "test", "step": 3, "ppl": 47.0, "acc": 0.4501, "protocol": "standard", "final": True},
    ]
    run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    own = collect_status(run)["val_ppl"]
    table = S.sweep_status(sw.dir)
    row = next(r for r in table["runs"] if r["run"] == run.run.name)
    test = [r for r in recs if r["split"] == "test" and r["protocol"] == own["protocol"]][-1]
    assert (row["val_ppl"], row["protocol"]) == (own["ppl"], own["protocol"])
    assert (row["test_ppl"], row["test_acc_pct"]) == (test["ppl"], pytest.approx(100 * test["acc"]))
    text = S.format_table(table)
    assert f"{own['ppl']:.2f}" in text and f"{100 * test['acc']:.1f}%" in text and "0.46" not in text
    assert f"validation perplexity: {own['ppl']:.2f}" in format_status(collect_status(run))
    other = text.splitlines()[[r["run"] for r in table["runs"]].index(sw.runs[1].name) + 2]
    assert other.split()[-5:] == ["-"] * 5  # not trained: no figures, each '-' ...
    assert text.splitlines()[-1] == S.LEGEND and "not generated" in S.LEGEND  # ... and the legend says why
