"""A sweep's runs from its command line (values, run names, expansion) and its directory's sweep.yaml."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import yaml

from hpcrnn.config import RESOLVED_NAME, Config, load_config, override_key, parse_override
from hpcrnn.errors import ConfigError, InputError
from hpcrnn.fsutil import atomic_write_text

SWEEP_FILE = "sweep.yaml"
SWEEP_SUFFIX = "-sweep"
SWEEP_LOCK_NAME = "sweep.lock.json"
# keys that say where a run lives: the sweep names and places its runs itself
_NOT_SWEPT = ("run", "paths", "data.h5_path")
_VALUE_MAX = 40  # characters of a value kept in a run name; longer ones are cut and hashed
_NAME_MAX = 200  # a run name is a directory name (255 bytes on most file systems) and a Slurm job name
_RANGE_MAX = 1000  # values one range() may give: more is a typo, not a sweep
_SHUFFLE_MAX = 100_000  # --random over lists only: combinations drawn without replacement up to this many
_CALL = re.compile(r"([A-Za-z_]\w*)\s*\((.*)\)", re.S)
_INT = re.compile(r"\s*[+-]?\d+\s*")
PLOT_NAME = "curves.png"  # hpcrnn.plot SWEEP_DIR's default figure

# ------------------------------------------------------------------------------------------ arguments


def split_values(text: str) -> list[str]:
    """``v1,v2,...`` split at commas outside brackets and quotes, each stripped (a YAML scalar or flow value)."""
    out, cur, depth, quote = [], [], 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


@dataclass(frozen=True)
class Draw:
    """A key drawn at random in each run of ``--random N``: ``uniform(a,b)`` or ``loguniform(a,b)``."""

    fn: str  # "uniform" | "loguniform"
    low: float
    high: float

    def sample(self, rng: random.Random) -> str:
        if self.fn == "loguniform":  # uniform in log space: each decade as likely as the next
            return number_text(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return number_text(rng.uniform(self.low, self.high))


def number_text(x: float | int) -> str:
    """A number as an override's text that reads back as exactly the same number: ints as they are, floats
    by repr (shortest round-trip), with a ``.0`` where YAML 1.1 would read ``1e-05`` as a string."""
    if isinstance(x, int):
        return str(x)
    text = repr(float(x))
    if "e" in text and "." not in text.partition("e")[0]:
        mantissa, _, exp = text.partition("e")
        text = f"{mantissa}.0e{exp}"
    return text


def _numbers(key: str, text: str, args: list[str]) -> list[float]:
    try:
        nums = [float(a) for a in args]
    except ValueError:
        raise ConfigError(f"sweep: {key}={text}: expected numbers, got {', '.join(args)}") from None
    if not all(math.isfinite(n) for n in nums):
        raise ConfigError(f"sweep: {key}={text}: bounds must be finite numbers")
    return nums


def _range_values(key: str, text: str, args: list[str]) -> list[str]:
    """Hydra's ``range(start, stop[, step])``: stop excluded; integers give integers; decimal steps are
    exact (``range(0,1,0.1)`` holds 0.3, not 0.30000000000000004)."""
    if len(args) not in (2, 3):
        raise ConfigError(f"sweep: {key}={text}: range takes start, stop[, step]")
    _numbers(key, text, args)
    if all(_INT.fullmatch(a) for a in args):
        start, stop, step = (int(a) for a in [*args, "1"][:3])
    else:
        start, stop, step = (Decimal(a) for a in [*args, "1"][:3])
    if step == 0:
        raise ConfigError(f"sweep: {key}={text}: the step is 0")
    n = max(0, math.ceil((stop - start) / step))
    if n == 0:
        raise ConfigError(f"sweep: {key}={text}: gives no values (stop excluded; a step of the wrong sign?)")
    if n > _RANGE_MAX:
        raise ConfigError(f"sweep: {key}={text}: gives {n} values; at most {_RANGE_MAX} a key")
    out = [start + i * step for i in range(n)]
    return [number_text(v if isinstance(v, int) else float(v)) for v in out]


def _call_values(key: str, text: str, random_search: bool) -> list[str] | Draw | None:
    """The values of a ``fn(...)`` value (``range``, ``choice``, ``uniform``, ``loguniform``); None when the
    text is no call."""
    m = _CALL.fullmatch(text)
    if not m:
        return None
    fn, inner = m.group(1), m.group(2)
    args = split_values(inner) if inner.strip() else []
    if fn == "range":
        return _range_values(key, text, args)
    if fn == "choice":  # Hydra's choice(): the list itself on a grid, drawn from under --random
        if not args or "" in args:
            raise ConfigError(f"sweep: {key}={text}: choice takes one or more values")
        return args
    if fn in ("uniform", "loguniform"):
        if len(args) != 2:
            raise ConfigError(f"sweep: {key}={text}: {fn} takes two numbers: {fn}(low, high)")
        low, high = _numbers(key, text, args)
        if not low < high or (fn == "loguniform" and low <= 0):
            need = "0 < low < high" if fn == "loguniform" else "low < high"
            raise ConfigError(f"sweep: {key}={text}: {fn} needs {need}")
        if not random_search:
            raise ConfigError(
                f"sweep: {key}={text}: {fn}() draws at random: add --random N (a list, range() or choice() "
                f"gives a grid)"
            )
        return Draw(fn, low, high)
    raise ConfigError(
        f"sweep: {key}={text}: {fn}() is not a sweep function (range, choice, uniform, loguniform); quote a "
        f"value that only looks like one: {key}=\"'{text}'\""
    )


def _parse(items: list[str], random_search: bool = False) -> tuple[list[str], dict, list[tuple[str, str]]]:
    """(plain overrides, {swept key: [value text, ...] or a Draw}, the items in order: ("plain", item) or
    ("swept", key)); Hydra's ``+key=...`` is ``key=...``, and ``~key`` (reset to the default) is plain."""
    plain: list[str] = []
    swept: dict[str, list[str] | Draw] = {}
    order: list[tuple[str, str]] = []
    for item in items:
        if "=" not in item or item.lstrip().startswith("~"):
            parse_override(item)  # the loader's one-line error for an item that is no key=value or ~key
            plain.append(item)
            order.append(("plain", item))
            continue
        key, text = override_key(item), item.partition("=")[2]
        try:  # the loader's check of the key's form; each value is parsed when its run's config is loaded
            parse_override(f"{key}=0")
        except ConfigError:
            raise ConfigError(f"override {item!r}: {key!r} is not a dotted key like train.max_steps") from None
        values = _call_values(key, text.strip(), random_search)
        if values is None:
            values = split_values(text)
            if len(values) == 1:
                plain.append(f"{key}={text}")
                order.append(("plain", plain[-1]))
                continue
        if key in swept:
            raise ConfigError(f"sweep: {key} is swept twice; list all its values once: {key}=v1,v2,...")
        if any(key == k or key.startswith(k + ".") for k in _NOT_SWEPT):
            raise ConfigError(
                f"sweep: {key} cannot be swept: the sweep names its runs ({_NOT_SWEPT[0]}.name) and places them "
                f"(paths, data.h5_path) itself; give it once for the whole sweep"
            )
        dup = sorted({v for v in values if values.count(v) > 1}) if isinstance(values, list) else []
        if dup:
            raise ConfigError(f"sweep: {key}: value {dup[0]!r} listed twice")
        swept[key] = values
        order.append(("swept", key))
    if not swept:
        raise ConfigError(
            "sweep: nothing to sweep: give at least one key=v1,v2 (a comma-separated list of values), "
            "key=range(start,stop[,step]) or, with --random N, key=uniform(a,b)"
        )
    return plain, swept, order


def parse_args(items: list[str], random_search: bool = False) -> tuple[list[str], dict]:
    """(plain overrides, {swept key: [value text, ...], or a Draw under --random}) from the command line's
    ``key=...`` items."""
    plain, swept, _ = _parse(items, random_search)
    return plain, swept


def labels(keys: list[str]) -> dict[str, str]:
    """Each key's shortest dotted tail that no other swept key ends with (``model.hidden`` -> ``hidden``)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(o != key and (o == tail or o.endswith("." + tail)) for o in keys):
                break
        out[key] = tail
    return out


def value_label(text: str) -> str:
    """A value as it may stand in a run name: itself when it holds only letters, digits and ``_ . + -``;
    otherwise (or when long or empty) its safe characters followed by a hash of the text, so two values
    never share a name and no value reaches a path, a shell line or an sbatch script as it is."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")
    if safe == text and 0 < len(text) <= _VALUE_MAX and set(text) != {"."}:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe[:_VALUE_MAX]}_{digest}" if safe else digest


def run_name(base: str, keys: list[str], values: dict[str, str]) -> str:
    lab = labels(keys)
    name = "-".join([base, *(f"{lab[k]}_{value_label(values[k])}" for k in keys)])
    if len(name) > _NAME_MAX:
        name = f"{name[: _NAME_MAX - 11]}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
    return name


# ------------------------------------------------------------------------------------------ expansion


@dataclass
class SweepRun:
    name: str
    values: dict[str, str]  # swept key -> value text as given (or as drawn)
    cfg: Config
    made_by: list[str] = field(default_factory=list)  # every override of the run, in the order given

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values.items()]


@dataclass
class Sweep:
    config: Path  # the base config file (absolute)
    name: str  # the base run.name
    dir: Path  # <paths.scratch>/<name>-sweep, which holds the runs too
    plain: list[str]  # overrides shared by every run
    keys: dict[str, list[str]]  # swept key -> value texts (under --random: the values drawn)
    runs: list[SweepRun] = field(default_factory=list)
    specs: dict[str, str] = field(default_factory=dict)  # swept key -> its value text as given
    random: dict | None = None  # --random: {"runs": N, "seed": S}

    def corpus_groups(self) -> dict[Path, list[SweepRun]]:
        """The runs that share each corpus file, in sweep order."""
        groups: dict[Path, list[SweepRun]] = {}
        for r in self.runs:
            groups.setdefault(r.cfg.h5_path, []).append(r)
        return groups


def sweep_dir_of(cfg: Config) -> Path:
    return Path(cfg.paths.scratch) / f"{cfg.run.name}{SWEEP_SUFFIX}"


def data_hash(cfg: Config) -> str:
    """A short hash of the resolved data section (its h5_path aside: that is what the hash chooses)."""
    data = {k: v for k, v in cfg.to_dict()["data"].items() if k != "h5_path"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def grid(swept: dict[str, list[str]]) -> list[dict[str, str]]:
    """The product of the lists, in the order given."""
    return [dict(zip(swept, combo)) for combo in itertools.product(*swept.values())]


def draw(swept: dict, n: int, seed: int = 0) -> list[dict[str, str]]:
    """``--random N``: N distinct runs, each key drawn independently (a list as a choice); the same
    arguments give the same runs, and a larger N the same first runs (``random.Random(seed)``, in order)."""
    if n < 1:
        raise ConfigError(f"sweep: --random {n}: give the number of runs to draw (1 or more)")
    rng = random.Random(seed)
    if all(isinstance(v, list) for v in swept.values()):
        space = math.prod(len(v) for v in swept.values())
        if n > space:
            raise ConfigError(
                f"sweep: --random {n}: the lists give only {space} distinct runs; ask for at most {space} "
                f"(or leave out --random for all of them)"
            )
        if space <= _SHUFFLE_MAX:  # without replacement
            combos = grid(swept)
            rng.shuffle(combos)
            return combos[:n]
    out: list[dict[str, str]] = []
    seen: set[tuple] = set()
    for _ in range(n):
        for _try in range(1000):  # an equal draw again would be the same run twice
            values = {k: v.sample(rng) if isinstance(v, Draw) else rng.choice(v) for k, v in swept.items()}
            if tuple(values.values()) not in seen:
                break
        else:
            raise ConfigError(f"sweep: --random {n}: cannot draw {n} distinct runs from these values")
        seen.add(tuple(values.values()))
        out.append(values)
    return out


def _check_free(name: str, sweep_dir: Path) -> None:
    """A run's directory is beside the sweep's own files: its name must be none of theirs."""
    if (
        name in (SWEEP_FILE, PLOT_NAME)
        or name.startswith((SWEEP_FILE + ".", SWEEP_LOCK_NAME))
        or re.fullmatch(r"corpus-[0-9a-f]{12}\.h5(\..*)?", name)
    ):
        raise ConfigError(
            f"sweep: run name {name!r} is the name of the sweep's own file {sweep_dir / name}; give the sweep "
            f"another run.name=..."
        )


def _earlier_run_dirs(sweep_dir: Path) -> dict[str, Path]:
    """Runs an earlier launch placed outside the sweep directory (``<paths.scratch>/<run>/``, before runs
    lived in it), so launching that sweep again continues them where they are."""
    try:
        runs = read_sweep_file(sweep_dir)["runs"] if (sweep_dir / SWEEP_FILE).is_file() else []
    except InputError:
        return {}
    out = {}
    for r in runs:
        d = Path(str(r.get("run_dir") or ""))
        if d.is_absolute() and d.parent != sweep_dir and (d / RESOLVED_NAME).is_file():
            out[r["name"]] = d
    return out


def expand(config: str | Path, items: list[str], random_runs: int | None = None, seed: int = 0) -> Sweep:
    """Every run of the sweep (the grid of the lists, or ``random_runs`` draws), each config loaded and
    validated by the one loader (an unknown key or a bad value is its one-line error), in
    ``<sweep dir>/<run>/``, with the corpus it shares. Nothing is written."""
    plain, swept, order = _parse(items, random_runs is not None)
    path = Path(config).absolute()
    base = load_config(path, plain)
    sw = Sweep(path, base.run.name, sweep_dir_of(base).absolute(), plain, {})
    sw.specs = {key: item.partition("=")[2].strip() for item in items if (key := override_key(item)) in swept}
    if random_runs is not None:
        sw.random = {"runs": random_runs, "seed": seed}
    combos = grid(swept) if random_runs is None else draw(swept, random_runs, seed)
    sw.keys = {k: list(dict.fromkeys(c[k] for c in combos)) for k in swept}
    earlier = _earlier_run_dirs(sw.dir)
    names: dict[str, dict[str, str]] = {}
    for values in combos:
        name = run_name(base.run.name, list(swept), values)
        if name in names:  # cannot happen with value_label's hash; a guard against a future change
            raise ConfigError(f"sweep: {values} and {names[name]} give the same run name {name}")
        _check_free(name, sw.dir)
        names[name] = values
        cfg = load_config(path, [*plain, *(f"{k}={v}" for k, v in values.items()), f"run.name={name}"])
        cfg.paths.scratch = str(earlier[name].parent if name in earlier else sw.dir)  # the run lives in the sweep
        made_by = [f"{t}={values[t]}" if kind == "swept" else t for kind, t in order]
        sw.runs.append(SweepRun(name, values, cfg, made_by))
    hashes = {r.name: data_hash(r.cfg) for r in sw.runs}
    if base.data.h5_path:
        if len(set(hashes.values())) > 1:
            raise ConfigError(
                f"{base.source}: data.h5_path: {base.data.h5_path} is one file, but the sweep's runs differ in "
                f"their data settings; leave data.h5_path unset: the sweep gives each distinct data section "
                f"its own corpus in {sw.dir}"
            )
    else:
        for r in sw.runs:
            r.cfg.data.h5_path = str(sw.dir / f"corpus-{hashes[r.name]}.h5")
    return sw


# ------------------------------------------------------------------------------------------ sweep.yaml


def read_sweep_file(sweep_dir: Path) -> dict:
    p = Path(sweep_dir) / SWEEP_FILE
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{p}: invalid YAML: {str(e).splitlines()[0]}") from None
    ok = (
        isinstance(raw, dict)
        and isinstance(raw.get("keys"), dict)
        and isinstance(raw.get("runs"), list)
        and all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in raw["runs"])
    )
    if not ok:
        raise InputError(f"{p}: not a sweep file (expected config, keys and a list of runs with names)")
    return raw


def write_sweep_file(sw: Sweep) -> Path:
    """sweep.yaml: this sweep's runs added to those of earlier launches into the same directory (a run
    launched again is updated in place), so status shows every run the directory's corpora serve."""
    p = sw.dir / SWEEP_FILE
    old = read_sweep_file(sw.dir) if p.is_file() else {"keys": {}, "runs": []}
    keys = {str(k): [str(v) for v in (vs or [])] for k, vs in old["keys"].items()}
    for k, vs in sw.keys.items():
        keys[k] = list(dict.fromkeys([*keys.get(k, []), *vs]))
    runs = {r["name"]: r for r in old["runs"]}
    for r in sw.runs:
        runs[r.name] = {
            "name": r.name,
            "values": dict(r.values),
            "run_dir": str(r.cfg.run_dir),
            "corpus": str(r.cfg.h5_path),
        }
    data = {
        "config": str(sw.config),
        "name": sw.name,
        "overrides": list(sw.plain),
        "keys": keys,
        "specs": {**(old["specs"] if isinstance(old.get("specs"), dict) else {}), **sw.specs},
        **({"random": sw.random} if sw.random else {}),
        "runs": list(runs.values()),
        "updated": time.time(),
    }
    sw.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return p


def check_sweep_dir(sw: Sweep) -> None:
    """The directory is this sweep's: not a run's, and not another config's sweep under the same name."""
    if (sw.dir / RESOLVED_NAME).is_file() and not (sw.dir / SWEEP_FILE).is_file():
        raise ConfigError(f"{sw.dir}: is a run directory, not a sweep's; give the sweep another run.name=...")
    if (sw.dir / SWEEP_FILE).is_file():
        prior = read_sweep_file(sw.dir).get("config")
        if prior and os.path.realpath(prior) != os.path.realpath(sw.config):  # one file, however named
            raise ConfigError(
                f"{sw.dir}: holds a sweep of {prior}, not of {sw.config}; give this one another run.name=..."
            )
