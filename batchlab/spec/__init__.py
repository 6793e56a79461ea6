"""What runs are asked for: one run's spec and its validation (run.py), grids of them from
experiment files and flags (experiment.py). Torch-free."""
