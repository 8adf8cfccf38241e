"""`python -m hpcrnn.preprocess CONFIG [key=value ...]`: corpus text -> <run dir>/corpus.h5.

The first job of every pipeline. Running it again with the same inputs and settings does nothing and
says so; a changed input file or data.* setting rebuilds. See hpcrnn/data/corpus.py for the file layout.
"""

from __future__ import annotations

import sys

from hpcrnn.cli import main_for
from hpcrnn.config import save_resolved
from hpcrnn.data.build import PreprocessResult, run_preprocess

__all__ = ["main", "run_preprocess", "PreprocessResult"]


def _run(cfg, args) -> PreprocessResult:
    result = run_preprocess(cfg)
    save_resolved(cfg)  # only now: a refused or failed preprocess leaves the run's config.yaml as it was
    return result


def main(argv: list[str] | None = None) -> int:
    return main_for(
        "python -m hpcrnn.preprocess",
        "Tokenize a text corpus into one HDF5 file of token windows (the first pipeline job).",
        _run,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
