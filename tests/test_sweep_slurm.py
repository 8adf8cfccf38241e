"""A 2-value sweep on the real Slurm cluster (started by .ci/run with .ci/slurm-cluster).

Skipped where no cluster answers, except under CI, where that is a failure (tests/test_slurm.py's fixture).
Checked: the runs in the sweep directory with their overrides.yaml; one shared preprocess job; train and
generate each ONE job array (tasks ``<id>_0``, ``<id>_1``); generate submitted with ``aftercorr`` and task i
starting only after train task i; an array task preempted with USR2 requeues alone and resumes from its
checkpoint, its generate task waiting for it; both runs end with recipes; the sweep's status table; a
relaunch submits nothing.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from hpcrnn.cluster.records import read_jobs
from hpcrnn.cluster.sweep import expand
from hpcrnn.fsutil import read_jsonl
from tests.helpers import run_module, tiny_config
from tests.test_slurm import _run, sacct, slurm, wait_gone  # noqa: F401 (slurm: the cluster fixture)

pytestmark = pytest.mark.slurm


def _logs(sw) -> str:
    """The tails of every job log of the sweep's runs, for assertion messages."""
    out = []
    for r in sw.runs:
        for launch in read_jobs(r.cfg.run_dir)["launches"]:
            for rec in launch["stages"].values():
                for k in ("stdout", "stderr"):
                    p = Path(rec.get(k) or "/nonexistent")
                    if p.is_file():
                        out.append(f"--- {p}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:]))
    return "\n".join(out)


def test_two_value_sweep_runs_as_one_array_per_stage(slurm, tmp_path, tiny_corpus):  # noqa: F811
    cfg_path = tiny_config(
        tmp_path,
        tiny_corpus,
        run={"name": "sw"},
        # long enough (a few seconds) for a checkpoint to exist before training ends, so task 0 can be preempted
        train={"max_steps": 1500, "checkpoint_every": 50, "eval_every": 100000, "log_every": 500},
        slurm={"defaults": {"cpus_per_task": 1, "time_min": 60}},
    )
    args = [str(cfg_path), "model.hidden=16,24", "--cluster", "slurm"]
    sw = expand(cfg_path, ["model.hidden=16,24"])
    r = run_module("hpcrnn.sweep", *args, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for x in sw.runs:  # each run in the sweep directory, with the overrides that made it
        assert x.cfg.run_dir.parent == sw.dir and (x.cfg.run_dir / "provenance.json").is_file()
        assert (x.cfg.run_dir / "overrides.yaml").read_text().split() == [
            "-",
            f"model.hidden={x.values['model.hidden']}",
        ]
    rec = {x.name: read_jobs(x.cfg.run_dir)["launches"][-1]["stages"] for x in sw.runs}
    a, b = (rec[x.name] for x in sw.runs)
    pre = a["preprocess"]["job_id"]
    train, gen = a["train"]["job_id"].split("_")[0], a["generate"]["job_id"].split("_")[0]
    # one preprocess for the shared corpus; each run's record names its own task of the two arrays
    assert b["preprocess"]["job_id"] == pre and b["preprocess"]["shared_with"] == sw.runs[0].name
    assert [a["train"]["job_id"], b["train"]["job_id"]] == [f"{train}_0", f"{train}_1"]
    assert [a["generate"]["job_id"], b["generate"]["job_id"]] == [f"{gen}_0", f"{gen}_1"]
    assert a["train"]["dependency"] == f"afterok:{pre}" and a["generate"]["dependency"] == f"aftercorr:{train}"
    script = (tmp_path / "jobs" / "sw-sweep" / "generate" / f"{gen}_submission.sh").read_text()
    assert f"#SBATCH --dependency=aftercorr:{train}" in script and "#SBATCH --array=0-1" in script
    assert f"array {train} of 2" in r.stdout and f"array {gen} of 2" in r.stdout
    # while queued: each run's status reads its own tasks, and launching the sweep again is refused
    early = json.loads(run_module("hpcrnn.status", str(sw.dir), "--json").stdout)
    assert all(row["state"].split()[-1] in ("queued", "running") for row in early["runs"]), early["runs"]
    busy = run_module("hpcrnn.sweep", *args, timeout=120)
    assert busy.returncode == 2 and "still has jobs in Slurm" in busy.stderr, busy.stderr

    # preempt train task 0 once it has a complete checkpoint: it alone is requeued and resumes
    first = sw.runs[0].cfg
    deadline = time.time() + 180
    while time.time() < deadline and not list(first.checkpoint_dir.glob("step-*/COMPLETE")):
        time.sleep(0.2)
    assert list(first.checkpoint_dir.glob("step-*/COMPLETE")), _logs(sw)
    subprocess.run(["scancel", "--signal=USR2", f"{train}_0"], check=True)
    wait_gone([pre, train, gen], first.run_dir, timeout=240)

    t = {x["JobID"]: x for x in sacct(train, expect=3)}  # 3 rows: task 0 requeued once
    g = {x["JobID"]: x for x in sacct(gen, expect=2)}
    runs0 = [x["State"] for x in sacct(f"{train}_0")]
    assert runs0 == ["REQUEUED", "COMPLETED"], f"{runs0}\n{_logs(sw)}"
    assert t[f"{train}_1"]["State"] == "COMPLETED" and sorted(g) == [f"{gen}_0", f"{gen}_1"]
    assert all(x["State"] == "COMPLETED" for x in g.values()), f"{g}\n{_logs(sw)}"
    # aftercorr: generate task i after train task i (task 0's final run ended after its requeue)
    assert t[f"{train}_0"]["End"] <= g[f"{gen}_0"]["Start"] and t[f"{train}_1"]["End"] <= g[f"{gen}_1"]["Start"]
    assert sacct(pre)[-1]["End"] <= min(x["Start"] for x in sacct(f"{train}_1"))
    events = [e for e in read_jsonl(first.metrics_path) if e.get("event") == "requeue"]
    assert len(events) == 1 and events[0]["job_id"] == f"{train}_0" and events[0]["reason"] == "preempted"
    for x in sw.runs:
        out = x.cfg.run_dir / "generated" / "default"
        assert len(list(out.glob("recipe-*.txt"))) == 4 and (out / "summary.json").is_file()

    table = json.loads(run_module("hpcrnn.status", str(sw.dir), "--json").stdout)
    assert [(row["run"], row["model.hidden"], row["state"], row["step"]) for row in table["runs"]] == [
        (sw.runs[0].name, "16", "done", 1500),
        (sw.runs[1].name, "24", "done", 1500),
    ]
    s = run_module("hpcrnn.status", str(first.run_dir))
    assert f"job {train}_0 COMPLETED" in s.stdout and "requeued 1x (preempted 1)" in s.stdout

    # launched again: nothing is submitted
    def submitted() -> list[str]:
        names = ",".join(f"sw-sweep-{s}" for s in ("train", "generate")) + f",{sw.runs[0].name}-preprocess"
        return _run("sacct", "-n", "-X", "-P", "-o", "JobID", f"--name={names}", "-S", "now-1days").stdout.split()

    before = submitted()
    again = run_module("hpcrnn.sweep", *args, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "nothing to submit: every stage of every run is complete" in again.stdout
    assert "submitted to Slurm" not in again.stdout and submitted() == before
    for x in sw.runs:
        last = read_jobs(x.cfg.run_dir)["launches"][-1]["stages"]
        assert {st: v["action"] for st, v in last.items()} == dict.fromkeys(
            ("preprocess", "train", "generate"), "skipped"
        )
