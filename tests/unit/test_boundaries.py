"""The architecture's boundaries hold: the import-linter contracts in pyproject.toml
([tool.importlinter]) are kept by the code as it is. `make lint` runs the same contracts
(`lint-imports`); this test makes `make test` fail on a violation too."""

from __future__ import annotations

from pathlib import Path

from importlinter import configuration
from importlinter.application.use_cases import lint_imports

ROOT = Path(__file__).resolve().parents[2]
configuration.configure()  # what the `lint-imports` command does first: readers, printer


def test_no_import_crosses_a_boundary_the_architecture_draws(capsys):
    # No cache: a unit test writes nothing into the tree (the graph takes a fraction of a second).
    kept = lint_imports(config_filename=str(ROOT / "pyproject.toml"), cache_dir=None, no_logo=True)
    report = capsys.readouterr().out
    assert kept, f"an import breaks a contract of [tool.importlinter]:\n{report}"
