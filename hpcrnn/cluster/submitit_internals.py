"""The parts of submitit that it does not document and the train job relies on, in one place.

submitit 1.5 installs a ``SignalHandler`` bound method for its preemption signal; the trainer replaces it while
it trains and hands the stop back to it afterwards. What is used here: ``JobEnvironment._usr_sig()``,
``JobEnvironment.USR_SIG``, ``SignalHandler.env``, ``SignalHandler.has_timed_out()`` and
``SignalHandler._delayed._timeout_countdown``. tests/test_launch.py checks each against the installed
submitit, so an upgrade that changes them fails there, not in a job on the cluster.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from submitit.core.job_environment import JobEnvironment, SignalHandler


def preemption_signal() -> signal.Signals:
    """The signal submitit asks Slurm to send before the time limit (SUBMITIT_PREEMPT_SIGNAL, default USR2)."""
    return JobEnvironment._usr_sig()


def preemption_signal_name() -> str:
    return "SIG" + JobEnvironment.USR_SIG


def requeue_handler(fallback: Any = None) -> Callable | None:
    """submitit's preemption handler (a bound SignalHandler method): the one installed now for the
    preemption signal, else ``fallback`` if that is one, else None (not in a submitit job)."""
    for h in (signal.getsignal(preemption_signal()), fallback):
        if isinstance(getattr(h, "__self__", None), SignalHandler):
            return h
    return None


@dataclass
class StopVerdict:
    reason: str  # "timed-out" or "preempted"
    timeouts_left: int  # submitit's countdown after this stop; below 0 it refuses to requeue


def classify_stop(handler: Callable) -> StopVerdict:
    """The test submitit's handler applies to this stop, on the same clock (the job's elapsed time)."""
    sh = handler.__self__
    timed_out = sh.has_timed_out()
    return StopVerdict("timed-out" if timed_out else "preempted", sh._delayed._timeout_countdown - int(timed_out))


def hand_over(handler: Callable) -> None:
    """Let submitit's handler finish the stop: it calls the job's ``checkpoint()``, then requeues (scontrol
    requeue, or exit status 144 for the local executor) and exits, or raises when no timeouts are left."""
    handler(handler.__self__.env._usr_sig(), None)
