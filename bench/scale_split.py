"""Split files for the scale experiment of docs/results.md: recipes-5k's own validation and test recipes (the
split preprocess makes: data.split [0.9, 0.05, 0.05], data.seed 0), and every recipe of recipes-all whose
title is not one of theirs as training text, so a run on the whole corpus is tested on exactly the recipes
a recipes-5k run is tested on, none of which it trained on.

    python bench/scale_split.py OUT_DIR   # writes OUT_DIR/{train,val,test}.txt
"""

from __future__ import annotations

import lzma
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hpcrnn.data.build import _assign_splits  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "recipes"


def documents(raw: bytes) -> list[bytes]:
    starts = [m.start() for m in re.finditer(rb"(?m)^Title:", raw)]
    return [raw[a:b].strip(b"\r\n") for a, b in zip(starts, starts[1:] + [len(raw)])]


def title(doc: bytes) -> bytes:
    return doc.split(b"\n", 1)[0].strip().lower()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    five = documents((DATA / "recipes-5k.txt").read_bytes())
    split = _assign_splits(len(five), [0.9, 0.05, 0.05], 0)
    held: set[bytes] = set()
    for name, k in (("val", 1), ("test", 2)):
        mine = [d for d, s in zip(five, split) if s == k]
        held |= {title(d) for d in mine}
        (out / f"{name}.txt").write_bytes(b"\n\n".join(mine) + b"\n")
        print(f"{name}: {len(mine)} recipes of recipes-5k")
    every = documents(lzma.open(DATA / "recipes-all.txt.xz").read())
    train = [d for d in every if title(d) not in held]
    (out / "train.txt").write_bytes(b"\n\n".join(train) + b"\n")
    print(f"train: {len(train)} of {len(every)} recipes of recipes-all (those titled like a held-out one left out)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "scratch/scale"))
