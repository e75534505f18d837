"""The process-global state a marked test changes and puts back; knows nothing of pytest."""
