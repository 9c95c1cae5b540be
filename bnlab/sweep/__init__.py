"""`bnlab sweep`: a grid of runs through Hydra's multirun (sweeper + launcher plugins)."""
