"""Moved to hpcrnn/model/rnn.py (the model is shared by every stage); kept so old imports work."""

from hpcrnn.model.rnn import *  # noqa: F403
from hpcrnn.model.rnn import RecurrentLM, build_model, count_parameters, token_loss  # noqa: F401
