"""batchlab's version, recorded with every run's machine fingerprint and on every report."""

__version__ = "0.1.0"
