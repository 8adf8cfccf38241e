"""One writer per run: a lock file in the run directory that works across nodes.

``<run dir>/lock.json`` is created with O_CREAT|O_EXCL (atomic on local file systems and on NFS v3+), and
holds who has it: host, pid, the process's start time, Slurm job id, stage. Nothing relies on
process-local state, so a second launch from another node is refused with a message naming the holder.
A lock is stale — and is taken over — when its holder is recognisably dead:
- same host: no process with that pid and start time (pids are reused, start times are not);
- a Slurm job id equal to ours: it is our own previous incarnation (a requeued job keeps its id);
- another host with a Slurm job id that Slurm no longer lists as running;
- otherwise: the holder refreshes the lock's mtime (``heartbeat``); older than ``stale_after`` s is dead.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from hpcrnn.cluster.slurm import job_on_node
from hpcrnn.errors import LockedError

LOCK_NAME = "lock.json"


def process_start(pid: int) -> str | None:
    """The start time (clock ticks since boot) of a live, non-zombie process, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


class RunLock:
    """The run lock of one run directory for one stage; ``with RunLock(...)`` or acquire()/release()."""

    def __init__(self, run_dir: str | os.PathLike, stage: str, stale_after: float = 3600.0):
        self.path = Path(run_dir) / LOCK_NAME
        self.stage, self.stale_after = stage, stale_after
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": process_start(os.getpid()),
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "stage": stage,
            "since": time.time(),
        }
        self.held = False

    def _stale_reason(self, holder: dict) -> str | None:
        if holder.get("host") == self.me["host"]:
            start = process_start(int(holder.get("pid", -1)))
            if start is None or start != holder.get("start"):
                return "its process is gone"
            return None
        job = holder.get("job_id")
        if job and job == self.me["job_id"]:
            return "it is this job's previous run (requeued)"
        if job:
            if job_on_node(job) is False:
                return f"Slurm job {job} is no longer running"
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return "it vanished"
        if age > self.stale_after:
            return f"no heartbeat for {age:.0f} s"
        return None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                fd = None
            if fd is None:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return self
        raise LockedError(f"{self.path}: could not take the run lock (contended)")

    def _holder(self) -> dict:
        """Who the lock file names; an empty or unreadable file is read once more after a moment."""
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        if not holder:  # being written this instant, or garbage: give it a moment
            time.sleep(0.2)
            try:
                holder = json.loads(self.path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {"host": "?", "pid": -1}
        return holder

    def _take_over_if_stale(self) -> None:
        """Remove the existing lock if its holder is recognisably dead; else refuse, naming the holder."""
        holder = self._holder()
        if self._stale_reason(holder) is None:
            who = f"{holder.get('stage', '?')} pid {holder.get('pid')} on {holder.get('host')}" + (
                f", Slurm job {holder['job_id']}" if holder.get("job_id") else ""
            )
            raise LockedError(
                f"{self.path.parent}: run is in use by {who} (lock {self.path}); "
                f"wait for it, or remove the lock if that process is really gone"
            )
        # rename it away (atomic) so two takers cannot both win
        aside = self.path.with_name(f".{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
            os.unlink(aside)
        except FileNotFoundError:
            pass

    def heartbeat(self) -> None:
        if self.held:
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self.held:
            try:
                holder = json.loads(self.path.read_text())
                if holder.get("pid") == self.me["pid"] and holder.get("host") == self.me["host"]:
                    self.path.unlink()
            except (OSError, ValueError):
                pass
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
