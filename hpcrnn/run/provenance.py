"""What made a run: ``overrides.yaml`` (the command line's overrides, as Hydra writes them) and
``provenance.json`` (each launch: when, from which config, with which overrides, and the git commit of the
code that ran). Written by the launcher (and the sweep) when it sets up the run directory; torch-free.

- ``overrides.yaml``: a YAML list of ``key=value`` strings, in the order given, and nothing else (Hydra's
  ``.hydra/overrides.yaml``). A launch from the run's own directory (``launch RUN_DIR k=v``) applies its
  overrides on top of the run's resolved config, so they are appended to the earlier list; a launch from a
  config file replaces it (that launch's overrides are the whole story).
- ``provenance.json``: ``{"git": {...}, "launches": [{"time", "config", "overrides", "git"}, ...]}``, one
  entry per launch (none is lost on a relaunch); ``git`` is the newest launch's: ``{"commit": SHA,
  "dirty": bool}`` of the repository holding the hpcrnn package, or null when that is no git checkout (an
  installed package) or git is missing or slow. Finding it never fails a launch.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import yaml

from hpcrnn.config import RESOLVED_NAME, Config
from hpcrnn.errors import StorageError
from hpcrnn.fsutil import atomic_write_text

OVERRIDES_NAME = "overrides.yaml"
PROVENANCE_NAME = "provenance.json"
_GIT_TIMEOUT_S = 5.0
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # hpcrnn/


def _git(args: list[str], cwd: Path) -> str | None:
    """A git command's stdout in ``cwd``, or None when git is missing, fails or takes too long."""
    # a GIT_DIR of the caller's would point git at another repository than the one holding the package
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        r = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def git_commit(package_dir: Path = _PACKAGE_DIR) -> dict | None:
    """``{"commit": SHA, "dirty": bool}`` of the checkout holding ``package_dir`` (dirty: a tracked file
    differs from the commit; untracked files do not count), or None where the package is not a tracked part
    of a git checkout (site-packages inside some other repository gives None too) or git cannot tell."""
    if _git(["ls-files", "--error-unmatch", "__init__.py"], package_dir) is None:
        return None
    out = _git(["status", "--porcelain=v2", "--branch", "--untracked-files=no"], package_dir)
    if out is None:
        return None
    lines = out.splitlines()
    commit = next((ln.split()[2] for ln in lines if ln.startswith("# branch.oid ")), None)
    if not commit or commit == "(initial)":
        return None
    return {"commit": commit, "dirty": any(not ln.startswith("#") for ln in lines if ln.strip())}


def _from_own_dir(cfg: Config) -> bool:
    """Was ``cfg`` loaded from its run's own resolved config (a relaunch of the run directory)?"""
    own = cfg.run_dir / RESOLVED_NAME
    try:
        return bool(cfg.source) and os.path.samefile(cfg.source, own)
    except (OSError, ValueError):
        return False


def read_overrides(run_dir: Path) -> list[str]:
    """The run's overrides.yaml, or [] where there is none or it is not a list of strings."""
    try:
        raw = yaml.safe_load((Path(run_dir) / OVERRIDES_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    return [str(x) for x in raw] if isinstance(raw, list) else []


def _read_launches(path: Path) -> list[dict]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return []
    launches = raw.get("launches") if isinstance(raw, dict) else None
    return [x for x in launches if isinstance(x, dict)] if isinstance(launches, list) else []


def record_launch(cfg: Config, overrides: list[str] | None) -> list[str]:
    """Write the run's overrides.yaml and add this launch to its provenance.json; the run's overrides."""
    given = [str(x) for x in overrides or []]
    made_by = [*read_overrides(cfg.run_dir), *given] if _from_own_dir(cfg) else given
    git = git_commit()
    prov = cfg.run_dir / PROVENANCE_NAME
    entry = {"time": time.time(), "config": str(cfg.source), "overrides": given, "git": git}
    launches = [*_read_launches(prov), entry]
    try:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg.run_dir / OVERRIDES_NAME, yaml.safe_dump(made_by, allow_unicode=True, width=10**6))
        atomic_write_text(prov, json.dumps({"git": git, "launches": launches}, indent=2) + "\n")
    except OSError as e:
        raise StorageError(
            f"{cfg.run_dir}: cannot write {OVERRIDES_NAME} or {PROVENANCE_NAME}: {e.strerror or e}"
        ) from None
    return made_by
