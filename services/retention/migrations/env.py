from services.kit.db import run_alembic_env
from services.retention.tables import metadata

run_alembic_env(metadata)
