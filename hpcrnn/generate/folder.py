"""Moved to hpcrnn/run/generated.py (the generated/<name>/ folder as data); kept so old imports work."""

from hpcrnn.run.generated import *  # noqa: F403
from hpcrnn.run.generated import (  # noqa: F401
    INDEX,
    PLAN,
    SAMPLER,
    SUMMARY,
    create_exclusive,
    generation_settings,
    output_dir,
    present_recipes,
    read_json,
    recipe_file_name,
    remove_own_temporaries,
    shard_index_name,
    write_merged,
    write_recipe,
)
