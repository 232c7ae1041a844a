"""Database schema (SQLAlchemy 2 declarative). Migrations live in ``migrations/``.

SIP passwords are never stored: only the digest HA1 values for the realm the
extension belongs to, one per algorithm, which is all that digest verification needs.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    realm: Mapped[str] = mapped_column(String(255), unique=True)
    country: Mapped[str] = mapped_column(String(2), default="US")
    created_at: Mapped[float] = mapped_column(Float)


class Extension(Base):
    __tablename__ = "extensions"
    __table_args__ = (UniqueConstraint("tenant_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    number: Mapped[str] = mapped_column(String(32))
    display_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    realm: Mapped[str] = mapped_column(String(255))
    ha1_md5: Mapped[str] = mapped_column(String(32))
    ha1_sha256: Mapped[str] = mapped_column(String(64))
    # HMAC-SHA256 of the password under a key derived from the install secret: shows a
    # password shared by two extensions (``pbxwarden audit``); NULL when made without it
    password_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    acl: Mapped[str | None] = mapped_column(Text, nullable=True)  # CIDRs, comma-separated
    forward_always: Mapped[str | None] = mapped_column(String(64), nullable=True)
    forward_busy: Mapped[str | None] = mapped_column(String(64), nullable=True)
    forward_noanswer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    noanswer_after: Mapped[float] = mapped_column(Float, default=20.0)
    # set by the guard or an admin: every costly call refused until an admin resumes it
    suspended_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    suspended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # "guard" (fraud: resuming needs a new password first), else the admin who did it
    suspended_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # when the SIP password was last changed (NULL: never since the extension was made)
    password_changed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # its credentials may be used from a trunk's address (an SBC in front of phones);
    # off by default: a carrier's address is trusted for inbound calls, not for logins
    trunk_access: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # the number its calls to carriers present (one of the tenant's DIDs; NULL: its own
    # DID, else the tenant's lowest), and whether it withholds it (Privacy: id)
    caller_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    withhold_caller_id: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Registration(Base):
    """One contact binding of an extension (RFC 3261 10.3); several per extension."""

    __tablename__ = "registrations"
    __table_args__ = (UniqueConstraint("extension_id", "contact"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    extension_id: Mapped[int] = mapped_column(
        ForeignKey("extensions.id", ondelete="CASCADE"), index=True
    )
    contact: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    q: Mapped[float | None] = mapped_column(Float, nullable=True)
    call_id: Mapped[str] = mapped_column(String(255))
    cseq: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(128))
    user_agent: Mapped[str | None] = mapped_column(String(255), nullable=True)
    registered_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # first REGISTER
    updated_at: Mapped[float] = mapped_column(Float)


class BanRow(Base):
    """A banned source address. Kept after expiry for a while so repeat offenders
    get longer bans; ``until`` in the past means no longer active."""

    __tablename__ = "bans"

    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    until: Mapped[float] = mapped_column(Float, index=True)
    reason: Mapped[str] = mapped_column(String(255))
    level: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class ExtensionLockRow(Base):
    """An extension locked against unknown networks after distributed password guessing
    (:mod:`pbxwarden.firewall.locks`). Kept after it ends so that the next one is
    longer; ``until`` in the past means ended (expired, or lifted by an admin then)."""

    __tablename__ = "extension_locks"

    extension_id: Mapped[int] = mapped_column(
        ForeignKey("extensions.id", ondelete="CASCADE"), primary_key=True
    )
    until: Mapped[float] = mapped_column(Float)
    level: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    sources: Mapped[str] = mapped_column(Text)  # JSON list of addresses
    lifted_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Cdr(Base):
    """One call attempt, answered or not. Opened when the attempt starts, so that a
    crash leaves a row to close as ``interrupted`` instead of losing the call."""

    __tablename__ = "cdrs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[str] = mapped_column(String(255), index=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    extension: Mapped[str | None] = mapped_column(String(32), nullable=True)
    caller: Mapped[str] = mapped_column(String(128))
    callee: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # internal, external, inbound, forwarded
    disposition: Mapped[str] = mapped_column(String(16), index=True)
    sip_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    decision: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[str] = mapped_column(Text)
    start_ts: Mapped[float] = mapped_column(Float, index=True)
    answer_ts: Mapped[float | None] = mapped_column(Float, nullable=True)
    end_ts: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)
    callee_e164: Mapped[str | None] = mapped_column(String(32), nullable=True)
    dest_country: Mapped[str | None] = mapped_column(String(8), nullable=True)
    number_type: Mapped[str | None] = mapped_column(String(24), nullable=True)
    trunk: Mapped[str | None] = mapped_column(String(64), nullable=True)
    forwarded_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    score: Mapped[int | None] = mapped_column(Integer, nullable=True)  # guard anomaly score
    severity: Mapped[str | None] = mapped_column(String(16), nullable=True)
    cost: Mapped[float | None] = mapped_column(Float, nullable=True)  # estimated, rate table
    # the cluster node that handled the call (None: a single node)
    node: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # set when written from the node's local spool (``pbx/cdr.py``): replays are idempotent
    spool_key: Mapped[str | None] = mapped_column(
        String(64), nullable=True, unique=True, index=True
    )


class TrunkRow(Base):
    """A SIP trunk to a carrier, authenticated by IP address (both ways), and optionally
    by digest towards the carrier (challenged INVITEs, registration). ``host`` is an IP
    address or a DNS name; for a name, port 0 means "from SRV" and transport ``auto``
    "as NAPTR says"."""

    __tablename__ = "trunks"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    transport: Mapped[str] = mapped_column(String(8))
    prefixes: Mapped[str] = mapped_column(Text)  # E.164 prefixes, comma-separated; "+" for all
    username: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # the password sealed with AES-GCM (pbxwarden.store.credentials): digest needs it in clear
    password_sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    realm: Mapped[str | None] = mapped_column(String(255), nullable=True)  # informational
    register: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    register_expires: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # emergency calls of the tenant go out here (else through its ordinary route)
    emergency: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # networks the carrier's calls may also come from (comma-separated CIDR), beyond host
    inbound_from: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the carrier gets P-Asserted-Identity (NULL: yes; off for carriers that do not trust us)
    assert_identity: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # the carrier may ask the PBX to transfer a call (REFER); NULL: no
    accept_transfers: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class DidRow(Base):
    """An inbound number from a trunk, delivered to an extension."""

    __tablename__ = "dids"

    number: Mapped[str] = mapped_column(String(32), primary_key=True)  # E.164
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    extension: Mapped[str] = mapped_column(String(32))


class ForwardingChange(Base):
    """Every change to an extension's call forwarding: who, from where, old and new."""

    __tablename__ = "forwarding_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    extension_id: Mapped[int] = mapped_column(
        ForeignKey("extensions.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    old_target: Mapped[str | None] = mapped_column(String(64), nullable=True)
    new_target: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(64))  # "phone", "cli", "api"
    source: Mapped[str] = mapped_column(String(128))
    at: Mapped[float] = mapped_column(Float, index=True)
    # a change that was asked for and refused (the target stays as it was): why
    refused: Mapped[str | None] = mapped_column(Text, nullable=True)


class ExtensionNetwork(Base):
    """A network an extension has registered from; unapproved ones wait for an admin."""

    __tablename__ = "extension_networks"

    extension_id: Mapped[int] = mapped_column(
        ForeignKey("extensions.id", ondelete="CASCADE"), primary_key=True
    )
    network: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen: Mapped[float] = mapped_column(Float)
    approved: Mapped[bool] = mapped_column(Boolean)
    # written when the row is recorded or approved: what servers read again
    changed_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)


class AlertRow(Base):
    """A guard or firewall alert; repeats of an open one raise ``count`` (deduplicated)."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    extension: Mapped[str | None] = mapped_column(String(32), nullable=True)
    severity: Mapped[str] = mapped_column(String(16))  # warning, critical
    rule: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(Text)
    reasons: Mapped[str] = mapped_column(Text)  # JSON list
    dedupe_key: Mapped[str] = mapped_column(String(255), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # open, acknowledged, resolved
    count: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[float] = mapped_column(Float, index=True)
    last_at: Mapped[float] = mapped_column(Float)
    acked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    acked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    resolved_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class GuardBaselineRow(Base):
    """One extension's (or, with extension "", one tenant's) learned guard baseline, as
    one node learned it (node "": a single node's, or rows from before 0024)."""

    __tablename__ = "guard_baselines"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    extension: Mapped[str] = mapped_column(String(32), primary_key=True)
    node: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    data: Mapped[str] = mapped_column(Text)  # JSON, pbxwarden.guard.baseline.Baseline
    updated_at: Mapped[float] = mapped_column(Float)


class TenantPolicyRow(Base):
    """A tenant's guard policy set through the API or CLI (JSON of TenantPolicy)."""

    __tablename__ = "tenant_policies"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    policy: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(64))


class RingGroupRow(Base):
    """A ring or hunt group (:mod:`pbxwarden.pbx.dialplan`): a number of the tenant's
    dialplan that rings its members; never also an extension's number."""

    __tablename__ = "ring_groups"
    __table_args__ = (UniqueConstraint("tenant_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    number: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64), default="")
    strategy: Mapped[str] = mapped_column(String(16))
    members: Mapped[str] = mapped_column(Text)  # comma-separated, in ringing order
    ring_time: Mapped[float] = mapped_column(Float)
    fallback: Mapped[str | None] = mapped_column(String(32), nullable=True)
    cid_prefix: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class TimeConditionRow(Base):
    """Business hours (:mod:`pbxwarden.pbx.dialplan`): a number of the tenant's dialplan
    leading to one destination when open and another when closed."""

    __tablename__ = "time_conditions"
    __table_args__ = (UniqueConstraint("tenant_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    number: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64), default="")
    timezone: Mapped[str] = mapped_column(String(64))
    windows: Mapped[str] = mapped_column(Text)  # "mon-fri 09:00-17:00; sat 10:00-13:00"
    holidays: Mapped[str] = mapped_column(Text, default="")  # comma-separated ISO dates
    open_to: Mapped[str] = mapped_column(String(32))
    closed_to: Mapped[str] = mapped_column(String(32))
    override: Mapped[str | None] = mapped_column(String(8), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
