"""A sweep's runs from its command line (values, run names, expansion) and its directory's sweep.yaml."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import time
from dataclasses import dataclass, field
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


def parse_args(items: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(plain overrides, {swept key: [value text, ...]}) from the command line's ``key=...`` items; Hydra's
    ``+key=...`` is ``key=...``, and ``~key`` (reset to the default) is a plain override."""
    plain: list[str] = []
    swept: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item or item.lstrip().startswith("~"):
            parse_override(item)  # the loader's one-line error for an item that is no key=value or ~key
            plain.append(item)
            continue
        key, text = override_key(item), item.partition("=")[2]
        try:  # the loader's check of the key's form; each value is parsed when its run's config is loaded
            parse_override(f"{key}=0")
        except ConfigError:
            raise ConfigError(f"override {item!r}: {key!r} is not a dotted key like train.max_steps") from None
        values = split_values(text)
        if len(values) == 1:
            plain.append(f"{key}={text}")
            continue
        if key in swept:
            raise ConfigError(f"sweep: {key} is swept twice; list all its values once: {key}=v1,v2,...")
        if any(key == k or key.startswith(k + ".") for k in _NOT_SWEPT):
            raise ConfigError(
                f"sweep: {key} cannot be swept: the sweep names its runs ({_NOT_SWEPT[0]}.name) and places them "
                f"(paths, data.h5_path) itself; give it once for the whole sweep"
            )
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise ConfigError(f"sweep: {key}: value {dup[0]!r} listed twice")
        swept[key] = values
    if not swept:
        raise ConfigError("sweep: nothing to sweep: give at least one key=v1,v2 (a comma-separated list of values)")
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
    values: dict[str, str]  # swept key -> value text as given
    cfg: Config

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values.items()]


@dataclass
class Sweep:
    config: Path  # the base config file (absolute)
    name: str  # the base run.name
    dir: Path  # <paths.scratch>/<name>-sweep
    plain: list[str]  # overrides shared by every run
    keys: dict[str, list[str]]  # swept key -> value texts
    runs: list[SweepRun] = field(default_factory=list)

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


def expand(config: str | Path, items: list[str]) -> Sweep:
    """Every run of the sweep, each config loaded and validated by the one loader (an unknown key or a bad
    value is its one-line error), with the corpus it shares. Nothing is written."""
    plain, swept = parse_args(items)
    path = Path(config).absolute()
    base = load_config(path, plain)
    sw = Sweep(path, base.run.name, sweep_dir_of(base).absolute(), plain, swept)
    names: dict[str, dict[str, str]] = {}
    for combo in itertools.product(*swept.values()):
        values = dict(zip(swept, combo))
        name = run_name(base.run.name, list(swept), values)
        if name in names:  # cannot happen with value_label's hash; a guard against a future change
            raise ConfigError(f"sweep: {values} and {names[name]} give the same run name {name}")
        names[name] = values
        cfg = load_config(path, [*plain, *(f"{k}={v}" for k, v in values.items()), f"run.name={name}"])
        sw.runs.append(SweepRun(name, values, cfg))
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
