"""Moved to hpcrnn/run/lock.py (the run directory's writer lock); kept so old imports work."""

from hpcrnn.run.lock import *  # noqa: F403
from hpcrnn.run.lock import LAUNCH_LOCK_NAME, LOCK_NAME, RunLock, process_start  # noqa: F401
