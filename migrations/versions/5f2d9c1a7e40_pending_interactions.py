"""the inbox of interactions waiting for the aggregator; item history index without page views

Revision ID: 5f2d9c1a7e40
Revises: 063bafb1b573
Create Date: 2026-11-30 14:15:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '5f2d9c1a7e40'
down_revision = '063bafb1b573'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('pending_interactions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=64), nullable=False),
    sa.Column('interaction_type', sa.String(length=50), nullable=False),
    sa.Column('target_type', sa.String(length=50), nullable=True),
    sa.Column('target_id', sa.Integer(), nullable=True),
    sa.Column('extra_data', sa.Text(), nullable=True),
    sa.Column('timestamp', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pending_interactions'))
    )
    with op.batch_alter_table('pending_interactions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pending_interactions_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('user_interactions', schema=None) as batch_op:
        batch_op.create_index('ix_user_interactions_item_history', ['user_id', 'timestamp'], unique=False, postgresql_where=sa.text('target_id IS NOT NULL'), sqlite_where=sa.text('target_id IS NOT NULL'))


def downgrade():
    with op.batch_alter_table('user_interactions', schema=None) as batch_op:
        batch_op.drop_index('ix_user_interactions_item_history', postgresql_where=sa.text('target_id IS NOT NULL'), sqlite_where=sa.text('target_id IS NOT NULL'))

    with op.batch_alter_table('pending_interactions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pending_interactions_user_id'))

    op.drop_table('pending_interactions')
