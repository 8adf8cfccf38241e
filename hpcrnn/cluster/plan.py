"""Which stages of a run a launch must run, from the run directory alone, and which relaunches to refuse."""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from typing import Any

from hpcrnn.config import CORPUS_KEYS, Config
from hpcrnn.data.build import is_current
from hpcrnn.errors import ConfigError, HpcrnnError
from hpcrnn.model.source import generation_done
from hpcrnn.run.checkpoints import list_complete, training_done
from hpcrnn.run.compat import shape_diff_text
from hpcrnn.run.generated import PLAN, output_dir, present_recipes, recipes_wanted

STAGES = ("preprocess", "train", "generate")

# Settings a checkpoint depends on: the corpus' own (hpcrnn/config/schema.py), its inputs, and how training
# reads it. Changing any of them makes the run's checkpoints meaningless.
_DATA_KEYS = ("corpus", *CORPUS_KEYS, "sequences", "max_len")


@dataclass
class StagePlan:
    stage: str
    run: bool
    reason: str  # why it runs or is skipped, for the user


def parse_stages(text: str | None) -> list[str]:
    """--stages: a comma- or space-separated subset of STAGES, returned in pipeline order, each once."""
    if text is None or text.strip() in ("", "all"):
        return list(STAGES)
    items = [s.strip() for s in text.replace(",", " ").split() if s.strip()]
    for s in items:
        if s not in STAGES:
            hint = difflib.get_close_matches(s, STAGES, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"--stages: unknown stage {s!r}{extra}; stages are {', '.join(STAGES)}")
    return [s for s in STAGES if s in items]


def stage_complete(cfg: Config, stage: str, strict: bool = False) -> tuple[bool, str]:
    """(complete, what) from the run directory alone. ``strict``: an unreadable input raises instead."""
    if stage == "preprocess":
        try:
            ok = is_current(cfg)
        except HpcrnnError as e:  # e.g. the corpus file is gone: not current, and say why
            if strict:
                raise
            return False, str(e)
        return ok, (f"{cfg.h5_path} matches its inputs and settings" if ok else f"{cfg.h5_path} missing or stale")
    if stage == "train":
        ok = training_done(cfg)
        return ok, "training reached its target step" if ok else "training not finished"
    ok = generation_done(cfg)
    return ok, (f"{recipes_wanted(cfg)} recipes generated" if ok else "generation not done")


def plan_stages(cfg: Config, stages: list[str]) -> list[StagePlan]:
    """Which stages to run. Once a stage runs, every later requested stage runs too (its inputs change);
    each one still skips its own work inside the job when that turns out to be current."""
    plans, upstream_runs = [], False
    for stage in STAGES:
        if stage not in stages:
            continue
        # strict: a missing corpus fails the launch now, not a queued job an hour later
        done, what = stage_complete(cfg, stage, strict=True)
        if done and not upstream_runs:
            plans.append(StagePlan(stage, False, f"skipped: {what}"))
        else:
            plans.append(StagePlan(stage, True, what if not done else "runs after an upstream stage"))
            upstream_runs = True
    _check_inputs_of_first(cfg, plans, stages)
    _check_generate_folder(cfg, plans)
    return plans


def _check_inputs_of_first(cfg: Config, plans: list[StagePlan], stages: list[str]) -> None:
    """A stage run without its predecessor in --stages needs that predecessor's output on disk."""
    first = next((p for p in plans if p.run), None)
    if first is None or first.stage == "preprocess":
        return
    prev = STAGES[STAGES.index(first.stage) - 1]
    if prev in stages:
        return
    if prev == "preprocess":
        ok, what = stage_complete(cfg, "preprocess")
        if not ok:
            raise ConfigError(
                f"--stages: {first.stage} needs the preprocessed corpus, but {what}: add preprocess to --stages"
            )
    elif not list_complete(cfg.checkpoint_dir, warn=False):
        raise ConfigError(
            f"--stages: generate needs a trained checkpoint, but {cfg.checkpoint_dir} holds none: add train to --stages"
        )


def _check_generate_folder(cfg: Config, plans: list[StagePlan]) -> None:
    """Training that continues past the checkpoint an existing generate.name folder was made from would
    fail the generate job at the very end: refuse now, before anything is submitted."""
    runs = {p.stage for p in plans if p.run}
    if not {"train", "generate"} <= runs or cfg.generate.checkpoint:
        return
    out = output_dir(cfg)
    try:
        pinned = json.loads((out / PLAN).read_text()).get("checkpoint", {}).get("step")
    except (OSError, ValueError):
        return
    if pinned is not None and present_recipes(out):
        raise ConfigError(
            f"{out}: holds recipes from checkpoint step {pinned}, and training continues past it: "
            f"give a new generate.name for the new model (or generate.checkpoint={pinned} to "
            f"finish that set)"
        )


def _real_corpus_paths(c: Any) -> Any:
    if isinstance(c, str):
        return os.path.realpath(c)
    if isinstance(c, list):
        return [os.path.realpath(x) for x in c]
    if isinstance(c, dict):
        return {k: os.path.realpath(v) for k, v in c.items()}
    return c


def check_compatible_run(cfg: Config) -> None:
    """Refuse, before anything is written or submitted, a config that no longer fits the run's newest
    checkpoint (model shape, or the data its vocabulary came from). A new run.name starts afresh."""
    done = list_complete(cfg.checkpoint_dir, warn=False)
    if not done:
        return
    newest = done[-1]
    old = newest.meta.get("config") or {}
    new = cfg.to_dict()
    diffs = shape_diff_text(old.get("model", {}), new["model"])
    for k in _DATA_KEYS:
        if k not in old.get("data", {}):
            continue
        a, b = old["data"][k], new["data"][k]
        if k == "corpus":
            a, b = _real_corpus_paths(a), _real_corpus_paths(b)
        if a != b:
            diffs.append(f"data.{k}: {old['data'][k]!r} -> {new['data'][k]!r}")
    if not diffs and not stage_complete(cfg, "preprocess")[0] and cfg.h5_path.exists():
        diffs.append(f"the corpus inputs changed since {cfg.h5_path} was built")
    if diffs:
        raise ConfigError(
            f"{cfg.source}: run {cfg.run.name!r} has checkpoints up to step {newest.step} in "
            f"{cfg.checkpoint_dir} that this config cannot continue ({'; '.join(diffs)}): "
            f"give a new run name (run.name=...) or restore the settings"
        )
