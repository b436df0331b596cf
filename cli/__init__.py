"""`leadmesh`, the operators' command line: up, status, config, migrate, announce, runner-worker,
keys, oauth. It is no service: it knows each process from the one list in `cli/mesh.py`, talks to
running services only over their gRPC contracts (as `operator`) or the gateway's HTTPS, and no
service or the gateway may import it (the import-linter contracts in pyproject.toml)."""
