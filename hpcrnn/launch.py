"""`python -m hpcrnn.launch CONFIG [key=value ...] [--cluster ...] [--stages ...]` (hpcrnn/cluster/launch.py)."""

import sys

from hpcrnn.cluster.launch import main

if __name__ == "__main__":
    sys.exit(main())
