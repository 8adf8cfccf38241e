"""The evaluation layer: held-out figures shared by training, the evaluate command and the API."""
