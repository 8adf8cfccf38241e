"""The output folder ``<run>/generated/<name>/``: its path, file names, plan, recipe files and index lines.

* ``recipe-00001.txt`` …, each written atomically;
* per shard an append-only ``index-<s>-of-<n>.jsonl``: one line per recipe, written after its file, so a
  recipe is present when its index line (in any shard's file) and its file both exist;
* ``plan.json``: the checkpoint, vocabulary and :func:`generation_settings` the recipes are made with,
  created exclusively by the first task;
* when every recipe is present: ``index.jsonl`` (all index lines, in recipe order) and ``summary.json``,
  both deterministic, so two tasks finishing together write the same bytes, atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from hpcrnn.config import Config
from hpcrnn.errors import InputError, StorageError
from hpcrnn.fsutil import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    fsync_dir,
    read_jsonl_prefix,
)

PLAN = "plan.json"
INDEX = "index.jsonl"
SUMMARY = "summary.json"
SAMPLER = 2  # version of the sampling rule (2: rejection for top_k/top_p, vocabulary order, fused step)


DEFAULT_NAME = "default"  # generate.name's schema default: the folder follows the settings (output_name)

# how settings_name writes each setting: a short tag, then the value
_TAGS = {
    "seed": "seed",
    "temperature": "t",
    "top_k": "topk",
    "top_p": "topp",
    "max_tokens": "max",
    "prompt": "prompt",
    "precision": "",
    "sampler": "sampler",
    "listed_bias": "lb",
    "unlisted_bias": "ub",
    "prompt_ingredients": "ingr",
}


_QUIET = {"prompt_ingredients": "all"}


def _tag_value(key: str, v) -> str:
    if key == "prompt":
        if v == "random":
            return "random"
        if not str(v).strip():
            return "start"
        return hashlib.sha1(str(v).encode("utf-8")).hexdigest()[:8]
    if isinstance(v, float):
        return repr(v)
    return re.sub(r"[^A-Za-z0-9_.+]", "_", str(v))


def settings_name(old: dict, new: dict) -> str:
    """A short folder name for ``new`` settings (:func:`generation_settings`) beside a folder made with
    ``old``: each setting that differs as a tag and its value (``t1.0``, ``topk40``, ``seed3``, ``bf16``,
    ``prompt`` and 8 hex digits of the prompt's SHA-1), joined by ``-``; only letters, digits and
    ``_ . + -``, so it is a valid ``generate.name``."""
    differ = [k for k, v in new.items() if old.get(k) != v]
    # a setting newer than the old folder, at its default, is implied by the others (a prompt's tag says
    # its ingredient list is closed by default): named only when nothing else tells the folders apart
    loud = [k for k in differ if not (k not in old and _QUIET.get(k) == new[k])] or differ
    return "-".join(f"{_TAGS.get(k, k)}{_tag_value(k, new[k])}" for k in loud) or "same"


def default_conflict(cfg: Config) -> dict | None:
    """With the default ``generate.name``: the settings of ``generated/default/`` when it holds recipes
    made with other settings than ``cfg``'s, else None (then the default folder is the one). An unreadable
    plan counts as none here: the job reports it."""
    if cfg.generate.name != DEFAULT_NAME:
        return None
    base = cfg.run_dir / "generated" / DEFAULT_NAME
    try:
        plan = read_json(base / PLAN)
    except InputError:
        return None
    old = plan.get("settings") if isinstance(plan, dict) else None
    if not isinstance(old, dict) or old == generation_settings(cfg) or not present_recipes(base):
        return None
    return old


def output_name(cfg: Config) -> str:
    """The folder ``generated/<name>/`` of ``cfg``: ``generate.name``; the default name ("default", given
    or not) is the derived :func:`settings_name` instead when ``generated/default/`` already holds recipes
    made with other settings, so changing a setting never needs a new name by hand. The default folder's
    settings never change once it holds a recipe, so the answer is stable: the job, the launcher and
    status all find the same folder."""
    old = default_conflict(cfg)
    return cfg.generate.name if old is None else settings_name(old, generation_settings(cfg))


def output_dir(cfg: Config) -> Path:
    """``<run>/generated/<output_name(cfg)>``: where the job writes, and where the launcher and status look."""
    return cfg.run_dir / "generated" / output_name(cfg)


def shard_index_name(shard: int, num_shards: int) -> str:
    return f"index-{shard + 1:05d}-of-{num_shards:05d}.jsonl"


def recipe_file_name(i: int) -> str:
    return f"recipe-{i:05d}.txt"


def generation_settings(cfg: Config) -> dict:
    """The settings that decide the content of the recipes (not batch size, shards or device). ``SAMPLER``
    is one of them, so a folder is never continued by a different sampling rule."""
    g = cfg.generate
    return {
        "seed": g.seed,
        "temperature": g.temperature,
        "top_k": g.top_k,
        "top_p": g.top_p,
        "max_tokens": g.max_tokens,
        "prompt": g.prompt,
        "precision": g.precision,
        "sampler": SAMPLER,
        # only when set, so that the folders of unprompted settings keep their names
        **({"prompts": g.prompts, "prompts_cut": g.prompts_cut} if g.prompts else {}),
        # a text prompt's recipes depend on it (the start of a recipe's and random windows' do not)
        **({"prompt_ingredients": g.prompt_ingredients} if g.prompts or g.prompt.strip() not in ("", "random") else {}),
        # the same: at 0 (off) the recipes and folder names are those of before the settings existed
        **({"listed_bias": g.listed_bias} if g.listed_bias else {}),
        **({"unlisted_bias": g.unlisted_bias} if g.unlisted_bias else {}),
    }


def present_recipes(out: Path) -> dict[int, dict]:
    """Recipes with an index line (any shard's file) and their file on disk, with their index records."""
    found: dict[int, dict] = {}
    for p in sorted(out.glob("index-*-of-*.jsonl")):
        for rec in read_jsonl_prefix(p)[0]:
            i = rec.get("recipe")
            if isinstance(i, int) and i not in found and (out / recipe_file_name(i)).is_file():
                found[i] = rec
    return found


def write_recipe(out: Path, index_name: str, i: int, text: str, record: dict) -> None:
    """Recipe ``i``'s file, then its line in the shard's index (``record`` plus its number and file)."""
    path, index = out / recipe_file_name(i), out / index_name
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise StorageError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        append_jsonl(index, {"recipe": i, "file": path.name, **record}, fsync=True)
    except OSError as e:
        raise StorageError(f"{index}: cannot append recipe {i}'s line: {e.strerror or e}") from None


def remove_own_temporaries(out: Path, mine: set[int]) -> None:
    """Delete the temporaries a killed writer of this shard's recipes left (``.recipe-00004.txt.*.tmp``):
    only this shard writes those recipes, so no live writer owns them."""
    for p in out.glob(".recipe-*.txt.*.tmp"):
        try:
            i = int(p.name[len(".recipe-") :].split(".", 1)[0])
        except ValueError:
            continue
        if i in mine:
            p.unlink(missing_ok=True)


def write_merged(out: Path, records: list[dict], summary: dict) -> None:
    try:
        atomic_write_text(out / INDEX, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        atomic_write_json(out / SUMMARY, summary)
    except OSError as e:
        raise StorageError(f"{out}: cannot write {INDEX} and {SUMMARY}: {e.strerror or e}") from None


def read_json(path: Path) -> dict | None:
    """A JSON file's content; None when it does not exist; InputError when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e.__class__.__name__}: {e})") from None


def create_exclusive(path: Path, obj: dict) -> bool:
    """Write ``path`` only if it does not exist yet, atomically (a temporary file hard-linked into place:
    the link fails when another task got there first). True when this call created it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # as fsutil's atomic writes: the group may read
            f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then the content
            try:
                fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                return False
            with os.fdopen(fd2, "wb") as f:
                f.write(Path(tmp).read_bytes())
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(path.parent)
        return True
    finally:
        os.unlink(tmp)


def generation_done(cfg: Config, step: int) -> bool:
    """Whether ``generated/<name>`` holds all ``num_recipes`` recipes of these settings and the
    checkpoint generation would use now, with its summary. Never raises."""
    try:
        out = output_dir(cfg)
        s = read_json(out / SUMMARY) or {}
        if s.get("num_recipes") != cfg.generate.num_recipes or s.get("settings") != generation_settings(cfg):
            return False
        if step != s.get("checkpoint", {}).get("step"):
            return False
        total = (s.get("prompts") or {}).get("recipes", cfg.generate.num_recipes)  # per prompt, times prompts
        return all((out / recipe_file_name(i)).is_file() for i in range(1, total + 1))
    except Exception:
        return False


def recipes_wanted(cfg: Config) -> int:
    """How many recipes the generation job writes: ``num_recipes``, or that many for each prompt of
    ``generate.prompts`` (as its summary recorded them; before the job, one per ``Title:`` line of the
    file, the corpus layout's start of a prompt). Never raises: an unreadable file counts as no prompts."""
    g = cfg.generate
    if not g.prompts:
        return g.num_recipes
    try:
        recorded = ((read_json(output_dir(cfg) / SUMMARY) or {}).get("prompts") or {}).get("recipes")
        if isinstance(recorded, int):
            return recorded
        with open(g.prompts, encoding="utf-8", errors="replace") as f:
            return g.num_recipes * sum(1 for line in f if line.startswith("Title:"))
    except Exception:
        return 0
