"""Who may administer the PBX, and the record of what they did.

Admin accounts (argon2 password hashes, optional TOTP), login sessions and API tokens
(only SHA-256 hashes of the random values are stored), login attempts for throttling,
and the append-only audit log. Kept apart from :mod:`pbxwarden.store.db` because none
of it is on the SIP path; it shares the engine and the schema metadata.

Like :class:`~pbxwarden.store.db.Store`, every public method is one short synchronous
transaction: the HTTP layer calls them from worker threads, the CLI directly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from pbxwarden.sip.digest import Algorithm, compute_ha1
from pbxwarden.store.db import (
    Store,
    StoreError,
    check_password,
    generate_password,
    password_fingerprint,
)
from pbxwarden.store.models import Base, Extension, Tenant
from pbxwarden.store.strength import weakness

ROLES = ("read-only", "operator", "admin")
RANK = {role: i for i, role in enumerate(ROLES)}
USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
TOKEN_PREFIX = "pbxw_"
MAX_ADMIN_PASSWORD = 256
TOTP_ISSUER = "pbxwarden"
# Keys never written to the audit log, whatever a caller passes in before/after.
SECRET_KEYS = frozenset(
    {
        "password",
        "password_hash",
        "token",
        "token_hash",
        "secret",
        "totp_secret",
        "csrf_token",
        "ha1",
        "ha1_md5",
        "ha1_sha256",
        "password_fingerprint",
    }
)
LOGIN_ATTEMPT_RETENTION = 3 * 86400.0


class AdminRow(Base):
    """An administrator: a person (or a service) who logs in to the admin API."""

    __tablename__ = "admins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    # bound to one tenant: sees and changes only that tenant's resources
    tenant: Mapped[str | None] = mapped_column(
        ForeignKey("tenants.name", ondelete="CASCADE"), nullable=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id
    totp_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    totp_last_step: Mapped[int | None] = mapped_column(Integer, nullable=True)  # replay guard
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    last_login_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AdminSessionRow(Base):
    """A browser login. Only a hash of the cookie value and of the CSRF token is kept."""

    __tablename__ = "admin_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("admins.id", ondelete="CASCADE"), index=True)
    csrf_hash: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class ApiTokenRow(Base):
    """A bearer token for scripts; never more powerful than the admin who owns it."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("admins.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(16))
    tenant: Mapped[str | None] = mapped_column(
        ForeignKey("tenants.name", ondelete="CASCADE"), nullable=True, index=True
    )
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class LoginAttemptRow(Base):
    """One login attempt. The user name is kept as a hash: people type passwords into it."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_key: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(64), index=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[float] = mapped_column(Float, index=True)


class AuditRow(Base):
    """One change, who made it and from where. Append-only (database triggers refuse
    UPDATE and DELETE); before/after are JSON without secrets."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(255))
    before: Mapped[str | None] = mapped_column(Text, nullable=True)
    after: Mapped[str | None] = mapped_column(Text, nullable=True)


@dataclass(frozen=True, slots=True)
class AdminInfo:
    id: int
    username: str
    role: str
    tenant: str | None
    totp: bool
    enabled: bool


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    name: str
    scope: str  # effective: never above the owner's current role
    tenant: str | None  # effective: the owner's tenant when the owner is bound
    owner: AdminInfo
    expires_at: float | None


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def user_key(username: str) -> str:
    return sha256_hex("user:" + username.strip().lower())


def lower_role(a: str, b: str) -> str:
    return a if RANK[a] <= RANK[b] else b


def check_admin_password(username: str, password: str) -> None:
    """zxcvbn score 3 or more; raises StoreError saying why not and how to do better."""
    if len(password) > MAX_ADMIN_PASSWORD:
        raise StoreError(f"password too long: at most {MAX_ADMIN_PASSWORD} characters")
    if not password:
        raise StoreError("password is empty")
    why = weakness(password, [username, "pbxwarden", "admin"])
    if why is not None:
        raise StoreError(
            f"{why}. Use a long passphrase, or omit the password to have one generated"
        )


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            str(k): "[redacted]" if str(k).lower() in SECRET_KEYS else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def _dump(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(_redact(value), sort_keys=True, default=str)[:20000]


def _admin_info(row: AdminRow) -> AdminInfo:
    return AdminInfo(
        row.id, row.username, row.role, row.tenant, row.totp_secret is not None, row.enabled
    )


class AdminStore:
    """Admin accounts, sessions, tokens, login throttling and the audit log."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine
        self._hasher = PasswordHasher()
        self._dummy_hash: str | None = None

    # -- accounts ------------------------------------------------------------------------

    def add_admin(
        self,
        username: str,
        password: str,
        role: str = "admin",
        tenant: str | None = None,
        now: float | None = None,
    ) -> AdminInfo:
        """A new admin; the password must be strong (zxcvbn) and is stored as argon2id."""
        username = username.strip().lower()
        if not USERNAME_RE.fullmatch(username):
            raise StoreError(
                f"invalid user name {username!r}: up to 64 lowercase letters, digits, . _ @ -"
            )
        if role not in RANK:
            raise StoreError(f"invalid role {role!r}: read-only, operator or admin")
        check_admin_password(username, password)
        now = time.time() if now is None else now
        hashed = self._hasher.hash(password)
        with Session(self.engine) as s, s.begin():
            if (
                tenant is not None
                and s.scalar(select(Tenant.id).where(Tenant.name == tenant)) is None
            ):
                raise StoreError(f"unknown tenant {tenant!r}")
            if s.scalar(select(AdminRow.id).where(AdminRow.username == username)) is not None:
                raise StoreError(f"admin {username!r} already exists")
            row = AdminRow(
                username=username,
                tenant=tenant,
                role=role,
                password_hash=hashed,
                enabled=True,
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            try:
                s.flush()
            except IntegrityError:
                raise StoreError(f"admin {username!r} already exists") from None
            return _admin_info(row)

    def get_admin(self, username: str) -> AdminInfo | None:
        with Session(self.engine) as s:
            row = s.scalar(select(AdminRow).where(AdminRow.username == username.strip().lower()))
            return None if row is None else _admin_info(row)

    def list_admins(self, tenant: str | None = None) -> list[dict[str, Any]]:
        stmt = select(AdminRow).order_by(AdminRow.username)
        if tenant is not None:
            stmt = stmt.where(AdminRow.tenant == tenant)
        with Session(self.engine) as s:
            return [
                {
                    "id": r.id,
                    "username": r.username,
                    "role": r.role,
                    "tenant": r.tenant,
                    "totp": r.totp_secret is not None,
                    "enabled": r.enabled,
                    "created_at": r.created_at,
                    "last_login_at": r.last_login_at,
                }
                for r in s.scalars(stmt)
            ]

    def set_totp(self, username: str, enable: bool, now: float | None = None) -> str | None:
        """Enable TOTP with a new secret (returned, to show once) or disable it."""
        secret = pyotp.random_base32() if enable else None
        with Session(self.engine) as s, s.begin():
            row = s.scalar(select(AdminRow).where(AdminRow.username == username.strip().lower()))
            if row is None:
                raise StoreError(f"no admin {username!r}")
            row.totp_secret = secret
            row.totp_last_step = None
            row.updated_at = time.time() if now is None else now
            # a new second factor ends the sessions opened without it
            s.execute(delete(AdminSessionRow).where(AdminSessionRow.admin_id == row.id))
        return secret

    @staticmethod
    def provisioning_uri(username: str, secret: str) -> str:
        return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)

    # -- login ---------------------------------------------------------------------------

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    def verify_login(
        self, username: str, password: str, totp: str | None, now: float | None = None
    ) -> AdminInfo | None:
        """The admin when the password (and the TOTP code, when enabled) is right.

        An unknown user costs the same argon2 verification as a wrong password, and
        every failure is the same None: nothing tells which part was wrong.
        """
        now = time.time() if now is None else now
        with Session(self.engine) as s:
            row = s.scalar(select(AdminRow).where(AdminRow.username == username.strip().lower()))
            info = None if row is None else _admin_info(row)
            stored = self._dummy() if row is None else row.password_hash
            totp_secret = None if row is None else row.totp_secret
        # argon2 outside any transaction: it is slow on purpose
        password_ok = self._verify(stored, password)
        if info is None or not password_ok or not info.enabled:
            return None
        values: dict[str, Any] = {"last_login_at": now}
        guard = AdminRow.id == info.id
        if totp_secret is not None:
            step = self._totp_step(totp_secret, totp or "", now)
            if step is None:
                return None
            values["totp_last_step"] = step
            # atomic replay guard: a code (time step) is accepted once
            guard = guard & (AdminRow.totp_last_step.is_(None) | (AdminRow.totp_last_step < step))
        if self._hasher.check_needs_rehash(stored):
            values["password_hash"] = self._hasher.hash(password)
        with self.engine.begin() as conn:
            if conn.execute(update(AdminRow).where(guard).values(**values)).rowcount != 1:
                return None
        return info

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    @staticmethod
    def _totp_step(secret: str, code: str, now: float) -> int | None:
        code = code.strip().replace(" ", "")
        if not re.fullmatch(r"[0-9]{6}", code):
            return None
        totp = pyotp.TOTP(secret)
        step = int(now // totp.interval)
        for candidate in (step, step - 1, step + 1):  # one step of clock drift either way
            if hmac.compare_digest(totp.at(candidate * totp.interval), code):
                return candidate
        return None

    def record_login(self, username: str, source: str, ok: bool, now: float) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(LoginAttemptRow(user_key=user_key(username), source=source[:64], ok=ok, at=now))
            s.execute(
                delete(LoginAttemptRow).where(LoginAttemptRow.at < now - LOGIN_ATTEMPT_RETENTION)
            )

    def login_retry_after(
        self,
        username: str,
        source: str,
        now: float,
        user_limit: int,
        source_limit: int,
        window: float,
        lockout: float,
    ) -> float:
        """Seconds until this user name and source may try again (0: now).

        Locked when ``limit`` failures fall within ``window``: then for ``lockout``
        seconds after the last one. A success resets the user name's count, not the
        source's (one good account must not reset guessing at the others).
        """
        horizon = now - window - lockout
        key = user_key(username)
        with Session(self.engine) as s:
            last_ok = s.scalar(
                select(func.max(LoginAttemptRow.at)).where(
                    LoginAttemptRow.user_key == key, LoginAttemptRow.ok.is_(True)
                )
            )
            until = 0.0
            for column, value, limit, since in (
                (LoginAttemptRow.user_key, key, user_limit, max(horizon, last_ok or horizon)),
                (LoginAttemptRow.source, source[:64], source_limit, horizon),
            ):
                times = list(
                    s.scalars(
                        select(LoginAttemptRow.at)
                        .where(column == value, LoginAttemptRow.ok.is_(False))
                        .where(LoginAttemptRow.at > since)
                        .order_by(LoginAttemptRow.at.desc())
                        .limit(limit)
                    )
                )
                if len(times) >= limit and times[0] - times[-1] <= window:
                    until = max(until, times[0] + lockout)
        return max(0.0, until - now)

    # -- sessions ------------------------------------------------------------------------

    def create_session(
        self, admin_id: int, source: str, now: float, lifetime: float
    ) -> tuple[str, str]:
        """(session id, CSRF token): 256-bit random values, returned once, stored hashed."""
        sid = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        with Session(self.engine) as s, s.begin():
            s.execute(delete(AdminSessionRow).where(AdminSessionRow.expires_at <= now))
            s.add(
                AdminSessionRow(
                    id_hash=sha256_hex(sid),
                    admin_id=admin_id,
                    csrf_hash=sha256_hex(csrf),
                    source=source[:64],
                    created_at=now,
                    expires_at=now + lifetime,
                )
            )
        return sid, csrf

    def session_admin(self, sid: str, now: float) -> tuple[AdminInfo, str, float] | None:
        """(admin, CSRF token hash, expiry) of a live session of an enabled admin."""
        stmt = (
            select(AdminRow, AdminSessionRow.csrf_hash, AdminSessionRow.expires_at)
            .join(AdminRow, AdminRow.id == AdminSessionRow.admin_id)
            .where(AdminSessionRow.id_hash == sha256_hex(sid), AdminSessionRow.expires_at > now)
        )
        with Session(self.engine) as s:
            row = s.execute(stmt).first()
            if row is None or not row[0].enabled:
                return None
            return _admin_info(row[0]), row[1], row[2]

    def delete_session(self, sid: str) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(delete(AdminSessionRow).where(AdminSessionRow.id_hash == sha256_hex(sid)))

    # -- API tokens ----------------------------------------------------------------------

    def create_token(
        self,
        username: str,
        name: str,
        scope: str,
        tenant: str | None = None,
        expires_at: float | None = None,
        now: float | None = None,
    ) -> tuple[dict[str, Any], str]:
        """(token description, the token itself): the token is shown once, never stored."""
        if scope not in RANK:
            raise StoreError(f"invalid scope {scope!r}: read-only, operator or admin")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,63}", name):
            raise StoreError(f"invalid token name {name!r}: letters, digits, space . _ @ : -")
        now = time.time() if now is None else now
        if expires_at is not None and expires_at <= now:
            raise StoreError("the token would already be expired")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with Session(self.engine) as s, s.begin():
            owner = s.scalar(select(AdminRow).where(AdminRow.username == username.strip().lower()))
            if owner is None:
                raise StoreError(f"no admin {username!r}")
            if RANK[scope] > RANK[owner.role]:
                raise StoreError(
                    f"scope {scope} is above {owner.username}'s role ({owner.role}); "
                    "a token cannot do more than its owner"
                )
            if owner.tenant is not None:
                if tenant not in (None, owner.tenant):
                    raise StoreError(f"unknown tenant {tenant!r}")
                tenant = owner.tenant
            elif (
                tenant is not None
                and s.scalar(select(Tenant.id).where(Tenant.name == tenant)) is None
            ):
                raise StoreError(f"unknown tenant {tenant!r}")
            row = ApiTokenRow(
                name=name,
                token_hash=sha256_hex(token),
                admin_id=owner.id,
                scope=scope,
                tenant=tenant,
                created_at=now,
                expires_at=expires_at,
            )
            s.add(row)
            s.flush()
            return self._token_dict(row, owner.username), token

    @staticmethod
    def _token_dict(row: ApiTokenRow, owner: str) -> dict[str, Any]:
        return {
            "id": row.id,
            "name": row.name,
            "owner": owner,
            "scope": row.scope,
            "tenant": row.tenant,
            "created_at": row.created_at,
            "expires_at": row.expires_at,
            "revoked_at": row.revoked_at,
            "last_used_at": row.last_used_at,
        }

    def token_info(self, token: str, now: float) -> TokenInfo | None:
        """The token's effective rights, or None (unknown, expired, revoked, owner gone)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        with Session(self.engine) as s, s.begin():
            found = s.execute(
                select(ApiTokenRow, AdminRow)
                .join(AdminRow, AdminRow.id == ApiTokenRow.admin_id)
                .where(ApiTokenRow.token_hash == sha256_hex(token))
            ).first()
            if found is None:
                return None
            row, owner = found
            if row.revoked_at is not None or not owner.enabled:
                return None
            if row.expires_at is not None and row.expires_at <= now:
                return None
            if row.last_used_at is None or row.last_used_at < now - 60:
                row.last_used_at = now
            return TokenInfo(
                row.id,
                row.name,
                lower_role(row.scope, owner.role),
                owner.tenant if owner.tenant is not None else row.tenant,
                _admin_info(owner),
                row.expires_at,
            )

    def list_tokens(self, tenant: str | None = None) -> list[dict[str, Any]]:
        stmt = (
            select(ApiTokenRow, AdminRow.username)
            .join(AdminRow, AdminRow.id == ApiTokenRow.admin_id)
            .order_by(ApiTokenRow.id)
        )
        if tenant is not None:
            stmt = stmt.where(ApiTokenRow.tenant == tenant)
        with Session(self.engine) as s:
            return [self._token_dict(r, u) for r, u in s.execute(stmt)]

    def revoke_token(
        self, token_id: int, now: float | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        """Revoke (for good); ``tenant`` limits it to that tenant's tokens. Returns the
        token's description as it was before."""
        now = time.time() if now is None else now
        with Session(self.engine) as s, s.begin():
            found = s.execute(
                select(ApiTokenRow, AdminRow.username)
                .join(AdminRow, AdminRow.id == ApiTokenRow.admin_id)
                .where(ApiTokenRow.id == token_id)
            ).first()
            if found is None or (tenant is not None and found[0].tenant != tenant):
                raise StoreError(f"no token {token_id}")
            row, owner = found
            if row.revoked_at is not None:
                raise StoreError(f"token {token_id} is already revoked")
            before = self._token_dict(row, owner)
            row.revoked_at = now
            return before

    # -- audit log -----------------------------------------------------------------------

    def audit(
        self,
        actor: str,
        source: str,
        action: str,
        resource: str,
        before: Any = None,
        after: Any = None,
        tenant: str | None = None,
        now: float | None = None,
    ) -> int:
        """Append one entry. Secrets in before/after are replaced by ``[redacted]``."""
        with Session(self.engine) as s, s.begin():
            row = AuditRow(
                at=time.time() if now is None else now,
                actor=actor[:128],
                source=source[:64],
                tenant=None if tenant is None else tenant[:64],
                action=action[:64],
                resource=resource[:255],
                before=_dump(before),
                after=_dump(after),
            )
            s.add(row)
            s.flush()
            return row.id

    def list_audit(
        self, tenant: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; ``before_id`` pages back from an id already seen."""
        stmt = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if tenant is not None:
            stmt = stmt.where(AuditRow.tenant == tenant)
        if before_id is not None:
            stmt = stmt.where(AuditRow.id < before_id)
        with Session(self.engine) as s:
            return [
                {
                    "id": r.id,
                    "at": r.at,
                    "actor": r.actor,
                    "source": r.source,
                    "tenant": r.tenant,
                    "action": r.action,
                    "resource": r.resource,
                    "before": None if r.before is None else json.loads(r.before),
                    "after": None if r.after is None else json.loads(r.after),
                }
                for r in s.scalars(stmt)
            ]

    # -- extension passwords -------------------------------------------------------------

    def rotate_extension_password(
        self,
        tenant: str,
        number: str,
        password: str | None = None,
        fingerprint_key: bytes | None = None,
    ) -> str:
        """Replace an extension's SIP password (generated unless given); returns it.

        Only the HA1 hashes (and the password fingerprint: new with ``fingerprint_key``,
        else cleared, never left describing the old password) change; a running server
        picks them up within a second (``updated_at``). Belongs in Store; here until it
        moves there.
        """
        password = generate_password() if password is None else password
        check_password(number, password)
        now = time.time()
        with Session(self.engine) as s, s.begin():
            ext = s.scalar(
                select(Extension)
                .join(Tenant, Tenant.id == Extension.tenant_id)
                .where(Tenant.name == tenant, Extension.number == number)
            )
            if ext is None:
                raise StoreError(f"no extension {number} in tenant {tenant}")
            s.execute(
                update(Extension)
                .where(Extension.id == ext.id)
                .values(
                    ha1_md5=compute_ha1(number, ext.realm, password, Algorithm.MD5),
                    ha1_sha256=compute_ha1(number, ext.realm, password, Algorithm.SHA256),
                    password_fingerprint=(
                        None
                        if fingerprint_key is None
                        else password_fingerprint(fingerprint_key, password)
                    ),
                    password_changed_at=now,
                    updated_at=now,
                )
            )
        return password
