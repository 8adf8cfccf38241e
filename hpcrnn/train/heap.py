"""Keep a training step's big tensors on malloc's heap instead of fresh kernel pages every step.

A step allocates and frees tensors of tens to hundreds of megabytes (the logits alone are batch x window x
vocabulary floats: 128 MB for the lecture's network). glibc serves every block above its mmap threshold
with freshly mapped pages and unmaps them on free, so each step pays a page fault for every 4 KiB of every
such tensor; on a 2-core machine that is a third of a step's time, spent in the kernel. Raising the
threshold above the largest tensor, and keeping freed memory instead of trimming it, lets step N+1 reuse
step N's pages. ``mallopt`` cannot do it from inside the process (it refuses a threshold above 32 MB, and
lower ceilings made training slower still), but the environment tunables can; glibc reads them only when
a process starts. So ``python -m hpcrnn.train`` re-executes itself once with them set, and the launcher's
job scripts export them. A value the user set is kept. Other C libraries ignore these variables.
"""

from __future__ import annotations

import os
import platform
import sys

HEAP_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(2**32),  # no tensor of a step is mapped on its own
    "MALLOC_TRIM_THRESHOLD_": str(2**34),  # freed memory stays in the process for the next step
    "MALLOC_TOP_PAD_": str(2**30),  # the heap grows in large steps, not one brk a tensor
}
_DONE = "HPCRNN_HEAP_TUNED"  # set by the re-execution, so it happens at most once


def heap_tuned(environ=os.environ) -> bool:
    return all(k in environ for k in HEAP_ENV)


def reexec_with_tuned_heap() -> None:
    """Start this same command again with the tunables in its environment, where glibc will read them;
    returns without doing anything when they are set already, off glibc, or when re-execution failed."""
    if heap_tuned() or os.environ.get(_DONE) or platform.libc_ver()[0] != "glibc":
        return
    env = {**HEAP_ENV, **os.environ, _DONE: "1"}
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return  # the untuned heap is slower, not wrong


def export_lines() -> list[str]:
    """Shell lines for a job script: the tunables, each unless the job's environment has it already."""
    return [f"export {k}=${{{k}:-{v}}}" for k, v in HEAP_ENV.items()]
