"""`python -m hpcrnn.status CONFIG|RUN_DIR [--json]` (hpcrnn/cluster/status.py)."""

import sys

from hpcrnn.cluster.status import main

if __name__ == "__main__":
    sys.exit(main())
