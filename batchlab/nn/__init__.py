"""The networks: built-in and user models (models.py, names.py torch-free), torchvision's
classifiers (vision.py, optional), faster drop-in layers (layers.py), cache-sized micro-batches
(microbatch.py), device layout and precision (placement.py)."""
