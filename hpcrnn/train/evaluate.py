"""Moved to hpcrnn/evaluate/ (metrics.py: the scoring; command.py: the command); kept so old imports work."""

from hpcrnn.evaluate.command import format_evaluation, main, run_evaluate  # noqa: F401
from hpcrnn.evaluate.metrics import *  # noqa: F403
from hpcrnn.evaluate.metrics import (  # noqa: F401
    PROTOCOLS,
    Scoring,
    Sums,
    evaluate_documents,
    evaluate_split,
    evaluate_stream,
    evaluate_windows,
    mode_protocol,
    score_file,
    window_starts,
)
from hpcrnn.evaluate.metrics import score_file as _score_file  # noqa: F401
