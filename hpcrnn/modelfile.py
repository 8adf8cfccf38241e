"""Moved to hpcrnn/model/file.py (and data.vocab_from's reader to hpcrnn/data/vocab_from.py); kept so old
imports work."""

from hpcrnn.data.vocab_from import load_vocabulary, run_config_path  # noqa: F401
from hpcrnn.model.file import *  # noqa: F403
from hpcrnn.model.file import ModelFile, Vocabulary, is_model_file, read_model_file, vocab_hash_of, write_model_file  # noqa: F401
