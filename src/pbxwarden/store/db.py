"""Storage access: one :class:`Store` over SQLAlchemy, SQLite (WAL) or PostgreSQL.

Synchronous on purpose: the asyncio layer calls it from a worker thread, and the CLI
calls it directly. Every public method is one short transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, func, literal_column, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pbxwarden.pbx.dialplan import Group, TimeCondition, parse_windows
from pbxwarden.pbx.locate import check_networks, trunk_target
from pbxwarden.pbx.numbers import classify, emergency_number
from pbxwarden.pbx.routing import Did, Routing, Trunk
from pbxwarden.sip.digest import Algorithm, compute_ha1
from pbxwarden.store import baselines
from pbxwarden.store.basics import DEFAULT_TENANT as DEFAULT_TENANT
from pbxwarden.store.basics import StoreError as StoreError
from pbxwarden.store.basics import generate_password as generate_password
from pbxwarden.store.basics import password_fingerprint_key as password_fingerprint_key
from pbxwarden.store.credentials import CredentialError, open_password, seal_password
from pbxwarden.store.models import (
    AlertRow,
    BanRow,
    Cdr,
    DidRow,
    Extension,
    ExtensionLockRow,
    ExtensionNetwork,
    ForwardingChange,
    Registration,
    RingGroupRow,
    Tenant,
    TenantPolicyRow,
    TimeConditionRow,
    TrunkRow,
)
from pbxwarden.store.strength import weakness

_MD5, _SHA256 = Algorithm.MD5, Algorithm.SHA256

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
EXTENSION_RE = re.compile(r"[0-9]{2,15}")
TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
REALM_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253}[A-Za-z0-9])?")
COUNTRY_RE = re.compile(r"[A-Z]{2}")
MIN_PASSWORD_LENGTH = 12
FORWARD_KINDS = ("always", "busy", "noanswer")
# Trunk user names go into From/To URIs unescaped, so only URI-safe characters.
TRUNK_USER_RE = re.compile(r"[A-Za-z0-9._~+-]{1,128}")
TRUNK_REALM_RE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,255}")


class ResumeRefused(StoreError):
    """Resuming an extension suspended for fraud before its password changed."""


@dataclass(frozen=True, slots=True)
class ExtensionAuth:
    """What the registrar needs to authenticate an extension, cached in memory."""

    id: int
    tenant: str
    number: str
    realm: str
    ha1: dict[Algorithm, str]
    enabled: bool
    # Networks the extension may register and call from; empty means anywhere.
    networks: tuple[IPNetwork, ...] = ()
    forward_always: str | None = None
    forward_busy: str | None = None
    forward_noanswer: str | None = None
    noanswer_after: float = 20.0
    # when the SIP password was last set (None: since the extension was made): a new
    # password means the old registrations and calls may be an attacker's
    password_changed_at: float | None = None
    # may use its credentials from a trunk's address (pbxwarden.firewall.locks)
    trunk_access: bool = False
    caller_id: str | None = None  # chosen outbound caller ID (pbxwarden.pbx.caller_id)
    withhold_caller_id: bool = False

    def allows(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


def parse_networks(text: str | None) -> tuple[IPNetwork, ...]:
    """``"192.0.2.0/24, 2001:db8::/48"`` -> networks; raises StoreError naming a bad one."""
    if not text:
        return ()
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise StoreError(f"not a network: {part!r} (use CIDR, e.g. 192.0.2.0/24)") from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class BindingRow:
    extension_id: int
    contact: str
    expires_at: float
    q: float | None
    call_id: str
    cseq: int
    source: str
    user_agent: str | None
    registered_at: float = 0.0  # when this contact first registered (refreshes keep it)


def binding_id(extension_id: int, contact: str) -> str:
    """A short stable handle for one binding, for an admin to name it (a contact URI is
    long and full of characters a shell or a URL would have to escape)."""
    return hashlib.sha256(f"{extension_id}\n{contact}".encode()).hexdigest()[:12]


def binding_view(tenant: str, number: str, b: BindingRow, now: float) -> dict[str, Any]:
    """One binding as the CLI, the API and the dashboard show it."""
    own, _, front = b.source.partition(" via ")  # relayed by a SIP front
    transport, _, address = own.partition(":")
    return {
        "tenant": tenant,
        "number": number,
        "id": binding_id(b.extension_id, b.contact),
        "source": b.source,  # as the registrar wrote it: udp:192.0.2.7:5060
        "address": address or b.source,
        "front": front or None,
        "transport": transport.upper() if address else None,
        "user_agent": b.user_agent,
        "registered_at": b.registered_at or None,
        "expires_at": b.expires_at,
        "expires_in": max(0, int(b.expires_at - now)),
        "contact": b.contact,
    }


def password_fingerprint(key: bytes, password: str) -> str:
    """HMAC-SHA256 of a SIP password: equal for equal passwords, whatever the extension
    (HA1 hashes include the user name, so they cannot show a password used twice), and
    useless to someone who has the database but not the install secret."""
    return hmac.new(key, password.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


DEFAULT_REGISTER_EXPIRES = 3600


def _check_trunk_credentials(
    username: str | None,
    password: str | None,
    realm: str | None,
    register: bool,
    register_expires: int | None,
) -> None:
    """Refuse credentials that could not work or would break a header, before storing them."""
    if (username is None) != (password is None):
        raise StoreError("trunk credentials need both a username and a password")
    if username is not None and not TRUNK_USER_RE.fullmatch(username):
        raise StoreError(
            f"invalid trunk username {username[:40]!r}: letters, digits and . _ ~ + - only"
        )
    if password is not None and (
        not password or len(password) > 256 or any(ord(c) < 0x20 or c == "\x7f" for c in password)
    ):
        raise StoreError("invalid trunk password: 1 to 256 characters, no control characters")
    if realm is not None and not TRUNK_REALM_RE.fullmatch(realm):
        raise StoreError(f"invalid realm {realm[:40]!r}")
    if register and username is None:
        raise StoreError("registering a trunk needs --username and --password")
    if register_expires is not None and not 60 <= register_expires <= 86400:
        raise StoreError("register expiry must be between 60 and 86400 seconds")


def _open_trunk_password(key: bytes | None, row: TrunkRow, tenant: str) -> str | None:
    if key is None or row.password_sealed is None:
        return None
    try:
        return open_password(key, row.password_sealed, tenant, row.name)
    except CredentialError:
        return None


def check_password(number: str, password: str) -> None:
    """A SIP password strong enough to survive guessing: length, then zxcvbn's estimate
    (the same as for admin passwords, :func:`pbxwarden.store.strength.weakness`)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise StoreError(
            f"password too short: use at least {MIN_PASSWORD_LENGTH} characters, "
            "or omit --password to have a strong one generated"
        )
    if number in password or len(set(password)) < 6:
        raise StoreError("password too guessable: it contains the extension number or repeats")
    if any(ord(c) < 0x20 or c == "\x7f" for c in password):
        raise StoreError("invalid password: no control characters")
    why = weakness(password, [number, "pbxwarden", "sip"])
    if why is not None:
        raise StoreError(
            f"{why}. Use a long passphrase, or omit the password to have a strong one generated"
        )


def _lock_in_force(
    until: float | None, made: float | None, pw_at: float | None, now: float
) -> bool:
    """A stored extension lock still in force: neither ended nor outdated by a new password."""
    return until is not None and until > now and (pw_at or 0.0) < (made or 0.0)


def _known_region(country: str) -> bool:
    """A country whose numbers libphonenumber can parse (``XX`` or ``ZZ`` are not)."""
    import phonenumbers

    return country in phonenumbers.SUPPORTED_REGIONS


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def make_engine(url: str) -> Engine:
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (Alembic only loaded when needed)."""
    from pbxwarden.store.schema import at_head

    if at_head(engine):
        return
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    def migrate(self) -> None:
        migrate(self.engine)

    # -- tenants -------------------------------------------------------------------------

    def ensure_tenant(self, name: str, realm: str, country: str = "US") -> int:
        if not TENANT_RE.fullmatch(name):
            raise StoreError(f"invalid tenant name {name!r}: lowercase letters, digits, - and _")
        with Session(self.engine) as s, s.begin():
            tenant = s.scalar(select(Tenant).where(Tenant.name == name))
            if tenant is None:
                if s.scalar(select(Tenant).where(Tenant.realm == realm)) is not None:
                    raise StoreError(f"realm {realm!r} already belongs to another tenant")
                tenant = Tenant(name=name, realm=realm, country=country, created_at=time.time())
                s.add(tenant)
                s.flush()
            return tenant.id

    def add_tenant(self, name: str, realm: str, country: str = "US") -> int:
        """A new tenant; its realm is the SIP domain its phones register to."""
        if not REALM_RE.fullmatch(realm):
            raise StoreError(f"invalid realm {realm!r}: use the tenant's SIP domain name")
        country = country.strip().upper()
        if not COUNTRY_RE.fullmatch(country) or not _known_region(country):
            raise StoreError(
                f"invalid country {country!r}: a two-letter ISO 3166 code libphonenumber "
                "knows, such as US, GB, DE (numbers are judged by the tenant's country)"
            )
        with Session(self.engine) as s:
            if s.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
                raise StoreError(f"tenant {name!r} already exists")
        return self.ensure_tenant(name, realm, country)

    def list_tenants(self) -> list[dict[str, Any]]:
        stmt = (
            select(Tenant.name, Tenant.realm, Tenant.country, func.count(Extension.id))
            .outerjoin(Extension, Extension.tenant_id == Tenant.id)
            .group_by(Tenant.id)
            .order_by(Tenant.name)
        )
        with self.engine.connect() as conn:
            return [
                {"tenant": n, "realm": r, "country": c, "extensions": k}
                for n, r, c, k in conn.execute(stmt)
            ]

    def tenant_realm(self, name: str) -> str:
        with Session(self.engine) as s:
            realm = s.scalar(select(Tenant.realm).where(Tenant.name == name))
        if realm is None:
            raise StoreError(f"unknown tenant {name!r}")
        return realm

    # -- extensions ----------------------------------------------------------------------

    def add_extensions(
        self,
        entries: Iterable[tuple[str, str]],
        tenant: str = DEFAULT_TENANT,
        display_name: str | None = None,
        fingerprint_key: bytes | None = None,
    ) -> int:
        """Add (number, password) pairs in one transaction: all or nothing.

        With ``fingerprint_key`` (:func:`password_fingerprint_key`) a keyed fingerprint
        of each password is kept too, so that ``pbxwarden audit`` can see a password
        used by two extensions."""
        now = time.time()
        with Session(self.engine) as s, s.begin():
            row = s.execute(
                select(Tenant.id, Tenant.realm, Tenant.country).where(Tenant.name == tenant)
            ).first()
            if row is None:
                raise StoreError(f"unknown tenant {tenant!r} (run 'pbxwarden init' first?)")
            tenant_id, realm, country = row
            count = 0
            groups = set(
                s.scalars(select(RingGroupRow.number).where(RingGroupRow.tenant_id == tenant_id))
            ) | set(
                s.scalars(
                    select(TimeConditionRow.number).where(TimeConditionRow.tenant_id == tenant_id)
                )
            )
            for number, password in entries:
                if number in groups:
                    raise StoreError(f"{number} is a ring group or time condition of {tenant}")
                if not EXTENSION_RE.fullmatch(number):
                    raise StoreError(f"invalid extension number {number!r}: 2 to 15 digits")
                if emergency_number(number, country) is not None:
                    raise StoreError(
                        f"{number} dials an emergency number in {country}: it cannot be an "
                        "extension (emergency calls must always reach the emergency services)"
                    )
                check_password(number, password)
                s.add(
                    Extension(
                        tenant_id=tenant_id,
                        number=number,
                        display_name=display_name,
                        realm=realm,
                        ha1_md5=compute_ha1(number, realm, password, Algorithm.MD5),
                        ha1_sha256=compute_ha1(number, realm, password, Algorithm.SHA256),
                        password_fingerprint=(
                            None
                            if fingerprint_key is None
                            else password_fingerprint(fingerprint_key, password)
                        ),
                        enabled=True,
                        created_at=now,
                        updated_at=now,
                    )
                )
                count += 1
            try:
                s.flush()
            except IntegrityError:
                raise StoreError("extension already exists (in this tenant)") from None
            return count

    def list_extensions(self, tenant: str | None = None) -> list[dict[str, Any]]:
        stmt = (
            select(
                Tenant.name,
                Extension.number,
                Extension.display_name,
                Extension.enabled,
                Extension.acl,
                Extension.suspended_reason,
                func.count(Registration.id),
                Extension.trunk_access,
                Extension.password_changed_at,
                Extension.caller_id,
                Extension.withhold_caller_id,
                ExtensionLockRow.until,
                ExtensionLockRow.created_at,
                ExtensionLockRow.reason,
            )
            .join(Tenant, Tenant.id == Extension.tenant_id)
            .outerjoin(
                Registration,
                (Registration.extension_id == Extension.id)
                & (Registration.expires_at > time.time()),
            )
            .outerjoin(ExtensionLockRow, ExtensionLockRow.extension_id == Extension.id)
            .group_by(
                Extension.id,
                Tenant.name,
                ExtensionLockRow.extension_id,
                ExtensionLockRow.until,
                ExtensionLockRow.created_at,
                ExtensionLockRow.reason,
            )
            .order_by(Tenant.name, Extension.number)
        )
        if tenant is not None:
            stmt = stmt.where(Tenant.name == tenant)
        now = time.time()
        with Session(self.engine) as s:
            return [
                {
                    "tenant": t,
                    "number": n,
                    "display_name": d,
                    "enabled": e,
                    "networks": acl,
                    "suspended": sus,
                    "registrations": c,
                    # a lock in force: until it expires, a new password or an admin lifts it
                    "locked_until": until if _lock_in_force(until, made, pw_at, now) else None,
                    "lock_reason": why if _lock_in_force(until, made, pw_at, now) else None,
                    "trunk_access": bool(trunk),
                    "caller_id": cid,
                    "withhold_caller_id": bool(withhold),
                }
                for t, n, d, e, acl, sus, c, trunk, pw_at, cid, withhold, until, made, why in (
                    s.execute(stmt)
                )
            ]

    _AUTH_COLUMNS = (
        Extension.id,
        Tenant.name,
        Extension.number,
        Extension.realm,
        Extension.ha1_md5,
        Extension.ha1_sha256,
        Extension.enabled,
        Extension.acl,
        Extension.forward_always,
        Extension.forward_busy,
        Extension.forward_noanswer,
        Extension.noanswer_after,
        Extension.password_changed_at,
        Extension.trunk_access,
        Extension.caller_id,
        Extension.withhold_caller_id,
    )

    @staticmethod
    def _auth_row(row: Any) -> ExtensionAuth:
        # Once per extension at every start (50,000 of them, in every process): one
        # unpacking, no parsing for the common "no ACL", the enum members looked up once.
        (
            ext_id,
            tenant,
            num,
            ext_realm,
            md5,
            sha256,
            enabled,
            acl,
            fa,
            fb,
            fn,
            after,
            pw_at,
            tr,
            cid,
            withhold,
        ) = row
        networks: tuple[IPNetwork, ...] = ()
        if acl:
            try:
                networks = parse_networks(acl)
            except StoreError:  # validated on write; never let one bad row stop the server
                networks = (ipaddress.ip_network("0.0.0.0/32"),)  # fail closed
        return ExtensionAuth(
            ext_id,
            tenant,
            num,
            ext_realm,
            {_MD5: md5, _SHA256: sha256},
            enabled,
            networks,
            fa,
            fb,
            fn,
            float(after or 20.0),
            pw_at,
            bool(tr),
            cid,
            bool(withhold),
        )

    def set_acl(self, tenant: str, number: str, networks: str | None) -> None:
        """Restrict where an extension may register from (None: anywhere)."""
        parsed = parse_networks(networks)
        text = ", ".join(str(n) for n in parsed) or None
        with Session(self.engine) as s, s.begin():
            ext = self._extension_row(s, tenant, number)
            ext.acl = text
            ext.updated_at = time.time()

    def extension_auth(self, realm: str, number: str) -> ExtensionAuth | None:
        stmt = (
            select(*self._AUTH_COLUMNS)
            .join(Tenant, Tenant.id == Extension.tenant_id)
            .where(Tenant.realm == realm, Extension.number == number)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else self._auth_row(row)

    def extensions_version(self) -> tuple[int, float]:
        """(count, newest updated_at): changes when any extension is added or changed."""
        with self.engine.connect() as conn:
            count, newest = conn.execute(
                select(func.count(Extension.id), func.max(Extension.updated_at))
            ).one()
        return int(count), float(newest or 0.0)

    def extensions_changed_since(self, watermark: float | None) -> list[ExtensionAuth]:
        """Credentials of extensions updated at or after ``watermark`` (all when None)."""
        stmt = select(*self._AUTH_COLUMNS).join(Tenant, Tenant.id == Extension.tenant_id)
        if watermark is not None:
            stmt = stmt.where(Extension.updated_at >= watermark)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).tuples().all()  # in one go: a third cheaper than a loop
        auth_row = self._auth_row
        return [auth_row(row) for row in rows]

    def known_realms(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.scalars(select(Tenant.realm)))

    # -- registrations -------------------------------------------------------------------

    def load_bindings(self, now: float) -> list[tuple[str, BindingRow]]:
        """Live bindings with their extension's realm, for the location service at start-up.

        Plain rows, no ORM objects: tens of thousands of them are read at every start."""
        r = Registration
        stmt = (
            select(
                Extension.realm,
                Extension.number,
                r.extension_id,
                r.contact,
                r.expires_at,
                r.q,
                r.call_id,
                r.cseq,
                r.source,
                r.user_agent,
                func.coalesce(r.registered_at, r.updated_at),
            )
            .join(Extension, Extension.id == r.extension_id)
            .where(r.expires_at > now)
            .order_by(r.id)
        )
        aors: dict[tuple[str, str], str] = {}
        out = []
        with self.engine.connect() as conn:
            for realm, number, *fields in conn.execute(stmt):
                aor = aors.get((realm, number))
                if aor is None:
                    aor = aors[(realm, number)] = f"{realm}/{number}"
                out.append((aor, BindingRow(*fields)))
        return out

    _UPSERT_COLUMNS = (
        "extension_id",
        "contact",
        "expires_at",
        "q",
        "call_id",
        "cseq",
        "source",
        "user_agent",
        "registered_at",
        "updated_at",
    )

    def _upsert_sql(self) -> str:
        """The binding upsert as driver SQL: the same ON CONFLICT statement on SQLite and
        PostgreSQL, handed straight to the driver's executemany, because this runs for
        every REGISTER refresh and the ORM's per-row work showed up in profiles."""
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        cols = ", ".join(self._UPSERT_COLUMNS)
        marks = ", ".join([mark] * len(self._UPSERT_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in self._UPSERT_COLUMNS[2:])
        return (
            f"INSERT INTO registrations ({cols}) VALUES ({marks}) "
            f"ON CONFLICT (extension_id, contact) DO UPDATE SET {updates}"
        )

    def write_bindings(
        self, upserts: Sequence[BindingRow], deletes: Sequence[tuple[int, str]], now: float
    ) -> None:
        """Apply a batch of location changes and purge expired rows, in one transaction."""
        with self.engine.begin() as conn:
            if upserts:
                conn.exec_driver_sql(
                    self._upsert_sql(),
                    [
                        (
                            b.extension_id,
                            b.contact,
                            b.expires_at,
                            b.q,
                            b.call_id,
                            b.cseq,
                            b.source,
                            b.user_agent,
                            b.registered_at or now,
                            now,
                        )
                        for b in upserts
                    ],
                )
            for ext_id, contact in deletes:
                conn.execute(
                    delete(Registration).where(
                        Registration.extension_id == ext_id, Registration.contact == contact
                    )
                )
            conn.execute(delete(Registration).where(Registration.expires_at <= now))

    def list_bindings(self, now: float) -> list[dict[str, Any]]:
        """Live bindings as last written back (see :func:`binding_view`); the running
        server's own list is fresher (``registrations`` control command)."""
        stmt = (
            select(Tenant.name, Extension.number, Registration)
            .join(Extension, Extension.id == Registration.extension_id)
            .join(Tenant, Tenant.id == Extension.tenant_id)
            .where(Registration.expires_at > now)
            .order_by(Tenant.name, Extension.number, Registration.id)
        )
        with Session(self.engine) as s:
            return [
                binding_view(
                    t,
                    n,
                    BindingRow(
                        r.extension_id,
                        r.contact,
                        r.expires_at,
                        r.q,
                        r.call_id,
                        r.cseq,
                        r.source,
                        r.user_agent,
                        r.registered_at or r.updated_at,
                    ),
                    now,
                )
                for t, n, r in s.execute(stmt)
            ]

    def remove_binding(self, tenant: str, number: str, handle: str) -> bool:
        """Delete one stored binding by its :func:`binding_id` (server not running)."""
        with Session(self.engine) as s, s.begin():
            ext = self._extension_row(s, tenant, number)
            for row in s.scalars(select(Registration).where(Registration.extension_id == ext.id)):
                if binding_id(ext.id, row.contact) == handle:
                    s.delete(row)
                    return True
        return False

    # -- firewall bans -------------------------------------------------------------------

    def save_bans(self, bans: Sequence[tuple[str, float, str, int, float]]) -> None:
        """Upsert (address, until, reason, level, created_at) rows."""
        if not bans:
            return
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        sql = (
            f"INSERT INTO bans (address, until, reason, level, created_at) "
            f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark}) ON CONFLICT (address) DO UPDATE "
            "SET until = excluded.until, reason = excluded.reason, level = excluded.level, "
            "created_at = excluded.created_at"
        )
        with self.engine.begin() as conn:
            conn.exec_driver_sql(sql, list(bans))

    def load_bans(self, now: float, since: float) -> list[tuple[str, float, str, int, float]]:
        """Bans active at ``now`` or created after ``since`` (recent ones count for
        escalation: a repeat offender gets a longer ban)."""
        stmt = select(
            BanRow.address, BanRow.until, BanRow.reason, BanRow.level, BanRow.created_at
        ).where((BanRow.until > now) | (BanRow.created_at >= since))
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(stmt)]  # type: ignore[misc]

    def remove_ban(self, address: str) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(delete(BanRow).where(BanRow.address == address)).rowcount)

    # -- call detail records -------------------------------------------------------------

    def cdr_open(self, fields: dict[str, Any]) -> int:
        """Insert a CDR for a call attempt that just started; committed before returning."""
        with Session(self.engine) as s, s.begin():
            row = Cdr(disposition="in-progress", **fields)
            s.add(row)
            s.flush()
            return row.id

    def cdr_close(self, cdr_id: int, fields: dict[str, Any]) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(Cdr, cdr_id)
            if row is not None:
                for key, value in fields.items():
                    setattr(row, key, value)

    def cdr_replay(self, ops: list[dict[str, Any]]) -> dict[str, int]:
        """Write a spool of CDR operations (``pbx/cdr.py``) in one transaction, in order:
        ``open`` inserts the row unless one with its ``key`` exists (a replay cut short
        by a crash is replayed whole, never twice), ``update`` (the answer time) and
        ``close`` set fields of the row named by ``id`` or by ``key`` (idempotent).
        Answers each key's row id."""
        ids: dict[str, int] = {}
        with Session(self.engine) as s, s.begin():
            for op in ops:
                key = op.get("key")
                fields = op.get("fields") or {}
                if op.get("op") == "open" and isinstance(key, str):
                    found = s.scalar(select(Cdr.id).where(Cdr.spool_key == key))
                    if found is None:
                        row = Cdr(disposition="in-progress", spool_key=key, **fields)
                        s.add(row)
                        s.flush()
                        found = row.id
                    ids[key] = found
                elif op.get("op") in ("close", "update"):  # update: the answer time
                    cdr_id = op.get("id")
                    if not isinstance(cdr_id, int) and isinstance(key, str):
                        cdr_id = ids.get(key) or s.scalar(
                            select(Cdr.id).where(Cdr.spool_key == key)
                        )
                    target = s.get(Cdr, cdr_id) if isinstance(cdr_id, int) else None
                    if target is not None:
                        for name, value in fields.items():
                            setattr(target, name, value)
        return ids

    def cdr_interrupt_open(self, now: float, node: str | None = None) -> int:
        """After a crash: calls still open cannot be in progress any more. With several
        nodes on one database, only ``node``'s own (and rows of no node): the others'
        calls are theirs."""
        stmt = select(Cdr).where(Cdr.disposition == "in-progress")
        if node is not None:
            stmt = stmt.where((Cdr.node == node) | Cdr.node.is_(None))
        return self._interrupt(stmt, now)

    def cdr_interrupt_node(self, node: str, before: float, now: float) -> int:
        """A lost node's calls (``cluster/takeover.py``): those it started before it was
        last seen (``before``, its last heartbeat), closed as interrupted. They end at
        that heartbeat, and an answered one lasts from its answer time to it: the last
        moment the node is known to have carried the call (it may have lived up to one
        heartbeat interval longer, never the ``lost_after`` and the takeover's delay
        that ending at ``now`` would bill). If the node was only cut off and its calls
        go on, its own close of each call writes the real end over this."""
        stmt = select(Cdr).where(
            Cdr.disposition == "in-progress", Cdr.node == node, Cdr.start_ts <= before
        )
        note = f"node {node} lost: ended at its last heartbeat"
        return self._interrupt(stmt, min(before, now), note)

    def _interrupt(self, stmt: Any, now: float, note: str = "") -> int:
        with Session(self.engine) as s, s.begin():
            rows = s.scalars(stmt).all()
            for row in rows:
                row.disposition = "interrupted"
                row.end_ts = max(now, row.answer_ts or row.start_ts)
                if row.answer_ts is not None:
                    row.duration = max(0.0, row.end_ts - row.answer_ts)
                if note:
                    row.reasons = f"{row.reasons}; {note}"[:2000] if row.reasons else note
            return len(rows)

    def list_cdrs(self, since: float = 0.0, limit: int = 1000) -> list[dict[str, Any]]:
        stmt = select(Cdr).where(Cdr.start_ts >= since).order_by(Cdr.start_ts).limit(limit)
        with Session(self.engine) as s:
            return [
                {c.name: getattr(row, c.name) for c in Cdr.__table__.columns}
                for row in s.scalars(stmt)
            ]

    # -- alerts --------------------------------------------------------------------------

    def record_alert(self, alert: dict[str, Any]) -> tuple[int, bool]:
        """Store an alert, or count it as a repeat of the open one with the same key.

        Returns the alert's id and whether it is new (only new ones, and escalations
        from warning to critical, are worth sending again).
        """
        with Session(self.engine) as s, s.begin():
            row = s.scalar(
                select(AlertRow)
                .where(
                    AlertRow.dedupe_key == alert["dedupe_key"],
                    AlertRow.status != "resolved",
                )
                .order_by(AlertRow.id.desc())
                .limit(1)
            )
            if row is not None:
                row.count += 1
                row.last_at = alert["at"]
                escalated = row.severity != "critical" and alert["severity"] == "critical"
                if escalated:
                    row.severity = "critical"
                    row.summary = alert["summary"]
                    row.reasons = json.dumps(list(alert["reasons"]))
                return row.id, escalated
            row = AlertRow(
                tenant=alert["tenant"],
                extension=alert.get("extension"),
                severity=alert["severity"],
                rule=alert["rule"],
                summary=alert["summary"],
                reasons=json.dumps(list(alert["reasons"])),
                dedupe_key=alert["dedupe_key"],
                status="open",
                count=1,
                first_at=alert["at"],
                last_at=alert["at"],
            )
            s.add(row)
            s.flush()
            return row.id, True

    @staticmethod
    def _alert_dict(row: AlertRow) -> dict[str, Any]:
        out = {c.name: getattr(row, c.name) for c in AlertRow.__table__.columns}
        out["reasons"] = json.loads(row.reasons)
        return out

    def list_alerts(
        self,
        status: str | None = None,
        tenant: str | None = None,
        since: float = 0.0,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        stmt = select(AlertRow).where(AlertRow.last_at >= since)
        if status is not None:
            stmt = stmt.where(AlertRow.status == status)
        if tenant is not None:
            stmt = stmt.where(AlertRow.tenant == tenant)
        stmt = stmt.order_by(AlertRow.id.desc()).limit(limit)
        with Session(self.engine) as s:
            return [self._alert_dict(row) for row in s.scalars(stmt)]

    def get_alert(self, alert_id: int) -> dict[str, Any] | None:
        with Session(self.engine) as s:
            row = s.get(AlertRow, alert_id)
            return self._alert_dict(row) if row is not None else None

    def set_alert_status(
        self, alert_id: int, status: str, by: str, now: float | None = None
    ) -> dict[str, Any]:
        """Acknowledge (someone is on it) or resolve (over) an alert."""
        if status not in ("acknowledged", "resolved"):
            raise StoreError(f"an alert can be acknowledged or resolved, not {status!r}")
        now = time.time() if now is None else now
        with Session(self.engine) as s, s.begin():
            row = s.get(AlertRow, alert_id)
            if row is None:
                raise StoreError(f"no alert {alert_id}")
            if row.status == "resolved":
                raise StoreError(f"alert {alert_id} is already resolved")
            if status == "acknowledged":
                row.acked_by, row.acked_at = by[:64], now
            else:
                row.resolved_by, row.resolved_at = by[:64], now
            row.status = status
            return self._alert_dict(row)

    # -- guard policies set at run time -------------------------------------------------

    def set_policy(self, tenant: str, policy: dict[str, Any], by: str) -> None:
        """Store a tenant's guard policy (already validated), replacing the file's."""
        with Session(self.engine) as s, s.begin():
            self._tenant_row(s, tenant)
            row = s.get(TenantPolicyRow, tenant)
            text = json.dumps(policy, sort_keys=True)
            if row is None:
                s.add(
                    TenantPolicyRow(
                        tenant=tenant, policy=text, updated_at=time.time(), updated_by=by[:64]
                    )
                )
            else:
                row.policy, row.updated_at, row.updated_by = text, time.time(), by[:64]

    def delete_policy(self, tenant: str) -> bool:
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    delete(TenantPolicyRow).where(TenantPolicyRow.tenant == tenant)
                ).rowcount
            )

    def policies(self) -> dict[str, dict[str, Any]]:
        """Stored policies by tenant, each with ``updated_at`` and ``updated_by``."""
        with Session(self.engine) as s:
            return {
                row.tenant: {
                    "policy": json.loads(row.policy),
                    "updated_at": row.updated_at,
                    "updated_by": row.updated_by,
                }
                for row in s.scalars(select(TenantPolicyRow))
            }

    # -- guard baselines -----------------------------------------------------------------

    def save_baselines(
        self, rows: Sequence[tuple[str, str, dict[str, Any]]], node: str = ""
    ) -> None:
        """Upsert learned baselines: (tenant, extension or "" for the tenant, data), as
        ``node`` learned them ("": a single node)."""
        baselines.save(self.engine, rows, node)

    def load_baseline(self, tenant: str, extension: str = "") -> dict[str, Any] | None:
        """One learned baseline (the tenant's own with extension ""), every node's
        learning merged, or None."""
        return baselines.load_merged(self.engine, tenant, extension)

    def load_baselines(self, node: str = "") -> list[tuple[str, str, dict[str, Any]]]:
        """``node``'s rows ("": a single node's)."""
        return baselines.load(self.engine, node)

    def claim_baselines(self, node: str) -> int:
        """Rows of node "" (a single node's, or from before 0024) become ``node``'s."""
        return baselines.claim(self.engine, node)

    def baseline_versions(self, node: str) -> dict[tuple[str, str, str], float]:
        """(tenant, extension, other node) -> when that row was saved."""
        return baselines.versions(self.engine, node)

    def other_baselines(
        self, keys: Iterable[tuple[str, str]], node: str
    ) -> list[tuple[str, str, str, float, dict[str, Any]]]:
        """The other nodes' rows of these (tenant, extension) keys."""
        return baselines.others(self.engine, keys, node)

    # -- suspension ----------------------------------------------------------------------

    def suspend_extension(
        self,
        tenant: str,
        number: str,
        reason: str,
        now: float | None = None,
        by: str = "admin",
    ) -> bool:
        """Refuse every costly call of the extension until resumed; False if it already was.

        ``by`` is ``"guard"`` for the fraud guard's suspensions: those are only lifted once
        the SIP password has changed (:meth:`resume_extension`)."""
        with Session(self.engine) as s, s.begin():
            ext = self._extension_row(s, tenant, number)
            if ext.suspended_reason is not None:
                return False
            ext.suspended_reason = reason[:2000]
            ext.suspended_at = time.time() if now is None else now
            ext.suspended_by = by[:64]
            ext.updated_at = time.time()
            return True

    def resume_extension(self, tenant: str, number: str, force: bool = False) -> bool:
        """Lift a suspension; False if there was none.

        An extension the guard suspended for fraud is in an attacker's hands until its
        password changes: resuming it before that only lets the fraud start again, so it
        is refused (:class:`ResumeRefused`) unless ``force`` (which the caller audits)."""
        with Session(self.engine) as s, s.begin():
            ext = self._extension_row(s, tenant, number)
            if ext.suspended_reason is None:
                return False
            changed = ext.password_changed_at
            if (
                not force
                and ext.suspended_by == "guard"
                and (changed is None or changed < (ext.suspended_at or 0.0))
            ):
                raise ResumeRefused(
                    f"extension {number} was suspended by the fraud guard "
                    f"({ext.suspended_reason[:200]}) and its SIP password has not changed "
                    f"since: give it a new one first (pbxwarden extension password {number}"
                    f"{'' if tenant == DEFAULT_TENANT else ' --tenant ' + tenant}), then "
                    "resume it; or resume with --force and a --reason"
                )
            ext.suspended_reason = ext.suspended_at = ext.suspended_by = None
            ext.updated_at = time.time()
            return True

    def suspended_extensions(self) -> list[dict[str, Any]]:
        stmt = (
            select(
                Tenant.name,
                Extension.number,
                Extension.suspended_reason,
                Extension.suspended_at,
                Extension.suspended_by,
            )
            .join(Tenant, Tenant.id == Extension.tenant_id)
            .where(Extension.suspended_reason.is_not(None))
        )
        with Session(self.engine) as s:
            return [
                {"tenant": t, "extension": n, "reason": r, "at": at, "by": by}
                for t, n, r, at, by in s.execute(stmt)
            ]

    # -- trunks and DIDs -----------------------------------------------------------------

    @staticmethod
    def _extension_row(s: Session, tenant: str, number: str) -> Extension:
        ext = s.scalar(
            select(Extension)
            .join(Tenant, Tenant.id == Extension.tenant_id)
            .where(Tenant.name == tenant, Extension.number == number)
        )
        if ext is None:
            raise StoreError(f"no extension {number} in tenant {tenant}")
        return ext

    def _tenant_row(self, s: Session, tenant: str) -> Tenant:
        row = s.scalar(select(Tenant).where(Tenant.name == tenant))
        if row is None:
            raise StoreError(f"unknown tenant {tenant!r}")
        return row

    def add_trunk(
        self,
        tenant: str,
        name: str,
        host: str,
        port: int | None,
        transport: str | None,
        prefixes: Sequence[str],
        *,
        username: str | None = None,
        password: str | None = None,
        realm: str | None = None,
        register: bool = False,
        register_expires: int | None = None,
        credential_key: bytes | None = None,
        emergency: bool = False,
        inbound_from: Sequence[str] = (),
    ) -> None:
        """An IP-authenticated trunk: calls to ``prefixes`` go to host:port, and calls from
        host are accepted as inbound from the carrier. ``host`` may be a DNS name (stored
        as given; RFC 3263 finds its servers and addresses, pbx/locate.py); the carrier's
        calls may also come from the ``inbound_from`` networks.

        With ``username`` and ``password`` the PBX also answers the carrier's digest
        challenges, and with ``register`` keeps a registration to it. The password is
        sealed under ``credential_key`` (:func:`~pbxwarden.store.credentials.trunk_credential_key`)
        because answering a challenge needs it in clear: it cannot be hashed.
        """
        if not TENANT_RE.fullmatch(name):
            raise StoreError(f"invalid trunk name {name!r}: lowercase letters, digits, - and _")
        try:
            host, port, transport = trunk_target(host, port, transport)
            networks = check_networks(inbound_from)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        cleaned = []
        for prefix in prefixes or ["+"]:
            prefix = prefix.strip()
            if not re.fullmatch(r"\+[0-9]{0,15}", prefix):
                raise StoreError(f"invalid prefix {prefix!r}: E.164, like +1 or +4420 (+ for all)")
            cleaned.append(prefix)
        _check_trunk_credentials(username, password, realm, register, register_expires)
        sealed = None
        if password is not None:
            if credential_key is None:
                raise StoreError("a trunk password needs the install secret to be encrypted")
            sealed = seal_password(credential_key, password, tenant, name)
        with Session(self.engine) as s, s.begin():
            tenant_row = self._tenant_row(s, tenant)
            s.add(
                TrunkRow(
                    tenant_id=tenant_row.id,
                    name=name,
                    host=host,
                    port=port,
                    transport=transport,
                    prefixes=",".join(cleaned),
                    inbound_from=",".join(networks) or None,
                    username=username,
                    password_sealed=sealed,
                    realm=realm,
                    register=register,
                    register_expires=register_expires,
                    emergency=emergency,
                )
            )
            try:
                s.flush()
            except IntegrityError:
                raise StoreError(f"trunk {name!r} already exists") from None

    def set_trunk_emergency(self, tenant: str, name: str, emergency: bool) -> None:
        """Mark (or unmark) the trunk the tenant's emergency calls go out through."""
        with Session(self.engine) as s, s.begin():
            tenant_row = self._tenant_row(s, tenant)
            row = s.scalar(
                select(TrunkRow).where(TrunkRow.tenant_id == tenant_row.id, TrunkRow.name == name)
            )
            if row is None:
                raise StoreError(f"no trunk {name!r} in tenant {tenant}")
            row.emergency = emergency

    def add_did(self, number: str, tenant: str, extension: str) -> str:
        """Route an inbound number to an extension; returns the number in E.164."""
        with Session(self.engine) as s, s.begin():
            tenant_row = self._tenant_row(s, tenant)
            dest = classify(number, tenant_row.country)
            if dest is None or not dest.valid:
                raise StoreError(f"not a valid telephone number: {number!r}")
            exists = (
                s.scalar(
                    select(Extension.id).where(
                        Extension.tenant_id == tenant_row.id, Extension.number == extension
                    )
                )
                or s.scalar(
                    select(RingGroupRow.id).where(
                        RingGroupRow.tenant_id == tenant_row.id, RingGroupRow.number == extension
                    )
                )
                or s.scalar(
                    select(TimeConditionRow.id).where(
                        TimeConditionRow.tenant_id == tenant_row.id,
                        TimeConditionRow.number == extension,
                    )
                )
            )
            if exists is None:
                raise StoreError(
                    f"no extension, group or time condition {extension} in tenant {tenant}"
                )
            if s.get(DidRow, dest.e164) is not None:
                raise StoreError(f"DID {dest.e164} already exists")
            s.add(DidRow(number=dest.e164, tenant_id=tenant_row.id, extension=extension))
            return dest.e164

    def list_trunks(self) -> list[dict[str, Any]]:
        stmt = select(Tenant.name, TrunkRow).join(Tenant, Tenant.id == TrunkRow.tenant_id)
        with Session(self.engine) as s:
            return [
                {
                    "tenant": t,
                    "name": r.name,
                    "host": r.host,
                    "port": r.port or None,  # None: from DNS (SRV)
                    "transport": r.transport,
                    "prefixes": r.prefixes,
                    "inbound_from": r.inbound_from,
                    # whether a password is set, never the password (sealed or not)
                    "username": r.username,
                    "credentials": r.username is not None and r.password_sealed is not None,
                    "register": bool(r.register),
                    "register_expires": r.register_expires
                    or (DEFAULT_REGISTER_EXPIRES if r.register else None),
                    "emergency": bool(r.emergency),
                    "assert_identity": r.assert_identity is not False,
                    "accept_transfers": bool(r.accept_transfers),
                }
                for t, r in s.execute(stmt)
            ]

    def list_dids(self) -> list[dict[str, Any]]:
        stmt = select(Tenant.name, DidRow).join(Tenant, Tenant.id == DidRow.tenant_id)
        with Session(self.engine) as s:
            return [
                {"number": r.number, "tenant": t, "extension": r.extension}
                for t, r in s.execute(stmt)
            ]

    def routing_snapshot(self, credential_key: bytes | None = None) -> Routing:
        """Trunks and DIDs; with ``credential_key`` trunk passwords are decrypted (in memory
        only). A password that does not open leaves the trunk without one: its challenges
        then fail visibly instead of the whole snapshot."""
        with Session(self.engine) as s:
            tenants = {t.id: t for t in s.scalars(select(Tenant))}
            trunks = tuple(
                Trunk(
                    tenants[r.tenant_id].name,
                    r.name,
                    r.host,
                    r.port,
                    r.transport,
                    tuple(r.prefixes.split(",")),
                    username=r.username,
                    password=_open_trunk_password(credential_key, r, tenants[r.tenant_id].name),
                    realm=r.realm,
                    register=bool(r.register),
                    register_expires=r.register_expires or DEFAULT_REGISTER_EXPIRES,
                    emergency=bool(r.emergency),
                    assert_identity=r.assert_identity is not False,
                    accept_transfers=bool(r.accept_transfers),
                    inbound_from=tuple(filter(None, (r.inbound_from or "").split(","))),
                )
                for r in s.scalars(select(TrunkRow))
            )
            dids = {
                r.number: Did(r.number, tenants[r.tenant_id].name, r.extension)
                for r in s.scalars(select(DidRow))
            }
            groups = {
                (tenants[r.tenant_id].name, r.number): Group(
                    tenants[r.tenant_id].name,
                    tenants[r.tenant_id].realm,
                    r.number,
                    r.name,
                    r.strategy,
                    tuple(r.members.split(",")),
                    r.ring_time,
                    r.fallback,
                    r.cid_prefix,
                )
                for r in s.scalars(select(RingGroupRow))
            }
            conditions = {
                (tenants[r.tenant_id].name, r.number): TimeCondition(
                    tenants[r.tenant_id].name,
                    tenants[r.tenant_id].realm,
                    r.number,
                    r.name,
                    r.timezone,
                    parse_windows(r.windows),
                    frozenset(d for d in r.holidays.split(",") if d),
                    r.open_to,
                    r.closed_to,
                    r.override,
                )
                for r in s.scalars(select(TimeConditionRow))
            }
        return Routing(
            trunks,
            dids,
            {t.name: t.country for t in tenants.values()},
            {t.name: t.realm for t in tenants.values()},
            groups=groups,
            time_conditions=conditions,
        )

    # -- call forwarding -----------------------------------------------------------------

    def set_forwarding(
        self,
        tenant: str,
        number: str,
        kind: str,
        target: str | None,
        actor: str,
        source: str,
        now: float,
        noanswer_after: float | None = None,
    ) -> str | None:
        """Set (or clear, target None) one kind of forwarding; returns the old target.

        Every change is recorded (who, from where, old and new target): a diversion
        set to a premium-rate number is how the attack this project exists for works.
        """
        if kind not in FORWARD_KINDS:
            raise StoreError(f"unknown forwarding kind {kind!r}: always, busy or noanswer")
        with Session(self.engine) as s, s.begin():
            ext = self._extension_row(s, tenant, number)
            column = f"forward_{kind}"
            old: str | None = getattr(ext, column)
            setattr(ext, column, target)
            if noanswer_after is not None:
                ext.noanswer_after = noanswer_after
            ext.updated_at = now
            s.add(
                ForwardingChange(
                    extension_id=ext.id,
                    kind=kind,
                    old_target=old,
                    new_target=target,
                    actor=actor[:64],
                    source=source[:128],
                    at=now,
                )
            )
            return old

    def record_forwarding_refused(
        self,
        tenant: str,
        number: str,
        kind: str,
        target: str | None,
        actor: str,
        source: str,
        reason: str,
        now: float,
    ) -> None:
        """Record a forwarding change that was asked for and refused: a hijacked phone
        trying ``*72`` to a premium number leaves a trace even though nothing changed."""
        with Session(self.engine) as s, s.begin():
            ext = self._extension_row(s, tenant, number)
            current = getattr(ext, f"forward_{kind}", None) if kind in FORWARD_KINDS else None
            s.add(
                ForwardingChange(
                    extension_id=ext.id,
                    kind=kind[:16],
                    old_target=current,
                    new_target=None if target is None else target[:64],
                    actor=actor[:64],
                    source=source[:128],
                    at=now,
                    refused=reason[:2000] or "refused",
                )
            )

    def is_internal_target(self, tenant: str, target: str) -> bool:
        """A forwarding target that never leaves the PBX: an extension of the tenant, or
        a DID of this PBX (any tenant's), which is delivered inside, never to a carrier."""
        with Session(self.engine) as s:
            tenant_row = self._tenant_row(s, tenant)
            exists = s.scalar(
                select(Extension.id).where(
                    Extension.tenant_id == tenant_row.id, Extension.number == target
                )
            )
            if exists is not None:
                return True
            dest = classify(target, tenant_row.country)
            return dest is not None and dest.valid and s.get(DidRow, dest.e164) is not None

    def forwarding_changes(self, tenant: str | None = None) -> list[dict[str, Any]]:
        stmt = (
            select(Tenant.name, Extension.number, ForwardingChange)
            .join(Extension, Extension.id == ForwardingChange.extension_id)
            .join(Tenant, Tenant.id == Extension.tenant_id)
            .order_by(ForwardingChange.at)
        )
        if tenant is not None:
            stmt = stmt.where(Tenant.name == tenant)
        with Session(self.engine) as s:
            return [
                {
                    "tenant": t,
                    "extension": n,
                    "kind": c.kind,
                    "old": c.old_target,
                    "new": c.new_target,
                    "actor": c.actor,
                    "source": c.source,
                    "at": c.at,
                    "refused": c.refused,
                }
                for t, n, c in s.execute(stmt)
            ]

    def tenant_country(self, tenant: str) -> str:
        with Session(self.engine) as s:
            return self._tenant_row(s, tenant).country

    def extension_exists(self, tenant: str, number: str) -> bool:
        with Session(self.engine) as s:
            try:
                self._extension_row(s, tenant, number)
            except StoreError:
                return False
            return True

    def forwarding_table(self) -> list[dict[str, Any]]:
        stmt = (
            select(Tenant.name, Extension)
            .join(Tenant, Tenant.id == Extension.tenant_id)
            .where(
                (Extension.forward_always.is_not(None))
                | (Extension.forward_busy.is_not(None))
                | (Extension.forward_noanswer.is_not(None))
            )
            .order_by(Tenant.name, Extension.number)
        )
        with Session(self.engine) as s:
            return [
                {
                    "tenant": t,
                    "extension": e.number,
                    "always": e.forward_always,
                    "busy": e.forward_busy,
                    "noanswer": e.forward_noanswer,
                    "ring_time": e.noanswer_after,
                }
                for t, e in s.execute(stmt)
            ]

    # -- registration watch --------------------------------------------------------------

    def record_network(self, extension_id: int, network: str, now: float, approved: bool) -> None:
        self.record_networks([(extension_id, network, now, approved)])

    def record_networks(self, rows: Sequence[tuple[int, str, float, bool]]) -> None:
        """(extension, network, first seen, approved) rows in one transaction; a network
        already recorded keeps its row. A registration burst brings thousands at once."""
        if not rows:
            return
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        sql = (
            "INSERT INTO extension_networks (extension_id, network, first_seen, approved,"
            f" changed_at) VALUES ({mark}, {mark}, {mark}, {mark}, {self._db_now()})"
            " ON CONFLICT (extension_id, network) DO NOTHING"
        )
        with self.engine.begin() as conn:
            conn.exec_driver_sql(sql, [(e, n, at, bool(ok)) for e, n, at, ok in rows])

    def _db_now(self) -> str:
        """SQL for the time of writing (Unix seconds), taken once the write holds its
        lock: a reader's watermark then never passes a row still to be committed by more
        than the transaction's own length (see :data:`NETWORK_MARGIN`)."""
        if self.engine.dialect.name == "sqlite":
            return "((julianday('now') - 2440587.5) * 86400.0)"
        return "extract(epoch from clock_timestamp())"

    def networks_version(self) -> float:
        """The newest change to any extension's networks (an index lookup, not a count)."""
        with self.engine.connect() as conn:
            newest = conn.execute(select(func.max(ExtensionNetwork.changed_at))).scalar()
        return float(newest or 0.0)

    def approved_network_count(self) -> int:
        """Changes whenever a network is recorded as approved or approved later (rows are
        never deleted): a cheap check before reading them all again."""
        stmt = (
            select(func.count())
            .select_from(ExtensionNetwork)
            .where(ExtensionNetwork.approved.is_(True))
        )
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def approved_networks(self, since: float | None = None) -> list[tuple[int, str]]:
        """Approved networks; with ``since``, only those recorded or approved since then."""
        stmt = select(ExtensionNetwork.extension_id, ExtensionNetwork.network).where(
            ExtensionNetwork.approved.is_(True)
        )
        if since is not None:
            stmt = stmt.where(ExtensionNetwork.changed_at >= since)
        with self.engine.connect() as conn:
            return [(int(e), str(n)) for e, n in conn.execute(stmt)]

    def list_networks(self) -> list[dict[str, Any]]:
        stmt = (
            select(Tenant.name, Extension.number, ExtensionNetwork)
            .join(Extension, Extension.id == ExtensionNetwork.extension_id)
            .join(Tenant, Tenant.id == Extension.tenant_id)
            .order_by(Tenant.name, Extension.number, ExtensionNetwork.first_seen)
        )
        with Session(self.engine) as s:
            return [
                {
                    "tenant": t,
                    "extension": n,
                    "network": r.network,
                    "first_seen": r.first_seen,
                    "approved": r.approved,
                }
                for t, n, r in s.execute(stmt)
            ]

    def approve_network(self, tenant: str, number: str, network: str) -> None:
        with Session(self.engine) as s, s.begin():
            ext_id = self._extension_row(s, tenant, number).id
            row = s.get(ExtensionNetwork, (ext_id, network))
            if row is None:
                raise StoreError(f"extension {number} never registered from {network}")
            row.approved = True
            row.changed_at = literal_column(self._db_now())
