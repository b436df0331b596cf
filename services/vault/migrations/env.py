from services.kit.db import run_alembic_env
from services.vault.tables import metadata

run_alembic_env(metadata)
