"""`python -m hpcrnn.plot RUN_DIR|CONFIG|SWEEP_DIR [...] [-o FILE]`: training curves of runs as one PNG.

Loss, perplexity and top-1 accuracy against step and against training wall time, one colour a run: train
dashed, validation solid with filled markers, an estimate on a subset of the validation split dotted with
hollow markers, the final test figure a star at the last step. A sweep directory stands for every run of
its ``sweep.yaml``. Read from each run's ``metrics.jsonl`` (the source of truth, also while the run is still
writing it); validation in the run's own protocol, the records status and the sweep table read.
matplotlib is an optional extra (``pip install -e '.[plot]'``); without it this is a one-line error, and
nothing else imports this module.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hpcrnn.cli import guarded
from hpcrnn.cluster.sweep_dir import read_sweep_file
from hpcrnn.cluster.sweep_table import is_sweep_dir
from hpcrnn.config import RESOLVED_NAME, Config, load_config
from hpcrnn.errors import EXIT_OK, ConfigError, HpcrnnError, StorageError
from hpcrnn.fsutil import read_jsonl
from hpcrnn.run.figures import is_estimate, latest_validation, own_protocol

METRICS = (("loss", "loss (nats/token)"), ("ppl", "perplexity"), ("acc", "top-1 accuracy"))
GAP_S = 1800  # a longer pause between two records is a requeue's wait in the queue, not training time
# the wall-time axis' unit: the first whose limit the longest run stays under
TIME_UNITS = (("s", 1.0, 120.0), ("min", 60.0, 2 * 3600.0), ("h", 3600.0, math.inf))
# mantissas of perplexity ticks on the log axis, sparsest first: the densest with at most 6 ticks is used
_MANTISSAS = ((1,), (1, 3), (1, 2, 5), (1, 2, 3, 5), (1, 2, 3, 4, 5, 6, 8), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))
ANNOTATE_UP_TO = 6  # runs whose test figures are written beside their stars; more would cover each other
TITLE_WIDTH = 110  # characters of a title line: wider would widen the figure past its panels
GREY = "0.35"  # the style key's colour (train, validation, estimate, test), apart from every run's


@dataclass
class RunCurves:
    """One run's records to draw, each with ``wall_s`` (training seconds since its first record); its
    validations in its own protocol, each with ``estimate`` (measured on part of the split only)."""

    name: str
    run_dir: Path
    config: str  # the config file the run was read from
    protocol: str | None  # its own validation protocol
    summary: str  # the network in a few words ("LSTM 1x256, stream")
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    test: dict | None = None  # the final test figures in its own protocol
    latest: dict | None = None  # its validation figure as status and the sweep table show it

    @property
    def seconds(self) -> float:
        recs = self.train + self.val + ([self.test] if self.test else [])
        return max((r["wall_s"] for r in recs), default=0.0)

    @property
    def label(self) -> str:
        """The run's legend entry: its figures as status shows them (perplexity to two decimals)."""
        figs = []
        if self.latest:
            figs.append(f"val ppl {self.latest['ppl']:.2f}" + (" (estimate)" if self.latest["estimate"] else ""))
        if self.test and _finite(self.test.get("ppl")):
            figs.append(f"test ppl {self.test['ppl']:.2f}")
        return f"{self.name}: {', '.join(figs)} ({self.protocol} protocol)" if figs else self.name


@dataclass
class Drawing:
    """What the command line names: the runs to draw, the title, where the PNG goes by default, and the
    runs of a sweep that have no metrics yet (named on stderr, not drawn)."""

    runs: list[RunCurves]
    title: str
    out: Path
    waiting: list[str] = field(default_factory=list)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_estimate(rec: dict, cfg: Config) -> bool:
    """Whether a validation record measured part of the split only: as the record says (``estimate``, the
    rule status uses); a record written before training said so is one where it is a periodic validation by
    windows (the protocol ``train.eval_batches`` stops early) with ``train.eval_batches`` set."""
    if "estimate" in rec or rec.get("final"):
        return is_estimate(rec)
    return rec.get("protocol", "windows") == "windows" and cfg.train.eval_batches > 0


def _describe(cfg: Config) -> str:
    m = cfg.model
    pointer = f", pointer {m.pointer}" + (f" (key {m.pointer_key})" if m.pointer_key else "") if m.pointer else ""
    return f"{m.cell.upper()} {m.layers}x{m.hidden}{pointer}, {cfg.data.sequences}"


def _shown(path: str | Path) -> str:
    """A path as short as it stays clear: relative to the current directory where it lies below it."""
    p = Path(path)
    try:
        return str(p.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def curves_of(cfg: Config, arg: str) -> RunCurves:
    """The curves of a loaded run; ConfigError naming ``arg`` when it has no records to draw yet."""
    path = Path(cfg.metrics_path)
    if not path.is_file():
        raise ConfigError(f"{arg}: no metrics.jsonl at {path} (has the run trained yet?)")
    records = [r for r in read_jsonl(path) if r.get("split") in ("train", "val", "test") and "step" in r]
    records = [r for r in records if _finite(r.get("time"))]
    own = own_protocol(records)
    run = RunCurves(cfg.run.name, cfg.run_dir, _shown(cfg.source or cfg.run_dir), own, _describe(cfg))
    elapsed, last = 0.0, None
    for r in records:
        if last is not None:
            gap = r["time"] - last
            elapsed += gap if 0 <= gap < GAP_S else 0.0
        last = r["time"]
        rec = {**r, "wall_s": elapsed}
        if r["split"] == "train":
            run.train.append(rec)
        elif r.get("protocol") != own:
            continue  # the final figures by the standard protocol, when the run's own is another
        elif r["split"] == "val":
            run.val.append({**rec, "estimate": _is_estimate(r, cfg)})
        elif r.get("final"):
            run.test = rec
    run.latest = latest_validation(records)
    if not run.train and not run.val:
        raise ConfigError(f"{arg}: {path} holds no train or validation records yet")
    return run


def run_curves(arg: str) -> RunCurves:
    """The curves of a run directory or config."""
    return curves_of(load_config(arg), arg)


def sweep_curves(sweep_dir: Path) -> tuple[dict, list[RunCurves], list[str]]:
    """(sweep.yaml, the curves of its runs that have metrics, the names of those that have none yet). A run
    is found where ``runs[].run_dir`` says, wherever that is."""
    raw = read_sweep_file(sweep_dir)
    runs, waiting = [], []
    for entry in raw["runs"]:
        run_dir = Path(str(entry.get("run_dir") or ""))
        if not entry.get("run_dir") or not (run_dir / RESOLVED_NAME).is_file():
            waiting.append(f"{entry['name']} (not launched)")
            continue
        try:
            cfg = load_config(run_dir)
        except HpcrnnError as e:  # the others are still worth drawing
            waiting.append(f"{entry['name']} (unreadable: {str(e).splitlines()[0]})")
            continue
        try:
            runs.append(curves_of(cfg, str(run_dir)))
        except ConfigError:
            waiting.append(entry["name"])
    return raw, runs, waiting


def _names(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{len(names)} runs"


def title_of(runs: list[RunCurves], sweeps: list[tuple[Path, dict]]) -> str:
    """Two lines: who (the run, up to four names, the sweep) and from which config (the network's
    description for a single run, the swept keys for a sweep)."""
    if len(sweeps) == 1:
        path, raw = sweeps[0]
        name = str(raw.get("name") or path.name)
        keys = ", ".join(str(k) for k in raw.get("keys") or {}) or "nothing"
        who = f"{len(runs)} runs" if len(runs) > 4 else _names([r.name for r in runs])
        return f"sweep {name}: {who}\nconfig {_shown(raw.get('config') or path)}, swept {keys}"
    if len(runs) == 1:
        return f"{runs[0].name}: {runs[0].summary}\nconfig {runs[0].config}"
    configs = list(dict.fromkeys(r.config for r in runs))
    where = f"config {configs[0]}" if len(configs) == 1 else f"configs {', '.join(configs)}"
    if len(where) > TITLE_WIDTH:  # paths too long to read: the networks they describe instead
        summaries = list(dict.fromkeys(r.summary for r in runs))
        where = f"{len(configs)} configs" + (f": {'; '.join(summaries)}" if len(summaries) <= 3 else "")
    return f"{_names([r.name for r in runs])}\n{where}"


def collect(args: list[str]) -> Drawing:
    """The runs named on the command line, each sweep directory expanded to its runs in its file's order;
    a run named on its own without metrics is an error, a sweep's is left out, unless none has any."""
    runs, waiting, sweeps = [], [], []
    for arg in args:
        if is_sweep_dir(arg):
            raw, found, missing = sweep_curves(Path(arg))
            sweeps.append((Path(arg), raw))
            runs += found
            waiting += missing
        else:
            runs.append(run_curves(arg))
    if not runs:
        raise ConfigError(f"{args[0]}: no run of the sweep has metrics yet ({', '.join(waiting) or 'no runs'})")
    first = Path(args[0])
    out = first / "curves.png" if is_sweep_dir(first) else runs[0].run_dir / "curves.png"
    return Drawing(runs, title_of(runs, sweeps if len(sweeps) == len(args) else []), out, waiting)


def time_unit(longest_s: float) -> tuple[str, float]:
    """(unit, seconds in one) of the wall-time axis for runs that trained up to ``longest_s`` seconds:
    seconds under two minutes, minutes under two hours, else hours."""
    for unit, size, below in TIME_UNITS:
        if longest_s < below:
            return unit, size
    return TIME_UNITS[-1][:2]


def plain(value: float, _pos=None) -> str:
    """A tick label as people write numbers: 300, 2000, 1.5, 0.25 (no 10^k, no offset, no trailing .0)."""
    if not math.isfinite(value):
        return ""
    text = f"{round(value, 6) + 0.0:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def percent(value: float, _pos=None) -> str:
    """An accuracy (a fraction) as a tick label in percent: 25%, 27.5%."""
    return f"{plain(100 * value)}%" if math.isfinite(value) else ""


def _linear_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 10) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Ticks of a log axis from ``lo`` to ``hi`` at round numbers (100, 200, 300, 500 ...): the densest
    set of mantissas that gives at most ``most``; every n-th power of ten over more decades than that;
    evenly spaced ticks where the range is too narrow for 3 round ones."""
    if not (lo > 0 and hi > lo):
        return [lo] if lo > 0 else []
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)

    def within(mantissas: tuple) -> list[float]:
        ticks = [round(m * 10.0**k, 10) for k in decades for m in mantissas]
        return [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]

    powers = within((1,))
    if len(powers) > most:
        return powers[:: math.ceil(len(powers) / most)]
    best: list[float] = []
    for mantissas in _MANTISSAS:
        ticks = within(mantissas)
        if len(ticks) > most:
            break
        best = ticks
    return best if len(best) >= 3 else _linear_ticks(lo, hi)


def run_colours(n: int) -> list:
    """One colour a run, from qualitative maps: tab10 up to 10 runs, tab20 (and tab20b past 20) beyond."""
    import matplotlib  # noqa: PLC0415 (optional extra: imported by the drawing functions only)

    maps = ["tab10"] if n <= 10 else ["tab20", "tab20b"]
    colours = [c for m in maps for c in matplotlib.colormaps[m].colors]
    return [colours[i % len(colours)] for i in range(n)]


def _value_text(key: str, value: float) -> str:
    return f"{value:.1%}" if key == "acc" else (f"{value:.2f}" if key == "ppl" else f"{value:.3f}")


def _draw_run(ax, run: RunCurves, key: str, xkey: str, colour, annotate: bool) -> None:
    """One run on one panel: train dashed, validation solid (filled markers) or, where it is an estimate
    on a subset of the split, dotted (hollow markers), the final test figure a star. Each line's gid is
    ``<run>|<kind>`` (train, val-full, val-subset, test), for whoever inspects the figure."""

    def pts(recs: list[dict]) -> tuple[list, list]:
        keep = [r for r in recs if _finite(r.get(key))]
        return [r[xkey] for r in keep], [r[key] for r in keep]

    ax.plot(*pts(run.train), color=colour, ls="--", lw=0.9, alpha=0.7, gid=f"{run.name}|train")
    subset = [r for r in run.val if r["estimate"]]
    full = [r for r in run.val if not r["estimate"]]
    if subset:
        ax.plot(*pts(subset), color=colour, ls=":", lw=1.2, marker="o", ms=4, mfc="none", gid=f"{run.name}|val-subset")
    if full:
        ax.plot(*pts(full), color=colour, ls="-", lw=1.4, marker="o", ms=4, gid=f"{run.name}|val-full")
    if run.test and _finite(run.test.get(key)):
        x, y = run.test[xkey], run.test[key]
        ax.plot([x], [y], ls="none", marker="*", ms=13, color=colour, mec="black", mew=0.6, gid=f"{run.name}|test")
        if annotate and key != "loss":  # perplexity and accuracy are the figures a report quotes
            text = f"test {_value_text(key, y)} ({run.protocol})"
            ax.annotate(text, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=7, color=colour)


def _style_key(runs: list[RunCurves]) -> list:
    """Legend entries, in grey, for what the line styles and markers mean."""
    from matplotlib.lines import Line2D  # noqa: PLC0415 (optional extra)

    key = [
        Line2D([], [], color=GREY, ls="--", lw=0.9, label="train (training batches)"),
        Line2D([], [], color=GREY, ls="-", marker="o", ms=4, label="validation, whole split"),
    ]
    if any(r["estimate"] for run in runs for r in run.val):
        key.append(
            Line2D([], [], color=GREY, ls=":", marker="o", ms=4, mfc="none", label="validation, estimate on a subset")
        )
    if any(run.test for run in runs):
        key.append(
            Line2D([], [], color=GREY, ls="none", marker="*", ms=11, mec="black", label="final test, whole split")
        )
    return key


def _dress(ax, key: str, label: str, xlabel: str, protocols: list[str]) -> None:
    """Axis labels (the validation protocol named), scales and plain tick labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: PLC0415

    which = f"{protocols[0]} protocol" if len(protocols) == 1 else "each run's own protocol"
    ax.set_ylabel(f"{label}\n(validation: {which})", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_formatter(FuncFormatter(plain))
    ax.grid(alpha=0.3)
    if key == "acc":
        ax.yaxis.set_major_formatter(FuncFormatter(percent))
    elif key == "ppl":
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.yaxis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
        ax.yaxis.set_major_formatter(FuncFormatter(plain))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(lo, hi)
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(plain))


def figure(runs: list[RunCurves], title: str):
    """The figure (matplotlib, not saved): 3 rows (loss, perplexity, accuracy) x 2 columns (step, wall
    time), the title on top and the legend below the panels, outside every one of them."""
    import matplotlib  # noqa: PLC0415 (optional extra, imported only when a plot is asked for)

    matplotlib.use("Agg")  # files only: a batch job or a login node has no display
    import matplotlib.pyplot as plt  # noqa: PLC0415

    unit, size = time_unit(max(r.seconds for r in runs))
    for run in runs:
        for r in [*run.train, *run.val, *([run.test] if run.test else [])]:
            r["wall"] = r["wall_s"] / size
    colours = run_colours(len(runs))
    protocols = sorted({str(r.protocol) for r in runs if r.protocol})
    fig, axes = plt.subplots(len(METRICS), 2, figsize=(12, 3.2 * len(METRICS)), squeeze=False)
    for row, (key, label) in enumerate(METRICS):
        for col, (xkey, xlabel) in enumerate((("step", "step"), ("wall", f"training wall time ({unit})"))):
            ax = axes[row][col]
            for run, colour in zip(runs, colours):
                _draw_run(ax, run, key, xkey, colour, annotate=len(runs) <= ANNOTATE_UP_TO)
            _dress(ax, key, label, xlabel, protocols)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    from matplotlib.lines import Line2D  # noqa: PLC0415 (optional extra)

    handles = [Line2D([], [], color=c, lw=2.5, label=r.label) for r, c in zip(runs, colours)] + _style_key(runs)
    ncol = 1 if len(handles) <= 6 else (2 if len(handles) <= 16 else 3)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=8, frameon=False)
    return fig


def draw(drawing: Drawing, out: Path) -> Path:
    """Write the drawing's figure to ``out`` (PNG; the legend below the panels is kept by a tight box)."""
    try:
        import matplotlib  # noqa: F401, PLC0415 (optional extra, imported only when a plot is asked for)
    except ImportError:
        raise ConfigError("matplotlib is not installed: pip install -e '.[plot]' (or pip install matplotlib)") from None
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig = figure(drawing.runs, drawing.title)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


def config_args(args: list[str]) -> list[str]:
    """The runs ``--print-config`` prints: a sweep directory stands for its launched runs (the others are
    named in one line on stderr)."""
    out, unlaunched = [], []
    for arg in args:
        if not is_sweep_dir(arg):
            out.append(arg)
            continue
        for entry in read_sweep_file(Path(arg))["runs"]:
            run_dir = Path(str(entry.get("run_dir") or ""))
            if entry.get("run_dir") and (run_dir / RESOLVED_NAME).is_file():
                out.append(str(run_dir))
            else:
                unlaunched.append(entry["name"])
    if unlaunched:
        print(f"hpcrnn.plot: not launched yet (no resolved config): {', '.join(unlaunched)}", file=sys.stderr)
    if not out:
        raise ConfigError(f"{args[0]}: no run of the sweep has been launched yet")
    return out


def print_configs(args: list[str]) -> None:
    """The resolved config of each run, as every command's ``--print-config`` prints one; several are YAML
    documents, each headed by a comment naming its run and separated by ``---`` (as the sweep's)."""
    args = config_args(args)
    cfgs = [load_config(a) for a in args]
    if len(cfgs) == 1:
        sys.stdout.write(cfgs[0].to_yaml())
        return
    for arg, cfg in zip(args, cfgs):
        sys.stdout.write(f"# run {cfg.run.name}: {arg}\n{cfg.to_yaml()}---\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hpcrnn.plot", description=__doc__.split("\n")[0])
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR|CONFIG|SWEEP_DIR",
        help="run directories, experiment configs or sweep directories (each stands for all its runs)",
    )
    p.add_argument(
        "-o", "--output", help="PNG file to write (default: curves.png in the sweep's or the first run's directory)"
    )
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
        drawing = collect(args.runs)
        if drawing.waiting:
            print(f"hpcrnn.plot: not drawn (no metrics yet): {', '.join(drawing.waiting)}", file=sys.stderr)
        out = Path(args.output) if args.output else drawing.out
        try:
            print(draw(drawing, out))
        except OSError as e:
            raise StorageError(f"{out}: cannot write: {e.strerror or e}") from None
        return EXIT_OK

    return guarded("hpcrnn.plot", args.debug, body)


if __name__ == "__main__":
    sys.exit(main())
