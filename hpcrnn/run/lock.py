"""One writer per run: a lock file in the run directory that works across nodes.

``<run dir>/lock.json`` is created complete, as a hard link of a finished file (atomic on local file systems
and on NFS: it fails when the lock exists), and holds who has it: host, pid, the process's start time,
Slurm job id, stage. Nothing relies on process-local state, so a second trainer from another node is
refused with a message naming the holder.
A lock is stale — and is taken over — when its holder is recognisably dead:
- same host: no process with that pid and start time (pids are reused, start times are not);
- a Slurm job id equal to ours: it is our own previous incarnation (a requeued job keeps its id);
- another host with a Slurm job id that Slurm no longer lists as running;
- an empty or unreadable lock file (a crash or a full disk in an older writer): nobody's;
- otherwise: the holder's heartbeat thread refreshes the lock's mtime; older than ``stale_after`` s is dead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from hpcrnn.errors import LockedError

# a job in one of these states still runs on its node: its lock is not stale
ON_NODE_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"})
LOCK_NAME = "lock.json"  # the run's writers: preprocess, train
LAUNCH_LOCK_NAME = "launch.lock.json"  # a launch, while it plans, submits and records jobs.json


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


def _parse_holder(content: bytes) -> dict | None:
    """The holder a lock file names, or None when it names no one (empty, torn, not JSON, not an object,
    no host or no integer pid): such a lock can belong to no live process, so it is stale."""
    try:
        holder = json.loads(content)
    except ValueError:  # UnicodeDecodeError included
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("host"), str):
        return None
    pid = holder.get("pid")
    return holder if isinstance(pid, int) and not isinstance(pid, bool) else None


class RunLock:
    """The run lock of one run directory for one stage; ``with RunLock(...)`` or acquire()/release()."""

    def __init__(self, run_dir: str | os.PathLike, stage: str, stale_after: float = 3600.0, name: str = LOCK_NAME):
        self.path = Path(run_dir) / name
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
        self.inode: int | None = None
        self.lost: str | None = None  # why this process no longer holds the lock it took

    def _stale_reason(self, holder: dict) -> str | None:
        if holder.get("host") == self.me["host"]:
            start = process_start(holder["pid"])
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
        """Take the lock or raise LockedError naming its live holder. The content is written before the
        lock becomes visible (a hard link of a finished file), so no reader ever sees it empty."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{self.me['host']}-{self.me['pid']}-{id(self):x}.tmp")
        tmp.write_text(json.dumps(self.me))
        try:
            for _ in range(5):
                try:
                    os.link(tmp, self.path)  # fails if a lock exists: atomic on local file systems and NFS
                except FileExistsError:
                    self._take_over_if_stale()
                    continue
                self.held, self.inode, self.lost = True, os.stat(tmp).st_ino, None
                self._start_heartbeat()
                return self
        finally:
            tmp.unlink(missing_ok=True)
        raise LockedError(f"{self.path}: could not take the run lock (contended)")

    def _read(self) -> tuple[int, bytes] | None:
        """(inode, content) of the lock file now; None when there is none."""
        try:
            with open(self.path, "rb") as f:
                return os.fstat(f.fileno()).st_ino, f.read()
        except FileNotFoundError:
            return None

    def _take_over_if_stale(self) -> None:
        """Remove the existing lock if its holder is recognisably dead; else refuse, naming the holder.
        Atomic: the lock is renamed aside and removed only if what was renamed is the very file judged
        stale; if another taker replaced it meanwhile, it is put back."""
        seen = self._read()
        if seen is None:
            return
        holder = _parse_holder(seen[1])
        reason = "its lock file is empty or unreadable" if holder is None else self._stale_reason(holder)
        if reason is None:
            who = f"{holder.get('stage', '?')} pid {holder.get('pid')} on {holder.get('host')}" + (
                f", Slurm job {holder['job_id']}" if holder.get("job_id") else ""
            )
            raise LockedError(
                f"{self.path.parent}: run is in use by {who} (lock {self.path}); "
                f"wait for it, or remove the lock if that process is really gone"
            )
        aside = self.path.with_name(f".{self.path.name}.stale-{self.me['host']}-{self.me['pid']}-{id(self):x}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            with open(aside, "rb") as f:
                removed = os.fstat(f.fileno()).st_ino, f.read()
            if removed != seen:  # another taker's fresh lock, not the stale one: give it back
                os.link(aside, self.path)
        except (FileExistsError, FileNotFoundError):
            pass
        finally:
            aside.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        """Renew the lock's mtime from a thread of its own, so a holder busy for long (a validation pass,
        a checkpoint) never looks dead to a reader on another host."""
        self._stop = threading.Event()
        interval = max(0.05, self.stale_after / 20)

        def beat() -> None:
            while not self._stop.wait(interval):
                self.heartbeat()

        self._beat = threading.Thread(target=beat, name="hpcrnn-lock-heartbeat", daemon=True)
        self._beat.start()

    def heartbeat(self) -> None:
        """Renew the lock, if it is still this process's file (never renew another holder's lock)."""
        if self.held and self._still_mine():
            try:
                os.utime(self.path)
            except OSError:
                pass

    def _still_mine(self) -> bool:
        """Is the lock file still the one this process linked? A taker that judged an older lock stale can,
        in a race with a third process, leave another file there (see _take_over_if_stale): then this
        process no longer holds the run, and says so (``lost``) rather than go on writing beside it."""
        if self.lost:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and st.st_ino == self.inode:
            return True
        try:
            holder = _parse_holder(self.path.read_bytes())
        except OSError:
            holder = None
        who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "nobody"
        self.lost = f"{self.path}: the run lock is no longer this process's (it now names {who})"
        return False

    def check(self) -> None:
        """Raise LockedError when the lock was lost: called before every checkpoint write and retention,
        so two processes never write one run."""
        if self.held and not self._still_mine():
            raise LockedError(f"{self.lost}: stopping before writing to the run")

    def release(self) -> None:
        if self.held:
            self._stop.set()
            self._beat.join()  # no renewal after this point: a lock we no longer hold is not ours to renew
            try:
                holder = _parse_holder(self.path.read_bytes())
                if holder and holder["pid"] == self.me["pid"] and holder["host"] == self.me["host"]:
                    self.path.unlink()
            except OSError:
                pass
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def job_on_node(job_id: str) -> bool | None:
    """Whether Slurm lists the job in one of ON_NODE_STATES; None when Slurm cannot be asked."""
    try:
        r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return False if "Invalid job id" in r.stderr else None
    return r.stdout.strip() in ON_NODE_STATES
