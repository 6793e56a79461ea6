"""The SQLite results store: schema and migrations (schema.py), reading and writing (store.py).
Torch-free: a laptop reads a store copied from a cluster without torch."""
