"""Which runs train on a shared corpus file (``data.h5_path``, e.g. a sweep's ``corpus-<hash>.h5``), so that
preprocess never replaces a corpus that any run's complete checkpoints were trained on, not only its own."""

from __future__ import annotations

import os
from pathlib import Path

from hpcrnn.run.checkpoints import list_complete


def users_file(h5_path: Path) -> Path:
    return Path(f"{h5_path}.runs")


def register(h5_path: Path, run_dir: Path) -> None:
    """Record that the run at ``run_dir`` trains on ``h5_path`` (one line per run; appends are atomic for
    lines this short, so trainers of a sweep may register at once). A run's own corpus.h5 needs no record."""
    run_dir = Path(run_dir).absolute()
    if Path(h5_path).absolute() == run_dir / "corpus.h5" or str(run_dir) in registered(h5_path):
        return
    fd = os.open(users_file(h5_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (str(run_dir) + "\n").encode())
    finally:
        os.close(fd)


def registered(h5_path: Path) -> list[str]:
    try:
        lines = users_file(h5_path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def trained_on(h5_path: Path, fingerprint: str | None) -> list[Path]:
    """The newest complete checkpoint of every registered run trained on this build of the file (its
    fingerprint; a checkpoint that records none counts, to be safe)."""
    found = []
    for run in registered(h5_path):
        done = list_complete(Path(run) / "checkpoints", warn=False)
        mine = [c for c in done if c.meta.get("corpus_fingerprint") in (None, "", fingerprint)]
        if mine:
            found.append(mine[-1].path)
    return found
