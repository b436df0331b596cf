from services.identity.tables import metadata
from services.kit.db import run_alembic_env

run_alembic_env(metadata)
