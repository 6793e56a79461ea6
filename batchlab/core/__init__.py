"""The torch-free core every layer may use: result records and statuses, user errors, statistics
over timings, the CPU count, liveness reporting. Nothing here imports torch."""
