"""hpcrnn: batch jobs that train recurrent language models (LSTM, GRU, RNN) on HPC clusters, and use them.

``hpcrnn.load(PATH)`` opens a trained model (hpcrnn/api.py); it is imported on first use, so that
``import hpcrnn`` stays free of torch for the launcher and the command-line entry points.
"""

__version__ = "0.1.0"
__all__ = ["load", "LanguageModel", "__version__"]


def __getattr__(name: str):
    if name in ("load", "LanguageModel"):
        from hpcrnn import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(f"module 'hpcrnn' has no attribute {name!r}")
