"""`python -m hpcrnn.plot RUN_DIR|CONFIG [...] [-o FILE]`: training curves of one or more runs as one PNG.

Loss, perplexity and top-1 accuracy against step and against wall time, train (thin) beside validation
(markers), one colour a run. Read from each run's ``metrics.jsonl`` (the source of truth, also while the
run is still writing it); validation in the run's own protocol. matplotlib is an optional extra
(``pip install -e '.[plot]'``); without it this is a one-line error, and nothing else imports this module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpcrnn.cli import guarded
from hpcrnn.config import load_config
from hpcrnn.errors import EXIT_OK, ConfigError, StorageError
from hpcrnn.fsutil import read_jsonl

METRICS = (("loss", "loss (nats/token)"), ("ppl", "perplexity"), ("acc", "top-1 accuracy"))


def run_curves(arg: str) -> tuple[str, dict[str, list[dict]]]:
    """(run name, {"train": records, "val": records}) of a run directory or config; wall time in hours
    since the run's first record, counted only while it trained (gaps between jobs are left out)."""
    cfg = load_config(arg)
    path = Path(cfg.metrics_path)
    if not path.is_file():
        raise ConfigError(f"{arg}: no metrics.jsonl at {path} (has the run trained yet?)")
    records = [r for r in read_jsonl(path) if r.get("split") in ("train", "val") and "step" in r and "time" in r]
    own = {r.get("protocol") for r in records if r["split"] == "val" and r.get("protocol") != "standard"}
    curves: dict[str, list[dict]] = {"train": [], "val": []}
    elapsed, last = 0.0, None
    for r in records:
        if last is not None:
            gap = r["time"] - last
            elapsed += gap if 0 <= gap < 1800 else 0.0  # a requeue's wait is not training time
        last = r["time"]
        if r["split"] == "val" and own and r.get("protocol") == "standard":
            continue
        curves[r["split"]].append({**r, "hours": elapsed / 3600})
    if not curves["train"] and not curves["val"]:
        raise ConfigError(f"{arg}: {path} holds no train or validation records yet")
    return cfg.run.name, curves


def draw(runs: list[tuple[str, dict[str, list[dict]]]], out: Path) -> Path:
    try:
        import matplotlib  # noqa: PLC0415 (optional extra, imported only when a plot is asked for)
    except ImportError:
        raise ConfigError("matplotlib is not installed: pip install -e '.[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only: a batch job or a login node has no display
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(len(METRICS), 2, figsize=(12, 3.2 * len(METRICS)), squeeze=False)
    for i, (name, curves) in enumerate(runs):
        colour = f"C{i % 10}"
        for row, (key, label) in enumerate(METRICS):
            for col, x in enumerate(("step", "hours")):
                ax = axes[row][col]
                for split, style in (("train", {"lw": 0.8, "alpha": 0.6}), ("val", {"marker": "o", "ms": 3})):
                    pts = [(r[x], r[key]) for r in curves[split] if r.get(key) is not None]
                    if pts:
                        ax.plot(*zip(*pts), color=colour, label=f"{name} {split}", **style)
                ax.set_xlabel("step" if x == "step" else "wall time (h)")
                ax.set_ylabel(label)
                if key == "ppl":
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def print_configs(args: list[str]) -> None:
    """The resolved config of each run, as every command's ``--print-config`` prints one; several are YAML
    documents, each headed by a comment naming its run and separated by ``---`` (as the sweep's)."""
    cfgs = [load_config(a) for a in args]
    if len(cfgs) == 1:
        sys.stdout.write(cfgs[0].to_yaml())
        return
    for arg, cfg in zip(args, cfgs):
        sys.stdout.write(f"# run {cfg.run.name}: {arg}\n{cfg.to_yaml()}---\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hpcrnn.plot", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR|CONFIG", help="run directories or experiment configs")
    p.add_argument("-o", "--output", help="PNG file to write (default: curves.png in the first run's directory)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print each run's resolved config (several: one YAML document each, headed by its run) and exit",
    )
    args = p.parse_args(argv)

    def body() -> int:
        if args.print_config:  # nothing is read but the configs, nothing is drawn or written
            print_configs(args.runs)
            return EXIT_OK
        runs = [run_curves(a) for a in args.runs]
        out = Path(args.output) if args.output else Path(load_config(args.runs[0]).run_dir) / "curves.png"
        try:
            print(draw(runs, out))
        except OSError as e:
            raise StorageError(f"{out}: cannot write: {e.strerror or e}") from None
        return EXIT_OK

    return guarded("hpcrnn.plot", args.debug, body)


if __name__ == "__main__":
    sys.exit(main())
