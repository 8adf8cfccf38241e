"""hpcrnn: batch jobs that train recurrent language models (LSTM, GRU, RNN) on HPC clusters, and use them."""

__version__ = "0.1.0"
