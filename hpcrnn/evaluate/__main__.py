"""`python -m hpcrnn.evaluate` (hpcrnn/evaluate/command.py)."""

import sys

from hpcrnn.evaluate.command import main

if __name__ == "__main__":
    sys.exit(main())
