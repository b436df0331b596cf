"""notifications.message holds its text sealed (AES-GCM, base64): wider than 1000 characters

A notification's message is at most 1000 characters; sealed (services/kit/sealing.py) it is its
UTF-8 JSON (up to four bytes a character) with a nonce and a tag, in base64 behind a prefix: up to
about 5 400 characters. The column becomes TEXT (PostgreSQL: a catalogue change, no rewrite;
SQLite: the table is copied, its indexes with it).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 19:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column(
            "message",
            existing_type=sa.String(length=1000),
            type_=sa.Text(),
            existing_nullable=False,
        )


def downgrade() -> None:
    # Sealed messages do not fit the old width: they go (the notifications are kept).
    op.execute(sa.text("UPDATE notifications SET message = '' WHERE length(message) > 1000"))
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column(
            "message",
            existing_type=sa.Text(),
            type_=sa.String(length=1000),
            existing_nullable=False,
        )
