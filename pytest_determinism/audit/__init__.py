"""``python -m pytest_determinism audit``: one model's determinism, before a test exists."""
