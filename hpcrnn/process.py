"""How a stage's process is set up, shared by the launcher (which writes it into job scripts, without torch)
and the stages: the malloc tunables of training, freed memory kept for generation, and the rendezvous port
of a job.

Training's heap. A step allocates and frees tensors of tens to hundreds of megabytes (the logits alone are
batch x window x vocabulary floats: 128 MB for the lecture's network). glibc serves every block above its
mmap threshold with freshly mapped pages and unmaps them on free, so each step pays a page fault for every 4
KiB of every such tensor; on a 2-core machine that is a third of a step's time, spent in the kernel. Raising
the threshold above the largest tensor, and keeping freed memory instead of trimming it, lets step N+1 reuse
step N's pages. ``mallopt`` cannot do it from inside the process (it refuses a threshold above 32 MB, and
lower ceilings made training slower still), but the environment tunables can; glibc reads them only when a
process starts. So ``python -m hpcrnn.train`` re-executes itself once with them set, and the launcher's job
scripts export them. A value the user set is kept. Other C libraries ignore these variables.

Generation's heap. A generation step makes and drops several tensors of megabytes (logits and probabilities:
10 MB each for 512 slots x 5,288 words). glibc's malloc hands such blocks back to the OS when they are freed
and maps fresh pages for the next one, so every step pays page faults on all of them (comparable to the
step's arithmetic). ``keep_freed_memory`` tells malloc to serve blocks up to 32 MB from its heap and to keep
freed heap memory, so the same pages are reused step after step (what is larger, a pointer's ring of
keys, is allocated once per batch and never copied: hpcrnn/generate/ring.py). It is a process-wide setting: the
generation job and the benchmark call it at their start; a library import does not. A no-op where there is
no glibc (``mallopt`` missing).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import signal
import sys

HEAP_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(2**32),  # no tensor of a step is mapped on its own
    "MALLOC_TRIM_THRESHOLD_": str(2**34),  # freed memory stays in the process for the next step
    "MALLOC_TOP_PAD_": str(2**30),  # the heap grows in large steps, not one brk a tensor
}
# the signals that ask a trainer to checkpoint (SIGUSR2: requeue; SIGTERM: stop), see train/stopflag.py
STOP_SIGNALS = frozenset({signal.SIGUSR2, signal.SIGTERM})
_DONE = "HPCRNN_HEAP_TUNED"  # set by the re-execution, so it happens at most once
_TEST_SIGNAL = "HPCRNN_TEST_SIGNAL_AT_REEXEC"  # tests only: a signal name sent to itself just before execve


def heap_tuned(environ=os.environ) -> bool:
    return all(k in environ for k in HEAP_ENV)


def reexec_with_tuned_heap() -> None:
    """Start this same command again with the tunables in its environment, where glibc will read them;
    returns without doing anything when they are set already, off glibc, or when re-execution failed."""
    if heap_tuned() or os.environ.get(_DONE) or platform.libc_ver()[0] != "glibc" or not _is_train_command():
        return
    env = tuned_env(os.environ)
    # A stop signal must not kill the process between here and the new process's handler: blocked signals
    # stay blocked, and pending ones pending, across execve; StopFlag.install unblocks them once its
    # handler is in place, and a signal that came meanwhile is delivered to it then.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if os.environ.get(_TEST_SIGNAL):  # tests: a stop signal inside the window, deterministically
        os.kill(os.getpid(), getattr(signal, os.environ[_TEST_SIGNAL]))
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return  # the untuned heap is slower, not wrong


def available_cpus() -> int:
    """The CPUs this task may use: Slurm's allocation, else the affinity mask."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def ignore_stop_signal(name: str) -> None:
    """The trainer's outcome is on disk (done, or stopped with its checkpoint): from here to the process's
    exit a stop signal has nothing left to stop. Ignore it, rather than leave a Python handler: interpreter
    finalization (seconds, with torch loaded) resets Python handlers to the default action, which for
    SIGUSR2 ends the process by the signal, and Slurm then records a finished job as FAILED. This happens
    whenever a job finishes within Slurm's warning of its time limit. SIG_IGN is kept through finalization."""
    signal.signal(getattr(signal, name), signal.SIG_IGN)


def tuned_env(environ) -> dict:
    """The re-executed process's environment: the tunables, each unless the user set it."""
    return {**HEAP_ENV, **{k: v for k, v in environ.items() if k != _TEST_SIGNAL}, _DONE: "1"}


def _is_train_command() -> bool:
    """Is this process itself the trainer's command (``python -m hpcrnn.train …`` or ``hpcrnn train …``)?
    Re-executing anything else (``python -c "…"`` that calls the trainer, a test runner) would run its
    other work twice."""
    argv = list(getattr(sys, "orig_argv", []))[1:]
    while argv and argv[0].startswith("-") and argv[0] not in ("-m", "-c"):
        argv.pop(0)  # interpreter options such as -u or -X
    if argv[:2] == ["-m", "hpcrnn.train"]:
        return True
    return len(argv) >= 2 and os.path.basename(argv[0]) == "hpcrnn" and argv[1] == "train"


def export_lines() -> list[str]:
    """Shell lines for a job script: the tunables, each unless the job's environment has it already."""
    return [f"export {k}=${{{k}:-{v}}}" for k, v in HEAP_ENV.items()]


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Returns whether malloc took the settings."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def master_port(job_id: str | int) -> int:
    """The rendezvous port of a job, from its id alone (digits only: "1234_5" -> 12345), so that every
    task of the job agrees without talking; in 20000-39999, above the usual service ports."""
    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    return 20000 + int(digits) % 20000
