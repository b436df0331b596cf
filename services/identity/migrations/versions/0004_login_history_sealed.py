"""login history sealed: login_attempts' address and user agent hold sealed text, or NULL

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 19:00:00

Sealed values are longer than the plaintext they hold (base64 of nonce, ciphertext and tag), and
an attempt recorded while no key could be had holds neither value (NULL), never plaintext. Rows
written before stay as they are: retention's sealing migration (`leadmesh retention seal`) seals
them, and reads accept both forms meanwhile.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("login_attempts", schema=None) as batch_op:
        batch_op.alter_column(
            "ip_address", existing_type=sa.String(length=64), type_=sa.Text(), nullable=True
        )
        batch_op.alter_column(
            "user_agent", existing_type=sa.String(length=512), type_=sa.Text(), nullable=True
        )


def downgrade() -> None:
    # Sealed values do not fit the old widths: a downgrade clears them (the history is lost, the
    # attempts' times and outcomes stay).
    op.execute(
        "UPDATE login_attempts SET ip_address = '', user_agent = '' "
        "WHERE ip_address IS NULL OR user_agent IS NULL "
        "OR ip_address LIKE 'lmsealed:%' OR user_agent LIKE 'lmsealed:%'"
    )
    with op.batch_alter_table("login_attempts", schema=None) as batch_op:
        batch_op.alter_column(
            "ip_address", existing_type=sa.Text(), type_=sa.String(length=64), nullable=False
        )
        batch_op.alter_column(
            "user_agent", existing_type=sa.Text(), type_=sa.String(length=512), nullable=False
        )
