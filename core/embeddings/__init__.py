"""Embedding files: initial vectors, saving, and reading every layout users bring."""
