"""hpcrnn: batch jobs that train recurrent language models (LSTM, GRU, RNN) on HPC clusters, and use them.

``hpcrnn.load(PATH)`` opens a trained model (hpcrnn/api.py); it is imported on first use, so that
``import hpcrnn`` stays free of torch for the launcher and the command-line entry points. So is
``hpcrnn.recipe_prompt(title, ingredients)``, a prompt in the corpus' layout for ``lm.generate``.
"""

__version__ = "0.1.0"
__all__ = ["load", "LanguageModel", "recipe_prompt", "__version__"]


def __getattr__(name: str):
    if name in ("load", "LanguageModel", "recipe_prompt"):
        from hpcrnn import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(f"module 'hpcrnn' has no attribute {name!r}")
