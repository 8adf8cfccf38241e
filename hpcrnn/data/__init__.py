"""Data: corpus inputs -> documents -> `corpus.h5` (the writer), its reader, and per-rank batches."""
