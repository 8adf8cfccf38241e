"""Typed experiment configuration: YAML + dotted overrides + ${VAR} expansion, validated."""

# One YAML file describes a whole experiment in sections (run, paths, data, model, train, generate, slurm).
# Every stage resolves it the same way:
#
#     cfg = load_config("configs/lstm256.yaml", ["train.max_steps=200", "model.cell=gru"])
#
# Relative paths resolve against the *current working directory* of the command that first resolves the
# config (for the shipped configs: the repository root). The resolved config written to
# ``<run dir>/config.yaml`` holds absolute paths only, so a job requeued hours later, from any directory,
# runs exactly what was submitted.
#
# Errors are ``ConfigError`` with one line naming the file and the dotted key.
#
# Modules: schema (the sections and the corpus settings), strings (${VAR}, control characters, file:
# prompts), coerce (raw mappings to typed sections), validate (cross-field checks, paths), load (files,
# base: chains, overrides, the resolved copy). Everything code imports from hpcrnn.config is here.

from hpcrnn.config.coerce import _build
from hpcrnn.config.load import (
    BASE_KEY,
    RESET,
    RESOLVED_MARK,
    RESOLVED_NAME,
    SECTIONS,
    apply_overrides,
    config_path_of,
    from_dict,
    is_resolved,
    load_config,
    override_key,
    parse_override,
    read_composed,
    read_yaml,
    save_resolved,
)
from hpcrnn.config.schema import (
    CORPUS_KEYS,
    Config,
    DataConfig,
    GenerateConfig,
    ModelConfig,
    PathsConfig,
    RunConfig,
    SlurmConfig,
    SlurmResources,
    TrainConfig,
    corpus_settings,
)
from hpcrnn.config.strings import PROMPT_FILE, PROMPT_FILE_MAX, expand_env, prompt_text
from hpcrnn.config.validate import validate

__all__ = [
    "BASE_KEY",
    "CORPUS_KEYS",
    "PROMPT_FILE",
    "PROMPT_FILE_MAX",
    "RESOLVED_MARK",
    "RESOLVED_NAME",
    "RESET",
    "SECTIONS",
    "Config",
    "DataConfig",
    "GenerateConfig",
    "ModelConfig",
    "PathsConfig",
    "RunConfig",
    "SlurmConfig",
    "SlurmResources",
    "TrainConfig",
    "_build",
    "apply_overrides",
    "config_path_of",
    "corpus_settings",
    "expand_env",
    "from_dict",
    "is_resolved",
    "load_config",
    "override_key",
    "parse_override",
    "prompt_text",
    "read_composed",
    "read_yaml",
    "save_resolved",
    "validate",
]
