"""Generation under faults: a kill -9 of the job leaves no process behind (its describing workers die with
it), and a failed write of any output is exit 4 with one line naming the file."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hpcrnn.errors import EXIT_STORAGE
from hpcrnn.generate import job as G
from hpcrnn.run import generated as F
from tests.helpers import run_python, start_module
from tests.test_generate import prepared_run


def _processes_of(cfg_path: Path) -> list[int]:
    """Live processes whose command line names ``cfg_path``: the job and every process forked from it
    (a fork keeps its parent's command line), whoever its parent is now."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # ended while we looked
        if str(cfg_path).encode() in argv and state != "Z":
            found.append(int(d.name))
    return found


@pytest.mark.slow
def test_kill_9_of_a_generation_job_leaves_no_process(tmp_path):
    cfg_path, _ = prepared_run(
        tmp_path, generate={"num_recipes": 2000, "batch_size": 2, "max_tokens": 40, "quality_sample": 0}
    )
    out = tmp_path / "scratch" / "tiny" / "generated" / "default"
    log = tmp_path / "generate.log"
    with log.open("w") as f:  # not a pipe: an orphan holding it open would block the reading test
        # two workers whatever the CPU count, so the job surely has children to orphan
        env = {"HPCRNN_QUALITY_WORKERS": "2"}
        p = start_module("hpcrnn.generate", str(cfg_path), env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("recipe-*.txt"))) < 10 and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, log.read_text()[-2000:]  # still busy: killed mid-run, not after the end
    assert len(set(_processes_of(cfg_path)) - {p.pid}) == 2, "the job runs its two describing workers"
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _processes_of(cfg_path):
        time.sleep(0.05)
    left = _processes_of(cfg_path)
    for pid in left:  # not left behind by a failing test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the killed job survived it: {left}"


def test_a_worker_whose_parent_is_already_gone_leaves():
    """The parent can die between the fork and the death-signal request: the worker then sees another
    parent than the one it was forked from, and leaves at once instead of waiting forever."""
    code = "from hpcrnn.generate.describe import die_with_parent as d; print('in', flush=True); d(1); print('stayed')"
    r = run_python("-c", code)
    assert (r.returncode, r.stdout, r.stderr) == (1, "in\n", "")


def _enospc(*_args, **_kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _failing(real, name: str):
    """``real`` (a writer taking the path first) that fails with a full disk for the file ``name``."""

    def write(path, *args, **kw):
        if Path(path).name == name:
            _enospc()
        return real(path, *args, **kw)

    return write


def _fail_mkdir_of(out: Path):
    real = Path.mkdir

    def mkdir(self, *args, **kw):
        if self == out:
            _enospc()
        return real(self, *args, **kw)

    return mkdir


# (what fails, how it is made to fail, the file the message must name)
_WRITES = {
    "output folder": lambda mp, out: mp.setattr(Path, "mkdir", _fail_mkdir_of(out)),
    "plan": lambda mp, out: mp.setattr(G, "create_exclusive", _enospc),
    "recipe": lambda mp, out: mp.setattr(F, "atomic_write_text", _failing(F.atomic_write_text, "recipe-00003.txt")),
    "index line": lambda mp, out: mp.setattr(F, "append_jsonl", _enospc),
    "merged index": lambda mp, out: mp.setattr(F, "atomic_write_text", _failing(F.atomic_write_text, F.INDEX)),
    "summary": lambda mp, out: mp.setattr(F, "atomic_write_json", _failing(F.atomic_write_json, F.SUMMARY)),
}
_NAMED = {
    "output folder": "generated/default",
    "plan": F.PLAN,
    "recipe": "recipe-00003.txt",
    "index line": "index-00001-of-00001.jsonl",
    "merged index": F.INDEX,
    "summary": F.SUMMARY,
}


@pytest.mark.parametrize("what", list(_WRITES))
def test_a_failed_output_write_exits_4_with_one_line(tmp_path, monkeypatch, capsys, what):
    cfg_path, _ = prepared_run(tmp_path)
    monkeypatch.setenv("HPCRNN_QUALITY_WORKERS", "0")  # the writes happen in this process either way
    capsys.readouterr()
    _WRITES[what](monkeypatch, tmp_path / "scratch" / "tiny" / "generated" / "default")
    rc = G.main([str(cfg_path)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == EXIT_STORAGE, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert _NAMED[what] in err[0] and "No space left on device" in err[0], err[0]
