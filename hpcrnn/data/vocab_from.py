"""``data.vocab_from``: the fixed vocabulary of a run directory (its corpus.h5), a corpus file or a model file."""

from __future__ import annotations

from pathlib import Path

from hpcrnn.config import RESOLVED_NAME, load_config
from hpcrnn.data.corpus import open_corpus
from hpcrnn.errors import InputError
from hpcrnn.model.file import _HOW, Vocabulary, is_model_file, read_model_file


def run_config_path(path: Path) -> Path | None:
    """The resolved config of a run directory, or None."""
    p = Path(path) / RESOLVED_NAME
    return p if p.is_file() else None


def load_vocabulary(path, key: str = "data.vocab_from") -> Vocabulary:
    """The vocabulary of a run directory (its corpus), a corpus file or a model file."""
    p = Path(path)
    if p.is_dir():
        cfg_path = run_config_path(p)
        h5 = load_config(cfg_path).h5_path if cfg_path else p / "corpus.h5"
        if not h5.is_file():
            raise InputError(f"{key}: {p}: a directory, but no run with a corpus (no {h5.name}: preprocess it first)")
        return Vocabulary.from_corpus(open_corpus(h5))
    if not p.exists():
        raise InputError(f"{key}: {p}: not found (a run directory or a model file)")
    if is_model_file(p):
        return read_model_file(p).vocabulary
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise InputError(f"{key}: {p}: cannot read: {e.strerror or e}") from None
    if head == b"\x89HDF\r\n\x1a\n":
        return Vocabulary.from_corpus(open_corpus(p))
    raise InputError(f"{key}: {p}: neither a run directory, a corpus file nor an hpcrnn model file ({_HOW})")
