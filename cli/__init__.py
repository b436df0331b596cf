"""`leadmesh`, the operators' command line: up, status, config, migrate."""
