"""Stop requests by signal: handlers only record which stop was asked for.

Imported (and installed) at the very top of the training entry point, before torch is imported, so that a
SIGUSR2/SIGTERM that arrives during start-up still ends in a complete checkpoint rather than the signal's
default action (which would kill the process with nothing saved). The trainer reads the flag at each step
boundary, where all ranks agree on it.
"""

from __future__ import annotations

import signal

NO_STOP, STOP_REQUEUE, STOP_STOPPED = 0, 1, 2  # all-reduced with MAX: a SIGTERM (stopped) wins


class StopFlag:
    def __init__(self):
        self.code, self.reason = NO_STOP, ""
        self._sigs: dict[int, int] = {}
        self._old: dict[int, object] = {}

    def _handle(self, signum, _frame):
        code = self._sigs.get(signum, STOP_REQUEUE)
        if code >= self.code:
            self.code, self.reason = code, signal.Signals(signum).name

    def install(self, stop_signal: str = "SIGUSR2") -> StopFlag:
        """Handle ``stop_signal`` as "checkpoint and requeue me" and SIGTERM as "checkpoint and stop"."""
        for sig, code in ((getattr(signal, stop_signal), STOP_REQUEUE), (signal.SIGTERM, STOP_STOPPED)):
            self._sigs[sig] = code
            old = signal.signal(sig, self._handle)
            if old is not self._handle and sig not in self._old:
                self._old[sig] = old
        # the start-up re-execution (hpcrnn/process.py) blocks them across execve: with the handler in
        # place a signal that arrived meanwhile is delivered now, to it
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(self._sigs))
        return self

    def request(self, code: int, reason: str) -> None:
        if code >= self.code:
            self.code, self.reason = code, reason

    def restore(self) -> None:
        """Give the signals back to whoever had them before (e.g. submitit's handlers)."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


FLAG = StopFlag()  # one per process: the early handler and the trainer share it
