"""`python -m hpcrnn.generate CONFIG|RUN_DIR [key=value ...] [--shard S --num-shards N]`."""

import sys

from hpcrnn.generate.job import main

sys.exit(main())
