"""Moved to hpcrnn/model/pointer.py; kept so old imports work."""

from hpcrnn.model.pointer import Pointer  # noqa: F401
