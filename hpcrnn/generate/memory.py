"""Moved to hpcrnn/process.py; kept so old imports work."""

from hpcrnn.process import keep_freed_memory  # noqa: F401
