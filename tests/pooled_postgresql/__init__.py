"""A Django database backend for the test suite behind a pooler in transaction mode."""
