"""Who may sign in to the web pages, and who is signed in: users, one-time links, sessions and
sign-in attempts (the tables of :mod:`state.models` under "web access").

Tokens (link and session) leave here once, raw, to be put in a URL or a cookie; the ledger keeps
only their SHA-256, so a copy of the ledger (a backup, a read replica) signs nobody in. Passwords
arrive already hashed (argon2, :mod:`connector.web.auth`).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session as OrmSession

from refsync.errors import InputError
from refsync.state.ledger import Ledger
from refsync.state.models import Partner, SignInAttempt, WebLink, WebSession, WebUser

KINDS = ("partner", "staff")
STAFF_ROLES = ("admin", "viewer")


def token_hash(token: str) -> str:
    """How a link or session token is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> str:
    """256 random bits, URL- and cookie-safe."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class User:
    id: int
    kind: str  # partner, staff
    email: str
    role: str  # partner, admin, viewer
    partner_id: int | None
    partner_code: str | None
    password_hash: str | None = None


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires_at: datetime


def _user(row: WebUser, partner_code: str | None) -> User:
    return User(row.id, row.kind, row.email, row.role, row.partner_id, partner_code, row.password_hash)


def _partner_code(session: OrmSession, partner_id: int | None) -> str | None:
    return session.scalar(select(Partner.code).where(Partner.id == partner_id)) if partner_id else None


def invite(ledger: Ledger, kind: str, email: str, role: str, valid_for: timedelta, *,
           partner_code: str | None = None, create_partner: bool = False) -> tuple[User, str]:
    """Create the user (or find it: inviting again is how a password is reset) and a fresh one-time
    link; earlier unused links of the user stop working. The user and the raw link token."""
    if kind not in KINDS:
        raise ValueError(f"unknown user kind {kind}")
    email = email.strip().lower()
    now = ledger.clock()
    with ledger.transaction() as txn:
        partner_id = None
        if kind == "partner":
            assert partner_code is not None
            partner_id = txn.session.scalar(select(Partner.id).where(Partner.code == partner_code))
            if partner_id is None:
                if not create_partner:
                    raise InputError(f"no partner with code {partner_code}; `refsync partners list` shows the codes "
                                     "(add --create to invite the first user of a new partner)")
                partner_id = txn.partner_id(partner_code)
        user = txn.session.scalar(select(WebUser).where(WebUser.kind == kind, WebUser.email == email))
        if user is None:
            user = WebUser(kind=kind, email=email, role=role, partner_id=partner_id, created_at=now)
            txn.session.add(user)
            txn.session.flush()
        elif user.partner_id != partner_id:
            owner = _partner_code(txn.session, user.partner_id)
            raise InputError(f"{email} is already a user of partner {owner}; a partner user belongs to one partner "
                             "(invite another address)")
        else:
            user.role = role
        txn.session.execute(update(WebLink).where(WebLink.user_id == user.id, WebLink.used_at.is_(None))
                            .values(used_at=now))
        token = new_token()
        txn.session.add(WebLink(token_hash=token_hash(token), user_id=user.id, created_at=now,
                                expires_at=now + valid_for))
        txn.add_audit(None, "web_user_invited", "invited", "cli",
                      detail={"kind": kind, "email": email, "role": role, "partner": partner_code})
        return _user(user, partner_code), token


def link_user(ledger: Ledger, token: str) -> User | None:
    """The user a one-time link is for, while the link is unused and unexpired."""
    now = ledger.clock()
    with ledger.reading() as session:
        row = session.execute(select(WebUser, WebLink.expires_at).join(WebLink, WebLink.user_id == WebUser.id)
                              .where(WebLink.token_hash == token_hash(token), WebLink.used_at.is_(None))).first()
        if row is None or row[1] <= now:
            return None
        return _user(row[0], _partner_code(session, row[0].partner_id))


def use_link(ledger: Ledger, token: str, password_hash: str, session_token: str, csrf_token: str,
             session_for: timedelta, ip: str) -> User | None:
    """Set the password of the link's user and sign them in, in one transaction; the link is
    spent and every earlier session of the user ends (a new password signs out the old ones).
    None when the link is unknown, used or expired."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        link = txn.session.get(WebLink, token_hash(token))
        if link is None or link.used_at is not None or link.expires_at <= now:
            return None
        link.used_at = now
        user = txn.session.get(WebUser, link.user_id)
        assert user is not None  # a foreign key
        user.password_hash = password_hash
        user.password_set_at = now
        txn.session.execute(delete(WebSession).where(WebSession.user_id == user.id))
        txn.session.add(WebSession(token_hash=token_hash(session_token), user_id=user.id, csrf_token=csrf_token,
                                   created_at=now, expires_at=now + session_for, last_seen_at=now))
        txn.add_audit(None, "sign_in", "password_set", f"web:{user.kind}", detail={"email": user.email, "ip": ip})
        return _user(user, _partner_code(txn.session, user.partner_id))


def user_for_sign_in(ledger: Ledger, kind: str, email: str) -> User | None:
    """The user of this kind and email, with its password hash; None when there is none."""
    with ledger.reading() as session:
        user = session.scalar(select(WebUser).where(WebUser.kind == kind, WebUser.email == email.strip().lower()))
        return _user(user, _partner_code(session, user.partner_id)) if user else None


def recent_failures(ledger: Ledger, kind: str, email: str, ip: str, window: timedelta) -> int:
    """Failed sign-ins of this email from this address within ``window``, since the last success."""
    since = ledger.clock() - window
    email = email.strip().lower()
    with ledger.reading() as session:
        key = (SignInAttempt.kind == kind, SignInAttempt.email == email, SignInAttempt.ip == ip)
        last_ok = session.scalar(select(func.max(SignInAttempt.at)).where(*key, SignInAttempt.succeeded.is_(True)))
        start = max(since, last_ok) if last_ok else since
        return int(session.scalar(select(func.count()).select_from(SignInAttempt).where(
            *key, SignInAttempt.succeeded.is_(False), SignInAttempt.at >= start)) or 0)


def record_sign_in(ledger: Ledger, kind: str, email: str, ip: str, outcome: str, *,
                   user_id: int | None = None, session_token: str | None = None, csrf_token: str | None = None,
                   session_for: timedelta | None = None, replaces: str | None = None) -> None:
    """One sign-in attempt with its audit event (``sign_in``, reason ``succeeded``, ``failed`` or
    ``rate_limited``); on success the new session, replacing the browser's previous one."""
    now = ledger.clock()
    email = email.strip().lower()[:320]
    with ledger.transaction() as txn:
        if outcome != "rate_limited":  # a refused attempt does not extend its own lock-out
            txn.session.add(SignInAttempt(kind=kind, email=email, ip=ip[:64], at=now,
                                          succeeded=outcome == "succeeded"))
        if outcome == "succeeded":
            assert user_id is not None and session_token and csrf_token and session_for
            if replaces:
                txn.session.execute(delete(WebSession).where(WebSession.token_hash == token_hash(replaces)))
            txn.session.execute(delete(WebSession).where(WebSession.user_id == user_id, WebSession.expires_at <= now))
            txn.session.add(WebSession(token_hash=token_hash(session_token), user_id=user_id, csrf_token=csrf_token,
                                       created_at=now, expires_at=now + session_for, last_seen_at=now))
        txn.add_audit(None, "sign_in", outcome, f"web:{kind}", detail={"email": email, "ip": ip})


def session(ledger: Ledger, token: str) -> Session | None:
    """The signed-in user of a session token, while the session lasts."""
    now = ledger.clock()
    with ledger.reading() as session:
        row = session.execute(select(WebSession, WebUser).join(WebUser, WebUser.id == WebSession.user_id)
                              .where(WebSession.token_hash == token_hash(token))).first()
        if row is None or row[0].expires_at <= now:
            return None
        web_session, user = row
        return Session(_user(user, _partner_code(session, user.partner_id)), web_session.csrf_token,
                       web_session.expires_at)


def end_session(ledger: Ledger, token: str, user: User, *, everywhere: bool = False) -> int:
    """Sign out this browser, or every session of the user; how many sessions ended."""
    with ledger.transaction() as txn:
        where = WebSession.user_id == user.id if everywhere else WebSession.token_hash == token_hash(token)
        ended = txn.session.execute(delete(WebSession).where(where))
        txn.add_audit(None, "sign_out", "everywhere" if everywhere else "this_browser", f"web:{user.kind}",
                      detail={"email": user.email})
        return int(getattr(ended, "rowcount", 0) or 0)


def users(ledger: Ledger) -> list[dict[str, Any]]:
    """Every web user (no secret: whether a password is set, not its hash)."""
    with ledger.reading() as session:
        rows = session.execute(select(WebUser, Partner.code).outerjoin(Partner, Partner.id == WebUser.partner_id)
                                   .order_by(WebUser.kind, WebUser.email))
        return [{"kind": u.kind, "email": u.email, "role": u.role, "partner": code,
                 "password_set": u.password_hash is not None, "created_at": u.created_at.isoformat()}
                for u, code in rows]


def audit(ledger: Ledger, kind: str, reason: str, actor: str, detail: dict[str, Any]) -> None:
    """An audit event of the web layer that concerns no single referral (a submission's summary)."""
    with ledger.transaction() as txn:
        txn.add_audit(None, kind, reason, actor, detail=detail)
