"""`python -m hpcrnn.generate CONFIG|RUN_DIR [key=value ...] [--shard S --num-shards N]` (hpcrnn/generate/job.py)."""

import sys

from hpcrnn.generate.job import main

if __name__ == "__main__":
    sys.exit(main())
