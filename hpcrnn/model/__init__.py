"""The model layer, shared by training, evaluation, generation and the API: what a stage may build on."""
