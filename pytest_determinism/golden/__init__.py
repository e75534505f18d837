"""Golden files and comparing values; knows nothing of pytest. Modules import NumPy."""
