"""Inference: throughput and latency at one batch size, compute only and with overheads (measure.py)."""
