"""docs/sbatch.md's job script, run by bash with srun and scontrol stubbed: exit 75 requeues, 0 does not."""

import os
import re
import sys

import pytest

from tests.helpers import ROOT, run_python, tiny_config


def doc_script() -> str:
    text = (ROOT / "docs" / "sbatch.md").read_text()
    return re.search(r"```bash\n(#!/bin/bash\n.*?)```", text, re.S).group(1)


@pytest.mark.slow
def test_the_documented_script_requeues_on_75_only(tmp_path, tiny_corpus):
    script = doc_script()
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=USR2@" in script
    assert "srun python -m hpcrnn.train" in script
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "python").write_text(f'#!/bin/bash\nexec {sys.executable} "$@"\n')  # this interpreter
    (stubs / "srun").write_text('#!/bin/bash\nexec "$@"\n')  # one task, in the foreground
    (stubs / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.log\n')
    for f in ("python", "srun", "scontrol"):
        (stubs / f).chmod(0o755)
    # a 1 s time budget: the trainer checkpoints at once and exits 75, as on SIGUSR2
    cfg = tiny_config(tmp_path, tiny_corpus, train={"time_limit": 1.0})
    job = tmp_path / "job.sh"
    job.write_text(re.sub(r"^CONFIG=.*$", f"CONFIG={cfg}", script, flags=re.M))
    env = {"PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SCRATCH": str(tmp_path)}
    r = run_python("-c", f"import subprocess, sys; sys.exit(subprocess.call(['bash', {str(job)!r}]))", env=env)
    assert r.returncode == 75, r.stdout + r.stderr
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]

    # the requeued job resumes and finishes: exit 0, no further requeue
    cfg.write_text(cfg.read_text().replace("time_limit: 1.0", "time_limit: 0.0"))
    r = run_python("-c", f"import subprocess, sys; sys.exit(subprocess.call(['bash', {str(job)!r}]))", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from step-" in r.stdout
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
