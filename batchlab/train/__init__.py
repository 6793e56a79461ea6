"""Training: the hot loop and the epoch loop with its measured regions (engine.py), the strategies
single, hogwild and ddp (strategies.py, hogwild.py, ddp.py), and the supervised team of worker
processes the parallel ones run on (team.py)."""
