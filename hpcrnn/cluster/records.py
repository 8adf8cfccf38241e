"""The run's ``jobs.json``: what each launch submitted, ran or skipped, for status and the next launch."""

from __future__ import annotations

import json
from pathlib import Path

from hpcrnn.cluster.plan import STAGES
from hpcrnn.config import Config
from hpcrnn.fsutil import atomic_write_json

JOBS_FILE = "jobs.json"


def read_jobs(run_dir: Path) -> dict:
    """``{"launches": [...]}``, oldest first; a missing or unreadable file has no launches."""
    p = Path(run_dir) / JOBS_FILE
    if not p.is_file():
        return {"launches": []}
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {"launches": []}
    return data if isinstance(data, dict) and isinstance(data.get("launches"), list) else {"launches": []}


def write_launch(cfg: Config, launch: dict) -> None:
    """Append one launch's record (time, cluster, per stage what happened) to the run's jobs.json."""
    data = read_jobs(cfg.run_dir)
    data["launches"].append(launch)
    atomic_write_json(cfg.run_dir / JOBS_FILE, data)


def latest_jobs(run_dir: Path) -> dict[str, dict]:
    """Per stage, the record of its most recent submission (with the cluster it went to)."""
    out: dict[str, dict] = {}
    for launch in read_jobs(run_dir)["launches"]:
        for stage, rec in (launch.get("stages") or {}).items():
            if rec.get("action") not in (None, "skipped"):
                out[stage] = dict(rec, cluster=launch.get("cluster"), launched=launch.get("time"))
    return {s: out[s] for s in sorted(out, key=lambda s: STAGES.index(s) if s in STAGES else 99)}
