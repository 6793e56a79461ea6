"""Running runs: one run in its own process (worker.py) and a sweep over many, resumable and
interruptible, the store's only writer (sweep.py)."""
