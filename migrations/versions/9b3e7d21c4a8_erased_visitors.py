"""visitors erased in the last hours, so their writes still on the way are dropped

Revision ID: 9b3e7d21c4a8
Revises: 5f2d9c1a7e40
Create Date: 2026-11-30 21:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '9b3e7d21c4a8'
down_revision = '5f2d9c1a7e40'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('erased_visitors',
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_erased_visitors'))
    )
    with op.batch_alter_table('erased_visitors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_erased_visitors_erased_at'), ['erased_at'], unique=False)


def downgrade():
    with op.batch_alter_table('erased_visitors', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_erased_visitors_erased_at'))

    op.drop_table('erased_visitors')
