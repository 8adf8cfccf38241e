"""Progress of a long job: a bar on a terminal, plain periodic lines in a batch log.

The trainer's progress (hpcrnn/train/loop.py, ``train.progress``) and the long loops of preprocess and
generation decide bar or lines by the same rule, ``use_bar``. A bar redraws in place on stderr; a batch log
(stdout redirected to a file by Slurm or submitit) gets one line every ``LINE_EVERY_S`` seconds, so a
job's log shows it is alive and how far it is without growing by a line per item.
"""

from __future__ import annotations

import sys
import time

LINE_EVERY_S = 30.0  # seconds between progress lines in a batch log
_BAR_EVERY_S = 0.2  # redraws of a terminal bar at most this often


def use_bar(mode: str = "auto") -> bool:
    """``bar``, ``lines`` or ``auto``: a bar when stderr is a terminal."""
    return mode == "bar" or (mode == "auto" and sys.stderr.isatty())


def _num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() or x >= 100 else f"{x:,.1f}"


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS (hours past a day keep counting)."""
    s = int(max(seconds, 0))
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


class Meter:
    """``update(done)`` as work gets done (cheap: it only prints when a bar or line is due), ``finish()``
    at the end. ``total`` None: counts and rate without a fraction or ETA. A bar is drawn at the first
    update (the first item done) and at the last (``done`` reaching ``total``), and at most every
    ``_BAR_EVERY_S`` in between."""

    def __init__(self, label: str, total: float | None = None, unit: str = "", mode: str = "auto"):
        self.label, self.total, self.unit = label, total, unit
        self.bar = use_bar(mode)
        self.t0 = time.time()
        self.last = self.t0  # lines: the first one after LINE_EVERY_S, not at the start
        self.drawn = False

    def text(self, done: float, extra: str = "") -> str:
        took = time.time() - self.t0
        rate = done / took if took > 0 else 0.0
        parts = [f"{self.label}: {_num(done)}"]
        if self.total:
            frac = min(1.0, done / self.total)
            parts[0] += f"/{_num(self.total)}{self.unit and ' ' + self.unit} ({100 * frac:.0f}%)"
        elif self.unit:
            parts[0] += f" {self.unit}"
        parts.append(f"{rate:,.1f} {self.unit or 'items'}/s")
        if extra:
            parts.append(extra)
        if self.total and rate > 0 and done < self.total:
            parts.append(f"eta {clock((self.total - done) / rate)}")
        parts.append(f"elapsed {clock(took)}")
        return ", ".join(parts)

    def update(self, done: float, extra: str = "") -> None:
        now = time.time()
        if self.bar:
            if not self.drawn or now - self.last >= _BAR_EVERY_S or (self.total and done >= self.total):
                self.last, self.drawn = now, True
                frac = min(1.0, done / self.total) if self.total else None
                bar = f"[{'#' * int(30 * frac)}{'.' * (30 - int(30 * frac))}] " if frac is not None else ""
                sys.stderr.write(f"\r{bar}{self.text(done, extra)} ")
                sys.stderr.flush()
        elif now - self.last >= LINE_EVERY_S:
            self.last = now
            print(self.text(done, extra), flush=True)

    def finish(self) -> None:
        if self.bar and self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
