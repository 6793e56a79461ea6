"""Reports from the store: training runs grouped over repeats (training.py), inference tables and
crossovers (inference.py), figures (figures.py), the HTML page (html.py), TensorBoard export
(tensorboard.py). Torch-free."""
