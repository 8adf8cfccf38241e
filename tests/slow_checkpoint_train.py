"""`python tests/slow_checkpoint_train.py SECONDS CONFIG [key=value ...]`: `python -m hpcrnn.train` with a
pause of SECONDS after each file of a checkpoint is written, widening the window in which a fault test's
kill or signal lands mid-write."""

import sys

from hpcrnn.train.stopflag import FLAG

FLAG.install()  # as hpcrnn/train/__main__.py: before the slow imports

import time  # noqa: E402

from hpcrnn.train import checkpoint  # noqa: E402
from hpcrnn.train.loop import main  # noqa: E402

pause = float(sys.argv.pop(1))
checkpoint.after_file_written = lambda _path: time.sleep(pause)
sys.exit(main())
