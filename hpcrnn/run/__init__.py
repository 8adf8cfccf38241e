"""The run directory as data, without torch: the checkpoint index and the compatibility rules."""
