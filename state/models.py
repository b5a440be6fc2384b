"""The ledger's tables (SQLAlchemy 2). Change them only together with an Alembic migration.

Times are stored in UTC and always come back timezone-aware, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from refsync.times import sqlite_utc

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Statuses in lifecycle order; the last four are terminal.
STATUSES = (
    "submitted",
    "accepted",
    "contacted",
    "qualified",
    "opportunity",
    "proposal",
    "negotiation",
    "won",
    "lost",
    "expired",
    "declined",
)
OPEN_STATUSES = STATUSES[:7]
OP_STATES = ("pending", "in_flight", "done", "failed", "dead")
# lost: a deleted record whose loss a person accepted (`refsync alerts accept`): never checked again.
LINK_STATES = ("active", "superseded", "merged", "converted", "deleted", "lost")


def _utc_in(value: datetime) -> datetime:
    """An aware datetime as UTC, for the ledger; a naive one is refused (its zone is unknown)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r} given to the ledger; attach a timezone")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def as_utc(value: datetime) -> datetime:
    """A datetime as aware UTC: naive is UTC (SQLite's text), aware is converted (the ledger's
    reads, the poll's stamps)."""
    tz = value.tzinfo
    if tz is None:
        return value.replace(tzinfo=UTC)
    return value if tz is UTC else value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the database stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _utc_in(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        """:meth:`process_result_value` after the dialect's own processor, in one closure. Every
        time column of every row a cycle reads comes through here; the decorator's generic
        composition and ``replace(tzinfo=...)`` cost 1.8 µs a value. SQLite's text (naive UTC, as
        :meth:`process_bind_param` stores it: ``YYYY-MM-DD HH:MM:SS.ffffff``) is read by
        ``fromisoformat`` with the UTC offset appended (0.15 µs, the same instant with ``UTC`` as
        its zone); text it does not take goes the dialect's way, as before."""
        impl = self.impl_instance.result_processor(dialect, coltype)

        def process(value: Any) -> datetime | None:
            if value is None:
                return None
            return as_utc(cast(datetime, impl(value) if impl is not None else value))

        if dialect.name != "sqlite":
            return process
        parse = datetime.fromisoformat

        def from_text(value: Any) -> datetime | None:
            try:
                return parse(value + "+00:00")
            except (TypeError, ValueError):
                return process(value)

        return from_text

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """The composed processor (ours, then the dialect's), remembering its last answer: a batch
        binds the same instant (its ``now``) to several columns of every row, and converting it
        each time was ~7% of a first cycle's CPU on SQLite (py-spy). The memory is one (value, answer)
        tuple, replaced whole, so threads sharing the compiled statement never see half of one."""
        process = super().bind_processor(dialect)
        if process is None:
            return None
        if dialect.name == "sqlite":
            # The text SQLite's DATETIME stores (``YYYY-MM-DD HH:MM:SS.ffffff``, four-digit year),
            # written by isoformat in one call rather than by a format string per field.
            def process(value: Any) -> Any:
                return None if value is None else sqlite_utc(_utc_in(value))
        last: list[tuple[Any, Any]] = [(None, None)]

        def remembered(value: Any) -> Any:
            seen, answer = last[0]
            if value is seen and value is not None:
                return answer
            answer = process(value)
            last[0] = (value, answer)
            return answer

        return remembered


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Partner(Base):
    __tablename__ = "partners"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(255))
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_secret: Mapped[str | None] = mapped_column(String(255))  # a secret reference, not a value
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Referral(Base):
    __tablename__ = "referrals"
    __table_args__ = (
        Index("ix_referrals_prospect", "prospect_email", "company_key"),
        Index("ix_referrals_status_submitted", "status", "submitted_at"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True)  # ULID
    external_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)  # re-import idempotency
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"), index=True)
    referral_code: Mapped[str | None] = mapped_column(String(64))
    prospect_email: Mapped[str | None] = mapped_column(String(320), index=True)  # lower-cased
    prospect_company: Mapped[str | None] = mapped_column(String(255))
    prospect_name: Mapped[str | None] = mapped_column(String(255))
    prospect_domain: Mapped[str | None] = mapped_column(String(255), index=True)
    company_key: Mapped[str | None] = mapped_column(String(255), index=True)
    source: Mapped[str | None] = mapped_column(String(255))
    medium: Mapped[str | None] = mapped_column(String(255))
    campaign: Mapped[str | None] = mapped_column(String(255))
    link: Mapped[str | None] = mapped_column(Text)
    submitted_at: Mapped[datetime] = mapped_column(index=True)
    status: Mapped[str] = mapped_column(String(32), default="submitted")
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    credited: Mapped[bool] = mapped_column(Boolean, default=True)
    review_required: Mapped[bool] = mapped_column(Boolean, default=False)
    duplicate_of: Mapped[str | None] = mapped_column(ForeignKey("referrals.id"))
    merged_into: Mapped[str | None] = mapped_column(ForeignKey("referrals.id"))
    attribution_model: Mapped[str] = mapped_column(String(32))
    policy_version: Mapped[str] = mapped_column(String(64))
    attribution_reason: Mapped[str] = mapped_column(String(64))
    outcome_amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 2))
    outcome_currency: Mapped[str | None] = mapped_column(String(3))
    outcome_close_date: Mapped[date | None] = mapped_column(Date)
    outcome_reason: Mapped[str | None] = mapped_column(String(255))
    # The open deal's amount and currency as the poll or the last reconcile read it (open pipeline
    # value in reports, per currency).
    pipeline_amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 2))
    pipeline_currency: Mapped[str | None] = mapped_column(String(3))
    revision: Mapped[int] = mapped_column(Integer, default=1)  # bumped on every attribution change
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    partner: Mapped[Partner] = relationship(lazy="joined")
    transitions: Mapped[list[StatusTransition]] = relationship(
        order_by="StatusTransition.id", back_populates="referral"
    )
    links: Mapped[list[CrmLink]] = relationship(order_by="CrmLink.id", back_populates="referral")


class StatusTransition(Base):
    __tablename__ = "status_transitions"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(32))  # import, crm_poll, expiry, manual, attribution
    crm: Mapped[str | None] = mapped_column(String(32))
    owner_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)

    referral: Mapped[Referral] = relationship(back_populates="transitions")


class CrmLink(Base):
    __tablename__ = "crm_links"
    __table_args__ = (
        UniqueConstraint("referral_id", "crm", "object", "record_id"),
        Index("ix_crm_links_record", "crm", "object", "record_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id"), index=True)
    crm: Mapped[str] = mapped_column(String(32))
    object: Mapped[str] = mapped_column(String(64))
    record_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32))  # lead, contact, account, opportunity, deal
    state: Mapped[str] = mapped_column(String(16), default="active")
    superseded_by: Mapped[int | None] = mapped_column(ForeignKey("crm_links.id"))
    owner_id: Mapped[str | None] = mapped_column(String(64))  # the CRM owner when last seen
    last_written_at: Mapped[datetime | None]  # when refsync last wrote this record (search lags writes)
    last_seen_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    referral: Mapped[Referral] = relationship(back_populates="links")


class SyncOp(Base):
    """A unit of outbound work. ``dedupe_key`` makes enqueueing idempotent."""

    __tablename__ = "sync_ops"
    __table_args__ = (Index("ix_sync_ops_claim", "state", "crm", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # push, restore, notify
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    referral_id: Mapped[str | None] = mapped_column(ForeignKey("referrals.id"), index=True)
    crm: Mapped[str] = mapped_column(String(32))
    object: Mapped[str | None] = mapped_column(String(64))
    record_id: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    last_error_class: Mapped[str | None] = mapped_column(String(64))
    last_error_code: Mapped[str | None] = mapped_column(String(128))
    last_error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    done_at: Mapped[datetime | None]


class Cursor(Base):
    __tablename__ = "cursors"

    crm: Mapped[str] = mapped_column(String(32), primary_key=True)
    object: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    referral_id: Mapped[str | None] = mapped_column(ForeignKey("referrals.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))  # import:FILE, crm:salesforce:USER, refsync, cli
    kind: Mapped[str] = mapped_column(String(64))  # submitted, attribution_decided, pushed, repaired, ...
    reason_code: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[str | None] = mapped_column(String(64))
    crm: Mapped[str | None] = mapped_column(String(32))
    object: Mapped[str | None] = mapped_column(String(64))
    record_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)

    # Declared so the unit of work inserts referrals before their events within one flush.
    referral: Mapped[Referral | None] = relationship()


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    referral_id: Mapped[str | None] = mapped_column(ForeignKey("referrals.id"))
    crm: Mapped[str | None] = mapped_column(String(32))
    record_id: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    count: Mapped[int] = mapped_column(Integer, default=1)
    resolved_at: Mapped[datetime | None]
    notified_at: Mapped[datetime | None]  # when the sinks were told; cleared when the alert reopens
    # A person took it (`refsync alerts ack`): listed, no longer paged; cleared when it reopens.
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    acknowledged_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(Text)
    # How a person closed it (accepted, credited, declined); cleared when it reopens.
    resolution: Mapped[str | None] = mapped_column(String(32))

    # Declared so the unit of work inserts a referral before an alert about it within one flush
    # (the import raises duplicate_referral in the referral's own transaction).
    referral: Mapped[Referral | None] = relationship()


class AlertSilence(Base):
    """Alerts of a kind (optionally one CRM, one record or referral) kept from the sinks until ``until``."""

    __tablename__ = "alert_silences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    crm: Mapped[str | None] = mapped_column(String(32))
    record_id: Mapped[str | None] = mapped_column(String(64))  # a CRM record id or a referral id
    until: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    note: Mapped[str | None] = mapped_column(Text)
    lifted_at: Mapped[datetime | None]  # `refsync alerts unsilence`


class JobRun(Base):
    __tablename__ = "job_runs"
    __table_args__ = (Index("ix_job_runs_job_started", "job", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job: Mapped[str] = mapped_column(String(32))  # import, push, poll, reconcile, expire
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="running")  # running, ok, failed
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)


class Lease(Base):
    """A named lease (the poller's leader election on several replicas)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]


class Worker(Base):
    """A refsync process (daemon or one-off command) that may hold op leases and the poller lease.

    It registers at start, beats while it runs and leaves at a clean exit; ops and leases held by a
    worker whose beats stopped are taken back long before their lease runs out."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # the lease owner name, host:pid
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class CrmState(Base):
    """What refsync remembers about one CRM between runs: cached schemas and stages, the fields it
    has seen, deletion-check positions. Small JSON values keyed per CRM."""

    __tablename__ = "crm_state"

    crm: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Commission(Base):
    """A commission entry: what a referral's won deal earned under one terms version, through its
    lifecycle (pending/held -> approved/rejected -> paid, or void), or a clawback (negative) after payment.
    ``seq`` numbers a referral's entries, so two replicas can never both add the same one."""

    __tablename__ = "commissions"
    __table_args__ = (
        UniqueConstraint("referral_id", "seq"),
        Index("ix_commissions_partner_status", "partner_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    kind: Mapped[str] = mapped_column(String(16))  # commission, clawback
    status: Mapped[str] = mapped_column(String(16), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)  # minor units of currency; negative for a clawback
    currency: Mapped[str] = mapped_column(String(3))
    terms_version: Mapped[str | None] = mapped_column(String(128))
    deal_amount_minor: Mapped[int | None] = mapped_column(BigInteger)  # the outcome it was computed from
    deal_currency: Mapped[str | None] = mapped_column(String(3))
    closed_on: Mapped[date | None] = mapped_column(Date)
    won_at: Mapped[datetime | None]
    # the referral's outcome (status|amount|currency|close date) this entry was last brought in line with
    facts: Mapped[str | None] = mapped_column(String(96))
    payable_after: Mapped[datetime | None]
    holds: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # [{code, detail}]
    notes: Mapped[str | None] = mapped_column(String(255))  # capped_per_deal, ... from the computation
    reason: Mapped[str | None] = mapped_column(Text)  # why the last change (rejection, void, release)
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime | None]
    paid_reference: Mapped[str | None] = mapped_column(String(255))  # payout, or the payout a clawback netted in
    paid_by: Mapped[str | None] = mapped_column(String(128))
    paid_at: Mapped[datetime | None]
    payout_id: Mapped[int | None] = mapped_column(ForeignKey("payouts.id"), index=True)  # batched for payment
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    partner: Mapped[Partner] = relationship(lazy="joined")


class Payout(Base):
    """A payout batch: one partner's approved commissions in one currency, past their hold by the end
    of a period, minus the clawbacks it nets; ``open`` until finance marks it paid (or cancels it)."""

    __tablename__ = "payouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open, paid, cancelled
    reference: Mapped[str | None] = mapped_column(String(255))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    paid_by: Mapped[str | None] = mapped_column(String(128))
    paid_at: Mapped[datetime | None]

    partner: Mapped[Partner] = relationship(lazy="joined")


# -- web access: partner portal and program dashboard (connector/web) -----------------------------


class WebUser(Base):
    """Someone who signs in to the web pages: a partner user (sees only ``partner_id``'s referrals)
    or a staff user (the program dashboard; role ``admin`` or ``viewer``). The same email may be
    both, as two separate users: partner and staff sign-in never share a session."""

    __tablename__ = "web_users"
    __table_args__ = (UniqueConstraint("kind", "email"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # partner, staff
    email: Mapped[str] = mapped_column(String(320))  # lower-cased
    partner_id: Mapped[int | None] = mapped_column(ForeignKey("partners.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # partner, admin, viewer
    password_hash: Mapped[str | None] = mapped_column(String(255))  # argon2id; None until the link is used
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    password_set_at: Mapped[datetime | None]


class WebLink(Base):
    """A one-time link that sets a user's password (an invitation). Only its SHA-256 is stored."""

    __tablename__ = "web_links"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("web_users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class WebSession(Base):
    """A signed-in browser. The cookie holds a random token; only its SHA-256 is stored, so a copy
    of the ledger signs nobody in. ``csrf_token`` is the per-session token every form carries."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("web_users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class SignInAttempt(Base):
    """One sign-in attempt, kept for the per email and address rate limit."""

    __tablename__ = "sign_in_attempts"
    __table_args__ = (Index("ix_sign_in_attempts_key", "kind", "email", "ip", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    email: Mapped[str] = mapped_column(String(320))
    ip: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    succeeded: Mapped[bool] = mapped_column(Boolean)
