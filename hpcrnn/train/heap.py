"""Moved to hpcrnn/process.py; kept so old imports work."""

from hpcrnn.process import HEAP_ENV, export_lines, heap_tuned, reexec_with_tuned_heap  # noqa: F401
