"""commissions and payouts: partner compensation entries (commission, clawback) through their
lifecycle, and the payout batches that pay them

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("partner_id", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("paid_by", sa.String(length=128), nullable=True),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["partner_id"], ["partners.id"], name=op.f("fk_payouts_partner_id_partners")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payouts")),
    )
    op.create_index(op.f("ix_payouts_partner_id"), "payouts", ["partner_id"], unique=False)
    op.create_table(
        "commissions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("referral_id", sa.String(length=26), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("partner_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("terms_version", sa.String(length=128), nullable=True),
        sa.Column("deal_amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("deal_currency", sa.String(length=3), nullable=True),
        sa.Column("closed_on", sa.Date(), nullable=True),
        sa.Column("won_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("facts", sa.String(length=96), nullable=True),
        sa.Column("payable_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("holds", sa.JSON(), nullable=False),
        sa.Column("notes", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paid_reference", sa.String(length=255), nullable=True),
        sa.Column("paid_by", sa.String(length=128), nullable=True),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("payout_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["partner_id"], ["partners.id"], name=op.f("fk_commissions_partner_id_partners")),
        sa.ForeignKeyConstraint(["payout_id"], ["payouts.id"], name=op.f("fk_commissions_payout_id_payouts")),
        sa.ForeignKeyConstraint(["referral_id"], ["referrals.id"], name=op.f("fk_commissions_referral_id_referrals")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commissions")),
        sa.UniqueConstraint("referral_id", "seq", name=op.f("uq_commissions_referral_id_seq")),
    )
    op.create_index("ix_commissions_partner_status", "commissions", ["partner_id", "status"], unique=False)
    op.create_index(op.f("ix_commissions_referral_id"), "commissions", ["referral_id"], unique=False)
    op.create_index(op.f("ix_commissions_status"), "commissions", ["status"], unique=False)
    op.create_index(op.f("ix_commissions_payout_id"), "commissions", ["payout_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_commissions_payout_id"), table_name="commissions")
    op.drop_index(op.f("ix_commissions_status"), table_name="commissions")
    op.drop_index(op.f("ix_commissions_referral_id"), table_name="commissions")
    op.drop_index("ix_commissions_partner_status", table_name="commissions")
    op.drop_table("commissions")
    op.drop_index(op.f("ix_payouts_partner_id"), table_name="payouts")
    op.drop_table("payouts")
