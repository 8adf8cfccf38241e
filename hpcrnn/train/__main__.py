"""`python -m hpcrnn.train CONFIG [key=value ...]`: train or resume the run (hpcrnn/train/loop.py)."""

from hpcrnn.process import reexec_with_tuned_heap

# Before anything else: a re-execution resets signal handlers, so it must come before the flag below.
reexec_with_tuned_heap()

from hpcrnn.train.stopflag import FLAG  # noqa: E402

# Catch stop signals from the first moment: a SIGUSR2 or SIGTERM that arrives during the seconds of the
# torch import below still ends in a checkpoint, because the handler only sets this flag.
FLAG.install()

import sys  # noqa: E402

from hpcrnn.train.loop import main  # noqa: E402

sys.exit(main())
