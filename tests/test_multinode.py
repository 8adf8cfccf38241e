"""Multi-node training on the real two-node Slurm cluster (`.ci/slurm-cluster start --nodes 2`, started by .ci/run).

Nodes n1 and n2 (partition `multi`) are slurmds in network namespaces of their own on this machine, so the
ranks of a 2-node job really talk over a network (gloo over veths on a bridge), resolve each other by name and
share only the filesystem, as on a cluster. Skipped where that partition is missing, failed under CI=true.
1. 2 nodes x 1 task reach the 1-rank weights; the master is the allocation's first node; status shows both;
2. USR2 to the 2-node job: both ranks stop at one step with one complete checkpoint, submitit requeues it and
   it resumes bitwise equal to the uninterrupted 2-node run;
3. 2 nodes x 2 tasks (4 ranks) reach the 1-rank weights too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
import torch

from hpcrnn.config import load_config
from hpcrnn.fsutil import read_jsonl
from hpcrnn.train import checkpoint as ckpt
from tests.helpers import run_module, tiny_config
from tests.test_slurm import _run, completed, job_ids, launch, logs, model_pt, sacct, slurm_problem, wait_gone

pytestmark = pytest.mark.slurm

PARTITION = "multi"


@pytest.fixture(scope="module")
def two_nodes() -> list[str]:
    """The nodes of partition `multi`, when it has two usable ones."""
    why = slurm_problem()
    r = _run("sinfo", "-h", "-p", PARTITION, "-N", "-o", "%N %T")
    nodes = [line.split() for line in r.stdout.splitlines() if line.strip()]
    ok = [n for n, st in nodes if st.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")]
    if why is None and len(ok) >= 2:
        return sorted(ok)
    why = why or f"partition {PARTITION!r} has no two usable nodes ({nodes or r.stderr.strip() or 'none'})"
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI is set but {why} (.ci/run starts them with .ci/slurm-cluster start --nodes 2)", pytrace=False)
    pytest.skip(f"{why}: start them as root with .ci/slurm-cluster start --nodes 2")


# long enough to USR2 a running job; every checkpoint kept, so that ranks are compared early (below)
TRAIN = {"max_steps": 1500, "checkpoint_every": 50, "keep_last": 100, "eval_every": 100000, "log_every": 100}
# Another world size sums the gradients in another order: equal within float tolerance at first, the
# difference then grows over the steps (1e-3 after 1500 steps here), so ranks are compared at this step.
COMPARE_STEP = 50


def _cfg(tmp_path, corpus, name, train=None, **slurm_train):
    slurm_cfg = {"defaults": {"cpus_per_task": 1, "time_min": 60}}
    if slurm_train:
        slurm_cfg["train"] = {"partition": PARTITION, **slurm_train}
    return tiny_config(tmp_path / name, corpus, train={**TRAIN, **(train or {})}, slurm=slurm_cfg)


def _weights_close(a_cfg, b_cfg, step: int = COMPARE_STEP) -> None:
    a, b = (
        ckpt.load_model_state(next(c for c in ckpt.list_complete(x.checkpoint_dir) if c.step == step))
        for x in (a_cfg, b_cfg)
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def _rendezvous(cfg, jid: str, tasks: int) -> list[tuple[str, str]]:
    """(host, master) of each task, from the line hpcrnn.train.distributed writes to each task's log."""
    out = []
    for t in range(tasks):
        err = (cfg.jobs_dir / "train" / f"{jid}_{t}_log.err").read_text()
        m = re.findall(r"rank \d+ of \d+ on (\S+): gloo rendezvous at (\S+):\d+", err)
        assert m, err[-2000:]
        out.append(m[-1])
    return out


@pytest.fixture(scope="module")
def runs(two_nodes, tmp_path_factory):
    """Three runs side by side: 1 rank on the one-node partition (the reference), 2 nodes x 1 task
    uninterrupted, and 2 nodes x 1 task preempted (USR2) once it has a complete checkpoint."""
    base = tmp_path_factory.mktemp("multinode")
    corpus = base / "corpus.txt"
    from tests.helpers import make_recipes

    corpus.write_text(make_recipes(300))
    paths = {
        "one": _cfg(base, corpus, "one"),
        "two": _cfg(base, corpus, "two", nodes=2, tasks_per_node=1),
        "cut": _cfg(base, corpus, "cut", nodes=2, tasks_per_node=1),
    }
    cfgs = {k: load_config(p) for k, p in paths.items()}
    for p in paths.values():
        r = launch(str(p), "--stages", "preprocess,train")
        assert r.returncode == 0, r.stdout + r.stderr
    cut = cfgs["cut"]
    jid = job_ids(cut.run_dir)["train"]
    deadline = time.time() + 180
    while time.time() < deadline and not list(cut.checkpoint_dir.glob("step-*/COMPLETE")):
        time.sleep(0.2)
    assert list(cut.checkpoint_dir.glob("step-*/COMPLETE")), logs(cut.run_dir)
    # status while it runs on both nodes
    status = json.loads(run_module("hpcrnn.status", str(cut.run_dir), "--json").stdout)
    status_text = run_module("hpcrnn.status", str(cut.run_dir)).stdout
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    every = [j for c in cfgs.values() for j in job_ids(c.run_dir).values()]
    wait_gone(every, cut.run_dir, timeout=300)
    return cfgs, status, status_text


def test_two_nodes_reach_the_one_rank_weights_with_the_first_node_as_master(runs, two_nodes):
    cfgs, *_ = runs
    one, two = cfgs["one"], cfgs["two"]
    completed(job_ids(one.run_dir)["train"], one.run_dir)
    jid = job_ids(two.run_dir)["train"]
    completed(jid, two.run_dir)
    meta = json.loads((model_pt(two).parent / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["done"] and meta["step"] == TRAIN["max_steps"]
    _weights_close(one, two)
    # one rank on each node, both meeting at the allocation's first node (by name, not 127.0.0.1)
    assert _rendezvous(two, jid, 2) == [(two_nodes[0], two_nodes[0]), (two_nodes[1], two_nodes[0])]
    # the job's record in accounting names both nodes
    out = _run("sacct", "-n", "-X", "-P", "-o", "NodeList", "-j", jid).stdout.split()
    assert out and out[-1] == f"{two_nodes[0][:-1]}[{two_nodes[0][-1]}-{two_nodes[1][-1]}]", out


def test_status_shows_the_running_job_on_both_nodes(runs, two_nodes):
    cfgs, status, text = runs
    train = status["stages"]["train"]
    assert train["state"] == "running" and train["slurm_state"] == "RUNNING", train
    expanded = _run("scontrol", "show", "hostnames", train["nodes"]).stdout.split()
    assert expanded == two_nodes
    assert f"job {train['job_id']} RUNNING on {train['nodes']}" in text


def test_usr2_to_two_node_job_requeues_and_resumes_bitwise(runs, two_nodes):
    cfgs, *_ = runs
    cut, two = cfgs["cut"], cfgs["two"]
    jid = job_ids(cut.run_dir)["train"]
    runs_ = sacct(jid)
    assert [x["State"] for x in runs_] == ["REQUEUED", "COMPLETED"], f"{runs_}\n{logs(cut.run_dir)}"
    events = [e for e in read_jsonl(cut.metrics_path) if e.get("event") in ("stop", "requeue")]
    assert [(e["event"], e["reason"]) for e in events] == [("stop", "SIGUSR2"), ("requeue", "preempted")], events
    step = events[0]["step"]
    assert events[1]["step"] == step and 0 < step < TRAIN["max_steps"]
    # one complete checkpoint of that step, written by both ranks together (world size 2)
    stop_ckpt = cut.checkpoint_dir / f"step-{step:08d}"
    assert (stop_ckpt / "COMPLETE").is_file()
    assert json.loads((stop_ckpt / "meta.json").read_text())["world_size"] == 2
    # the requeued job resumed from it, on both nodes again
    out = (cut.jobs_dir / "train" / f"{jid}_0_log.out").read_text()
    assert f"resumed from step-{step:08d}" in out, out[-2000:]
    hosts = _rendezvous(cut, jid, 2)
    assert sorted(h for h, _ in hosts) == two_nodes and {m for _, m in hosts} == {two_nodes[0]}
    assert model_pt(cut).parent.name == model_pt(two).parent.name == f"step-{TRAIN['max_steps']:08d}"
    assert model_pt(cut).read_bytes() == model_pt(two).read_bytes()


def test_two_nodes_two_tasks_each_reach_the_one_rank_weights(runs, two_nodes, tmp_path):
    cfgs, *_ = runs
    one = cfgs["one"]
    p = tiny_config(
        tmp_path,
        one.data.corpus,
        train=TRAIN,
        slurm={
            "defaults": {"cpus_per_task": 1, "time_min": 60},
            "train": {"partition": PARTITION, "nodes": 2, "tasks_per_node": 2},
        },
    )
    cfg = load_config(p)
    r = launch(str(p), "--stages", "preprocess,train")
    assert r.returncode == 0, r.stdout + r.stderr
    jid = job_ids(cfg.run_dir)["train"]
    wait_gone([jid], cfg.run_dir, timeout=300)
    completed(jid, cfg.run_dir)
    assert json.loads((model_pt(cfg).parent / "meta.json").read_text())["world_size"] == 4
    _weights_close(one, cfg)
    hosts = _rendezvous(cfg, jid, 4)
    assert sorted(h for h, _ in hosts) == sorted(two_nodes * 2) and {m for _, m in hosts} == {two_nodes[0]}
