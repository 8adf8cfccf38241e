"""`python -m hpcrnn.sweep CONFIG key=v1,v2|key=range(a,b) [key=...] [--random N [--seed S]]
[--cluster auto|slurm|local|debug]` (hpcrnn/cluster/sweep.py)."""

import sys

from hpcrnn.cluster.sweep import main

if __name__ == "__main__":
    sys.exit(main())
