"""What generation would use now (a model file, or a run's checkpoint) and whether its recipes are all there:
the one answer to "is generation done", for the generation job, the launcher and status (no torch unless
``generate.checkpoint`` names a model file)."""

from __future__ import annotations

from hpcrnn.config import Config
from hpcrnn.model.file import read_model_file
from hpcrnn.run import generated
from hpcrnn.run.checkpoints import names_file, resolve


def source_step(cfg: Config) -> int:
    """The step of the model file ``generate.checkpoint`` names, or of the run's checkpoint it names (a
    step, a folder, ``best`` or ``last``; the newest complete one by default). ``best``/``last`` are names
    even where a file so named lies in the current directory (``./best`` names the file). Raises InputError
    when there is none."""
    which = cfg.generate.checkpoint
    if names_file(which):
        return read_model_file(which).step
    return resolve(cfg.checkpoint_dir, which).step


def generation_done(cfg: Config) -> bool:
    """Whether ``generated/<name>`` holds all ``num_recipes`` recipes of these settings and of the
    checkpoint generation would use now, with its summary. Never raises."""
    try:
        step = source_step(cfg)
    except Exception:
        return False
    return generated.generation_done(cfg, step)
