"""Keep freed memory in the process for hot loops that allocate and free big tensors every step.

A generation step makes and drops several tensors of megabytes (logits and probabilities: 10 MB each for
512 slots x 5,288 words). glibc's malloc hands such blocks back to the OS when they are freed and maps
fresh pages for the next one, so every step pays page faults on all of them (comparable to the step's
arithmetic). ``keep_freed_memory`` tells malloc to serve blocks up to 32 MB from its heap and to keep
freed heap memory, so the same pages are reused step after step. It is a process-wide setting: the
generation job and the benchmark call it at their start; a library import does not. A no-op where there
is no glibc (``mallopt`` missing).
"""

from __future__ import annotations

import ctypes
import ctypes.util

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
