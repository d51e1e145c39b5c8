"""drop the log's index on user_id alone: (user_id, timestamp) serves the same lookups

Revision ID: c4d8e2f1a9b7
Revises: 9b3e7d21c4a8
Create Date: 2026-12-01 06:20:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = 'c4d8e2f1a9b7'
down_revision = '9b3e7d21c4a8'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('user_interactions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_user_interactions_user_id'))


def downgrade():
    with op.batch_alter_table('user_interactions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_user_interactions_user_id'), ['user_id'], unique=False)
