"""`python -m hpcrnn.evaluate` (hpcrnn/evaluate/command.py; ``--complete`` generates, so the entry point is
served by hpcrnn/generate/complete.py, which sits above both)."""

import sys

from hpcrnn.generate.complete import main

if __name__ == "__main__":
    sys.exit(main())
