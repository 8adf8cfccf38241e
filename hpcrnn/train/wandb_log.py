"""train.wandb: the records of metrics.jsonl also in a Weights & Biases run (rank 0), online or offline."""

from __future__ import annotations

import importlib
import importlib.util
import os
import secrets
from pathlib import Path
from typing import Any

from hpcrnn.config import Config
from hpcrnn.errors import ConfigError
from hpcrnn.fsutil import atomic_write_text
from hpcrnn.train.tensorboard import tags

FOLDER = "wandb"  # wandb's own folder under dir=<run dir>: offline runs wait there for `wandb sync`
ID_FILE = "hpcrnn-run-id"  # in FOLDER: the W&B run of this run directory, which a requeued attempt continues
STEP = "trainer/step"  # the x axis of every curve: a resumed attempt may log a step again, W&B's own must rise


def wanted(cfg: Config) -> bool:
    """Whether the run logs to W&B: a project is named and the mode is not ``disabled``."""
    w = cfg.train.wandb
    return bool(w.project) and w.mode != "disabled"


def check_installed(cfg: Config) -> None:
    """ConfigError (one line, before training starts) when W&B is wanted and the package is missing."""
    if wanted(cfg) and importlib.util.find_spec("wandb") is None:
        src = f"{cfg.source}: " if cfg.source else ""
        raise ConfigError(
            f"{src}train.wandb.project: {cfg.train.wandb.project!r} needs the wandb package: "
            f"pip install 'hpcrnn[wandb]' (or wandb), or set train.wandb.mode: disabled"
        )


def _run_id(folder: Path) -> str:
    """The W&B run id of this run directory: the one kept in FOLDER, or a new one (kept there)."""
    path = folder / ID_FILE
    try:
        run_id = path.read_text().strip()
    except FileNotFoundError:
        run_id = ""
    if not run_id:
        run_id = secrets.token_hex(6)  # W&B run ids: lowercase letters and digits
        atomic_write_text(path, run_id + "\n")
    return run_id


def _environment(mode: str) -> None:
    """W&B quiet (``WANDB_SILENT``); offline, the whole process offline (``WANDB_MODE``: the init argument
    alone leaves W&B's own telemetry thread probing its server) and no error reports sent."""
    os.environ.setdefault("WANDB_SILENT", "true")
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"
        os.environ["WANDB_ERROR_REPORTING"] = "false"


def _settings(wandb: Any, mode: str) -> dict:
    """W&B's settings: our stdout and stderr left alone (no console capture), no code or git snapshot; offline,
    no system-metrics sampler either (it probes cloud metadata endpoints), so nothing reaches for a network."""
    out: dict[str, Any] = {"console": "off", "save_code": False, "disable_git": True, "silent": True}
    known = getattr(wandb.Settings, "model_fields", {})
    if mode == "offline":
        out.update({k: True for k in ("x_disable_stats", "x_disable_machine_info") if k in known})
    return out


class WandbLog:
    """The W&B run of a training run: its config at the start, each record's scalars by the TensorBoard
    tags (``hpcrnn.train.tensorboard.tags``) against ``trainer/step``, the final figures in its summary.
    A failure of W&B (a network gone) ends this view with a warning, never the training."""

    def __init__(self, cfg: Config, protocol: str):
        w, folder = cfg.train.wandb, cfg.run_dir / FOLDER
        _environment(w.mode)  # before wandb is imported: it reads some of these once
        wandb = importlib.import_module("wandb")
        folder.mkdir(parents=True, exist_ok=True)
        self.protocol, self.wandb = protocol, wandb
        self.run: Any = wandb.init(
            project=w.project,
            entity=w.entity or None,
            name=cfg.run.name,
            id=_run_id(folder),
            resume="allow",
            dir=str(cfg.run_dir),
            mode=w.mode,
            config=cfg.to_dict(),
            settings=wandb.Settings(**_settings(wandb, w.mode)),
        )
        self.run.define_metric(STEP)
        self.run.define_metric("*", step_metric=STEP)

    def where(self) -> str:
        """The line that tells where the run is: its page, or its offline folder and how to sync it."""
        url = getattr(self.run, "url", None)
        if url:
            return f"hpcrnn.train: W&B run {url}"
        folder = Path(self.run.dir).parent
        return f"hpcrnn.train: W&B offline run in {folder}: upload it with: wandb sync {folder}"

    def add(self, rec: dict) -> bool:
        """Log a record's scalars; False (after a warning) when W&B failed and this view stops."""
        scalars = tags(rec, self.protocol)
        if not scalars or rec.get("step") is None:
            return True
        try:
            self.run.log({**scalars, STEP: int(rec["step"])})
        except Exception as e:  # a third party's and the network's failures: metrics.jsonl stays the record
            print(f"hpcrnn.train: warning: W&B logging stops here: {e}", flush=True)
            return False
        return True

    def finish(self, step: int) -> None:
        """A finished run: its last step in the summary (which holds the final figures, logged last)."""
        self.run.summary["final_step"] = int(step)

    def close(self) -> None:
        try:
            self.run.finish()
            # finish() can return before wandb's service process has written the run's record log (seen
            # under load: the offline file held only its header); teardown waits for that process to end,
            # so a batch job whose processes are killed right after training loses nothing
            teardown = getattr(self.wandb, "teardown", None)
            if teardown is not None:
                teardown()
        except Exception as e:  # as in add: the run's records are in metrics.jsonl whatever W&B does
            print(f"hpcrnn.train: warning: W&B run not closed cleanly: {e}", flush=True)


def open_wandb(cfg: Config, protocol: str) -> WandbLog | None:
    """Rank 0's W&B run, or None (after a warning) when it cannot start (online without a network or
    an API key): metrics.jsonl, the record, is written all the same."""
    try:
        return WandbLog(cfg, protocol)
    except ImportError as e:  # found by check_installed, yet broken
        check_installed(cfg)
        raise ConfigError(f"{cfg.source}: train.wandb: the wandb package does not import: {e}") from None
    except Exception as e:  # wandb.init's errors are its own classes (and the network's)
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"hpcrnn.train: warning: no W&B run: {why}", flush=True)
        return None
