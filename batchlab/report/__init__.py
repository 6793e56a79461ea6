"""Reports from the store: training runs grouped over repeats (training.py), inference tables and
crossovers (inference.py), what each table's columns are and how a cell reads (columns.py), those
tables in a terminal (terminal.py) and on the HTML page (html.py), figures (figures.py),
TensorBoard export (tensorboard.py). Torch-free."""
