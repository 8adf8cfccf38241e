"""Training: the loop, the model, the checkpoint format, ranks and process groups, the stop flag.

Import the modules themselves (``hpcrnn.train.loop``...): this file stays free of torch so that
``python -m hpcrnn.train`` can install its stop-signal handler before the slow imports.
"""
