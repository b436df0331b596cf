"""Benchmarks (`python bench/<name>.py`, scripts, not imported by the product). A package only so
that the import-linter contracts in pyproject.toml see them: a benchmark measures services through
their contracts, never by importing a service's internals (bench/vault_seed.py is the one
exception, and says why)."""
