"""Request and response bodies of the admin API.

Requests forbid unknown fields (a typo is an error, not a silently ignored setting),
bound every number (no overflow reaches the database) and refuse control characters in
text (they have no business in a log line or a PostgreSQL text column).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints

NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
NUMBER_PATTERN = r"^[0-9]{2,15}$"
ADDRESS_PATTERN = r"^[0-9A-Fa-f:.]{2,45}$"

Text = Annotated[str, StringConstraints(max_length=255, pattern=NO_CONTROL)]
LongText = Annotated[str, StringConstraints(max_length=2000, pattern=NO_CONTROL)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_CONTROL)]
TenantName = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
Role = Literal["read-only", "operator", "admin"]
ForwardKind = Literal["always", "busy", "noanswer"]
Timestamp = Annotated[float, Field(ge=0, le=1e11)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    detail: str
    errors: list[FieldError] | None = None


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


ErrorOut.model_rebuild()


# -- auth -----------------------------------------------------------------------------


class LoginIn(_In):
    username: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    totp: Annotated[str, StringConstraints(max_length=16)] | None = None


class LoginOut(BaseModel):
    username: str
    role: Role
    tenant: str | None
    csrf_token: str = Field(description="send it as X-CSRF-Token with every POST/PUT/DELETE")
    expires_at: float


class WhoAmI(BaseModel):
    name: str
    kind: Literal["session", "token"]
    role: Role
    tenant: str | None


class OkOut(BaseModel):
    ok: bool = True


class AdminIn(_In):
    username: Name
    role: Role = "read-only"
    tenant: TenantName | None = None
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        None, description="omit to have a strong one generated (returned once)"
    )


class AdminOut(BaseModel):
    id: int
    username: str
    role: Role
    tenant: str | None
    totp: bool
    enabled: bool
    created_at: float
    last_login_at: float | None = None


class AdminCreated(AdminOut):
    password: str | None = Field(None, description="the generated password, shown once")


class TokenIn(_In):
    name: Name
    scope: Role = "read-only"
    tenant: TenantName | None = None
    expires_days: Annotated[float, Field(gt=0, le=3660)] | None = 90.0


class TokenOut(BaseModel):
    id: int
    name: str
    owner: str
    scope: Role
    tenant: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


class TokenCreated(TokenOut):
    token: str = Field(description="the bearer token, shown once; only its hash is stored")


# -- tenants, extensions, trunks, DIDs -------------------------------------------------


class TenantIn(_In):
    name: TenantName
    realm: Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NO_CONTROL)]
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] = "US"


class TenantOut(BaseModel):
    tenant: str
    realm: str
    country: str
    extensions: int


class ExtensionIn(_In):
    number: Annotated[str, StringConstraints(pattern=NUMBER_PATTERN)]
    display_name: Annotated[str, StringConstraints(max_length=128, pattern=NO_CONTROL)] | None = (
        None
    )
    password: SecretStr | None = Field(
        None,
        max_length=256,
        description="SIP password; omit to have a strong one generated (recommended). "
        "A weak one is refused (400) with the reason",
    )


class PasswordIn(_In):
    password: SecretStr | None = Field(
        None, max_length=256, description="the new SIP password; omit to generate one"
    )


class CallerIdIn(_In):
    number: Annotated[str, StringConstraints(max_length=32, pattern=NO_CONTROL)] | None = Field(
        None,
        description="one of the tenant's DIDs to present; null goes back to the default "
        "(its own DID, else the tenant's lowest). Leave out with 'default': false to keep it",
    )
    default: bool = Field(False, description="present the default number again")
    withhold: bool | None = Field(None, description="withhold the caller ID on every call")


class TrunkIdentityIn(_In):
    assert_identity: bool = Field(
        description="send P-Asserted-Identity (RFC 3325): only to a carrier that trusts the PBX"
    )


class TrunkTransfersIn(_In):
    accept: bool = Field(
        description="perform the carrier's REFERs (each target judged by the guard as a "
        "call of our extension in the call); false: answer them 403"
    )


class TrunkAccessIn(_In):
    allow: bool = Field(description="its credentials may be used from a trunk's address")


class LockOut(BaseModel):
    tenant: str
    number: str
    locked: bool


class ExtensionOut(BaseModel):
    tenant: str
    number: str
    display_name: str | None
    enabled: bool
    networks: str | None
    suspended: str | None
    registrations: int
    locked_until: float | None = Field(
        None,
        description="locked after distributed password guessing until then (Unix time): "
        "refused from networks it never registered from; a new password lifts it",
    )
    lock_reason: str | None = None
    trunk_access: bool = Field(
        False, description="its credentials may be used from a trunk's address"
    )
    caller_id: str | None = Field(
        None,
        description="the DID its calls to carriers present (null: its own DID, else the "
        "tenant's lowest)",
    )
    withhold_caller_id: bool = Field(False, description="its calls withhold the caller ID")


class PasswordOut(BaseModel):
    tenant: str
    number: str
    password: str | None = Field(
        description="generated SIP password, shown once (null when you chose it); only "
        "digest hashes are stored"
    )


class NetworksIn(_In):
    networks: list[Annotated[str, StringConstraints(max_length=64, pattern=NO_CONTROL)]] = Field(
        [], max_length=100, description="CIDR networks; empty: anywhere"
    )


class SuspendIn(_In):
    reason: LongText = "suspended by an admin"


class ResumeIn(_In):
    force: bool = Field(
        False,
        description="resume an extension suspended for fraud although its SIP password has "
        "not changed since (recorded in the audit log with the reason)",
    )
    reason: LongText | None = Field(None, description="why; required with force")


class SuspensionOut(BaseModel):
    tenant: str
    number: str
    suspended: bool


class TrunkIn(_In):
    name: TenantName
    host: Annotated[str, StringConstraints(max_length=253, pattern=NO_CONTROL)] = Field(
        description="IP address or DNS name (NAPTR, SRV, A/AAAA: RFC 3263)"
    )
    port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        None, description="default 5060; for a DNS name, the port from SRV"
    )
    transport: Literal["udp", "tcp", "auto"] | None = Field(
        None, description="default udp; for a DNS name, auto: as NAPTR and SRV say"
    )
    prefixes: list[Annotated[str, StringConstraints(max_length=17, pattern=NO_CONTROL)]] = Field(
        ["+"], max_length=100, description="E.164 prefixes routed to this trunk; + for all"
    )
    username: Annotated[str, StringConstraints(max_length=128, pattern=NO_CONTROL)] | None = Field(
        None, description="digest user name towards the carrier"
    )
    password: SecretStr | None = Field(
        None, description="digest password; stored sealed, never returned", max_length=256
    )
    realm: Annotated[str, StringConstraints(max_length=255, pattern=NO_CONTROL)] | None = None
    keep_registered: bool = Field(False, description="keep the PBX registered to the carrier")
    register_expires: Annotated[int, Field(ge=60, le=86400)] | None = None
    emergency: bool = Field(False, description="the tenant's emergency calls go out here")
    inbound_from: list[Annotated[str, StringConstraints(max_length=43, pattern=NO_CONTROL)]] = (
        Field([], max_length=50, description="networks (CIDR) the carrier also calls from")
    )


class TrunkOut(BaseModel):
    tenant: str
    name: str
    host: str
    port: int | None = Field(description="None: from DNS (SRV)")
    transport: str
    prefixes: str
    inbound_from: str | None = None
    username: str | None = None
    credentials: bool = False
    keep_registered: bool = Field(False, validation_alias="register")
    emergency: bool = False
    assert_identity: bool = Field(True, description="the carrier gets P-Asserted-Identity")
    accept_transfers: bool = Field(False, description="the carrier's REFERs are performed")


class DidIn(_In):
    number: Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=NO_CONTROL)]
    extension: Annotated[str, StringConstraints(pattern=NUMBER_PATTERN)]


class DidOut(BaseModel):
    number: str
    tenant: str
    extension: str


# -- forwarding ------------------------------------------------------------------------


class ForwardIn(_In):
    target: Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=NO_CONTROL)]
    ring_time: Annotated[float, Field(ge=1, le=300)] | None = Field(
        None, description="seconds of ringing before no-answer forwarding applies"
    )


class ForwardingOut(BaseModel):
    tenant: str
    extension: str
    always: str | None
    busy: str | None
    noanswer: str | None
    ring_time: float | None


class ForwardingChangeOut(BaseModel):
    tenant: str
    extension: str
    kind: str
    old: str | None
    new: str | None
    actor: str
    source: str
    at: float
    refused: str | None = Field(None, description="why the change was refused (nothing changed)")


# -- operations ------------------------------------------------------------------------


class CdrOut(BaseModel):
    id: int
    call_id: str
    tenant: str
    extension: str | None
    caller: str
    callee: str
    kind: str
    disposition: str
    sip_code: int | None
    decision: str
    reasons: str
    start_ts: float
    answer_ts: float | None
    end_ts: float | None
    duration: float | None
    callee_e164: str | None
    dest_country: str | None
    number_type: str | None
    trunk: str | None
    forwarded_by: str | None
    score: int | None
    severity: str | None
    cost: float | None


class CdrPage(BaseModel):
    items: list[CdrOut]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last")


class CallOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    call_id: str
    tenant: str
    caller: str | None = None
    callee: str | None = None
    state: str | None = None
    seconds: int | None = None
    node: str | None = Field(None, description="the cluster node carrying it (a cluster)")
    node_state: str | None = Field(None, description="that node's state: up, lost, stopped")


class RegistrationOut(BaseModel):
    tenant: str
    number: str
    id: str = Field(description="handle of this binding, to remove it")
    source: str = Field(description="transport:address:port it registered from")
    address: str
    transport: str | None = None
    front: str | None = Field(None, description="the SIP front it registered through")
    user_agent: str | None = None
    registered_at: float | None = None
    expires_at: float
    expires_in: int
    contact: str


class AlertOut(BaseModel):
    id: int
    tenant: str
    extension: str | None
    severity: str
    rule: str
    summary: str
    reasons: list[str]
    status: str
    count: int
    first_at: float
    last_at: float
    acked_by: str | None
    acked_at: float | None
    resolved_by: str | None
    resolved_at: float | None


class BanIn(_In):
    address: Annotated[str, StringConstraints(max_length=45, pattern=ADDRESS_PATTERN)]
    duration: Annotated[float, Field(ge=1, le=10 * 365 * 86400)] = 86400.0
    reason: Text = "manual ban"
    force: bool = Field(
        False, description="ban even a trunk's carrier, loopback or the caller's own address"
    )


class BanOut(BaseModel):
    address: str
    reason: str
    expires_in: int
    level: int


class AuditOut(BaseModel):
    id: int
    at: float
    actor: str
    source: str
    tenant: str | None
    action: str
    resource: str
    before: object | None
    after: object | None


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_before: int | None = Field(description="pass as before= for the next (older) page")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = None
