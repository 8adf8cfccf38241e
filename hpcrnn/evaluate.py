"""`python -m hpcrnn.evaluate CONFIG|RUN_DIR [--checkpoint STEP] [--text FILE ...] [--json]`
(hpcrnn/train/evaluate.py)."""

import sys

from hpcrnn.train.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
