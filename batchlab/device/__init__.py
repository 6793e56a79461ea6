"""The machine and its devices: fingerprint and device look-up (machine.py), timed regions and
peak memory with the device synchronised (timing.py)."""
