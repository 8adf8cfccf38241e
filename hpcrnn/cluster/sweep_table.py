"""A sweep's status table: each run's state and figures as rows, sorted, as text, JSON or CSV (hpcrnn.status)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcrnn.cli import EPILOG, guarded
from hpcrnn.cluster.run_status import collect_status
from hpcrnn.cluster.sweep_dir import SWEEP_FILE, SWEEP_SUFFIX, labels, read_sweep_file
from hpcrnn.config import RESOLVED_NAME, load_config
from hpcrnn.errors import EXIT_OK, ConfigError, HpcrnnError
from hpcrnn.fsutil import read_jsonl
from hpcrnn.run.generated import SUMMARY, output_dir, read_json

FIXED_COLUMNS = ("state", "step", "val_ppl", "protocol", "test_ppl", "test_acc_pct", "coherence")
_NUMERIC = ("step", "val_ppl", "test_ppl", "test_acc_pct", "coherence")  # right-aligned in the text table
# why a cell is empty, the text table's last line (JSON and CSV leave it null or empty)
LEGEND = (
    "-: no value yet (val_ppl: not validated yet; test_ppl, test_acc_pct: no final test evaluation yet; "
    "coherence: not generated, or no recipe names an ingredient; step: not trained yet)"
)


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _figures(s: dict, metrics: list[dict]) -> dict[str, Any]:
    """val_ppl and its protocol exactly as the run's own status shows them (``collect_status``'s figure),
    and the final test evaluation in that same protocol (status' ``final``), accuracy as a percentage."""
    val = s.get("val_ppl") or {}
    protocol = val.get("protocol") or s.get("protocol")
    out: dict[str, Any] = {"val_ppl": _num(val.get("ppl")), "protocol": protocol}
    test = (s.get("final") or {}).get("test")  # the final figures in the run's own protocol
    if test:
        acc = _num(test.get("acc"))
        out["test_ppl"], out["test_acc_pct"] = _num(test.get("ppl")), None if acc is None else 100 * acc
    return out


def run_row(entry: dict, keys: list[str]) -> dict[str, Any]:
    """One run's row: its swept values and, from its directory, state, step, the validation perplexity its
    status shows (and that figure's protocol), the final test perplexity and accuracy (%) in that protocol,
    and its recipes' mean coherence."""
    row: dict[str, Any] = {"run": entry["name"]}
    values = entry.get("values") or {}
    for k in keys:
        row[k] = None if values.get(k) is None else str(values[k])
    row.update(dict.fromkeys(FIXED_COLUMNS))
    run_dir = Path(str(entry.get("run_dir") or ""))
    if not (run_dir / RESOLVED_NAME).is_file():
        row["state"] = "not launched"
        return row
    try:
        cfg = load_config(run_dir)
        s = collect_status(cfg)
    except HpcrnnError as e:
        row["state"] = f"unreadable ({str(e).splitlines()[0][:60]})"
        return row
    pending = [(st, e["state"]) for st, e in s["stages"].items() if e["state"] != "done"]
    row["state"] = "done" if not pending else f"{pending[0][0]} {pending[0][1]}"
    metrics = read_jsonl(cfg.metrics_path)
    steps = [r["step"] for r in metrics if isinstance(r.get("step"), int) and r.get("split")]
    ckpt = (s.get("checkpoint") or {}).get("step")
    row["step"] = max(steps + ([ckpt] if isinstance(ckpt, int) else []), default=None)
    row.update(_figures(s, metrics))
    summary = read_json(output_dir(cfg) / SUMMARY) or {}
    gen = summary.get("generated") if isinstance(summary, dict) else None
    row["coherence"] = _num(gen.get("coherence_mean")) if isinstance(gen, dict) else None
    row["run_dir"] = str(run_dir)
    return row


def sweep_status(sweep_dir: Path) -> dict:
    """The table of a sweep directory, as a dict (the --json output)."""
    sweep_dir = Path(sweep_dir).absolute()
    raw = read_sweep_file(sweep_dir)
    keys = [str(k) for k in raw["keys"]]
    rows = [run_row(e, keys) for e in raw["runs"]]
    return {
        "sweep_dir": str(sweep_dir),
        "config": raw.get("config"),
        "keys": {str(k): [str(v) for v in vs or []] for k, vs in raw["keys"].items()},
        "columns": ["run", *keys, *FIXED_COLUMNS],
        "runs": rows,
    }


def _sort_key_of(rows: list[dict], col: str) -> Callable[[dict], tuple]:
    """Numeric where every present value of the column is a number (swept values are text: "0.001"),
    else text; missing values last whichever the direction."""

    def as_float(v: Any) -> float | None:
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    present = [r.get(col) for r in rows if r.get(col) is not None]
    numeric = bool(present) and all(as_float(v) is not None for v in present)
    return lambda r: (0, as_float(r[col]) if numeric else str(r[col])) if r.get(col) is not None else None


def sort_rows(table: dict, column: str | None, desc: bool = False) -> None:
    if not column:
        return
    cols = table["columns"]
    lab = labels([c for c in cols if c not in ("run", *FIXED_COLUMNS)])
    col = column if column in cols else next((k for k, v in lab.items() if v == column), None)
    if col is None:
        raise ConfigError(f"--sort: no column {column!r}; columns: {', '.join(cols)}")
    key = _sort_key_of(table["runs"], col)
    have = [r for r in table["runs"] if key(r) is not None]
    missing = [r for r in table["runs"] if key(r) is None]
    table["runs"] = sorted(have, key=key, reverse=desc) + missing
    table["sorted_by"] = {"column": col, "descending": desc}


def _cell(col: str, v: Any) -> str:
    if v is None:
        return "-"
    if col in ("val_ppl", "test_ppl"):
        return f"{v:.2f}"  # as the run's status prints it
    if col == "test_acc_pct":
        return f"{v:.1f}%"
    if col == "coherence":
        return f"{v:.3f}"
    return str(v)


def format_table(table: dict) -> str:
    cols = table["columns"]
    cells = [cols] + [[_cell(c, r.get(c)) for c in cols] for r in table["runs"]]
    width = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = [
        f"sweep {table['sweep_dir']} ({len(table['runs'])} runs of {table['config']}); val_ppl as each run's "
        f"status shows it, test_ppl and test_acc_pct in that figure's protocol"
    ]
    for row in cells:
        lines.append(
            "  ".join(
                c.rjust(w) if cols[i] in _NUMERIC else c.ljust(w) for i, (c, w) in enumerate(zip(row, width))
            ).rstrip()
        )
    lines.append(LEGEND)
    return "\n".join(lines)


def print_configs(raw: dict) -> None:
    """Each launched run's resolved config, as ``hpcrnn.plot --print-config`` prints several: YAML documents,
    each headed by ``# run NAME: PATH`` and ended by ``---``; a run not launched yet is named on stderr.
    Only the runs' config.yaml files are read (``raw``: the sweep's sweep.yaml)."""
    for r in raw["runs"]:
        run_dir = Path(str(r.get("run_dir") or ""))
        if not (run_dir / RESOLVED_NAME).is_file():
            print(f"hpcrnn.status: run {r['name']}: not launched yet (no {run_dir / RESOLVED_NAME})", file=sys.stderr)
            continue
        sys.stdout.write(f"# run {r['name']}: {run_dir}\n{load_config(run_dir).to_yaml()}---\n")


def format_csv(table: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table["columns"])
    for r in table["runs"]:
        w.writerow(["" if r.get(c) is None else r[c] for c in table["columns"]])
    return buf.getvalue()


def is_sweep_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / SWEEP_FILE).is_file()


def status_target(argv: list[str]) -> str | None:
    """The sweep directory a ``hpcrnn.status`` command line names (its first positional), or None."""
    rest = iter(argv)
    for a in rest:
        if a in _VALUED:  # its value is the next word, not a positional: `--sort lr SWEEP_DIR`
            next(rest, None)
        elif not a.startswith("-"):
            return a if is_sweep_dir(a) else None
    return None


_VALUED = ("--sort",)  # status_main's options that take a value


# the other usage of hpcrnn.status, named in the sweep table's --help (its options: hpcrnn.status --help)
RUN_USAGE = "hpcrnn.status CONFIG|RUN_DIR [key=value ...] [options]: where one run stands (hpcrnn.status --help)"


def _status_parser(add_help: bool = True, epilog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hpcrnn.status",
        usage="%(prog)s SWEEP_DIR [--sort COLUMN] [--desc] [--json | --csv | --print-config] [--debug]",
        description="The table of a sweep: each run, its swept values, state, step, validation perplexity (as\n"
        "the run's status shows it) and its protocol, test perplexity and accuracy (%) in that protocol, and\n"
        "its recipes' mean coherence. Options go before or after SWEEP_DIR.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help,
    )
    p.add_argument(
        "sweep_dir", help=f"a sweep directory (<paths.scratch>/<run.name>{SWEEP_SUFFIX}, holding {SWEEP_FILE})"
    )
    p.add_argument("--sort", metavar="COLUMN", help="sort by this column (a swept key may be given by its label)")
    p.add_argument("--desc", action="store_true", help="sort in descending order (missing values stay last)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the table as JSON")
    fmt.add_argument("--csv", action="store_true", help="print the table as CSV")
    fmt.add_argument(
        "--print-config",
        action="store_true",
        help="print each run's resolved config (one YAML document a run, headed by '# run NAME: PATH') and exit",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def sweep_help() -> str:
    """The sweep table's usage and options for the --help of a run's status: one command, both usages."""
    text = _status_parser(add_help=False).format_help().strip()
    return "a sweep directory instead gives the sweep's table:\n" + "\n".join(
        f"  {line}" if line else line for line in text.splitlines()
    )


def status_main(argv: list[str] | None = None) -> int:
    """``python -m hpcrnn.status SWEEP_DIR [--sort COLUMN] [--desc] [--json | --csv | --print-config]``."""
    args = _status_parser(epilog=f"or: {RUN_USAGE}\n\n{EPILOG}").parse_args(argv)

    def body() -> int:
        if args.print_config:  # the runs' config.yaml only: no status, no Slurm
            print_configs(read_sweep_file(Path(args.sweep_dir).absolute()))
            return EXIT_OK
        table = sweep_status(Path(args.sweep_dir))
        sort_rows(table, args.sort, args.desc)
        if args.json:
            print(json.dumps(table, indent=2))
        elif args.csv:
            sys.stdout.write(format_csv(table))
        else:
            print(format_table(table))
        return EXIT_OK

    return guarded("hpcrnn.status", args.debug, body)
