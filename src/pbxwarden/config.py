"""Configuration: ``pbxwarden.toml`` in the data directory, overridden by environment variables.

Environment variables are ``PBXWARDEN_<SECTION>__<KEY>`` (e.g. ``PBXWARDEN_SIP__LISTEN``).
Everything is validated by pydantic so that a bad value is one clear message at start-up,
not a failure in the middle of a call.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pbxwarden.guard.alerts_config import AlertsConfig
from pbxwarden.guard.ceiling import ProviderCeiling
from pbxwarden.guard.policy import GuardConfig

CONFIG_FILE = "pbxwarden.toml"
SECRET_FILE = "digest.key"
ENV_PREFIX = "PBXWARDEN_"


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to fix."""


def parse_hostport(value: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host``; raises ValueError with a readable reason."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {value!r}")
    elif value.count(":") > 1:  # bare IPv6 without port
        host, port_text = value, ""
    else:
        host, _, port_text = value.partition(":")
    if not host:
        raise ValueError(f"missing host in {value!r}")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"bad port in {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Section):
    listen: str = Field("127.0.0.1:5061", description="TLS listen address, host:port")
    cert_file: Path
    key_file: Path


class SipConfig(_Section):
    listen: str = Field("127.0.0.1:5060", description="SIP listen address (UDP and TCP)")
    transports: list[Literal["udp", "tcp"]] = ["udp", "tcp"]
    tls: TlsConfig | None = None
    realm: str = Field("pbxwarden", description="digest realm of the default tenant")
    t1: float = Field(0.5, gt=0, le=10)
    t2: float = Field(4.0, gt=0, le=64)
    t4: float = Field(5.0, gt=0, le=64)
    min_expires: int = Field(60, ge=1, le=86400)
    max_expires: int = Field(3600, ge=1, le=604800)
    default_expires: int = Field(3600, ge=1, le=604800)
    max_contacts: int = Field(10, ge=1, le=100)
    nonce_lifetime: float = Field(300.0, ge=5, le=86400)
    # MD5 alone by default: many phones (and SIPp) read only the first challenge and fail
    # on SHA-256. Add "SHA-256" once every phone supports it; it is then offered first.
    digest_algorithms: list[Literal["SHA-256", "MD5"]] = ["MD5"]
    user_agent: str = "pbxwarden"
    max_connections: int = Field(
        4096,
        ge=16,
        le=1_000_000,
        description="TCP and TLS connections at once, all sources (the open-files limit is "
        "raised to fit); when full, idle connections without a valid request go first",
    )
    new_connection_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="seconds a new TCP/TLS connection has to send a valid SIP request, "
        "TLS handshake included (2 s once the table is three quarters full)",
    )
    idle_timeout: float = Field(
        900.0,
        ge=10,
        le=86400,
        description="seconds an established TCP/TLS connection may stay silent "
        "(keep-alives count; 120 s once the table is three quarters full)",
    )
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="registrar worker processes for REGISTERs (0: all in one process)",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, _ = parse_hostport(value, 5060)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"listen host must be an IP address, got {host!r}") from None
        return value

    @field_validator("digest_algorithms")
    @classmethod
    def _nonempty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one digest algorithm is needed")
        return value

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_hostport(self.listen, 5060)


class HttpConfig(_Section):
    enabled: bool = Field(False, description="serve the admin API (also: serve --http)")
    listen: str = Field("127.0.0.1:8080", description="admin HTTP listen address")
    admin_networks: list[str] = Field(
        ["127.0.0.0/8", "::1/128"],
        description="networks the admin API answers; every other address gets 403 first",
    )
    session_lifetime: float = Field(
        8 * 3600.0, ge=60, le=30 * 86400, description="seconds a login session lasts"
    )
    login_failure_limit: int = Field(
        5, ge=1, le=1000, description="failed logins per user name within the window: lockout"
    )
    login_source_failure_limit: int = Field(
        20, ge=1, le=10000, description="failed logins per source address within the window"
    )
    login_failure_window: float = Field(900.0, gt=0, le=86400)
    lockout_seconds: float = Field(900.0, gt=0, le=86400, description="how long a lockout lasts")
    cookie_secure: bool = Field(
        True, description="session cookie only over HTTPS (browsers allow it on localhost)"
    )

    @field_validator("admin_networks")
    @classmethod
    def _check_admin_networks(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"not a network: {net!r} (use CIDR, e.g. 192.0.2.0/24)") from None
        return value


class StorageConfig(_Section):
    url: str | None = Field(None, description="SQLAlchemy URL; SQLite in the data dir if unset")
    flush_interval: float = Field(0.2, gt=0, le=300, description="registration write-back period")


class FirewallConfig(_Section):
    rate_limit: int = Field(100, ge=1, description="requests per source per rate_window")
    proven_rate_limit: int = Field(
        1000,
        ge=1,
        description="the same for a source that registered with a right password in the last "
        "hour: a phone subscribing to its busy lamps at boot is not a flood",
    )
    trusted_rate_limit: int = Field(
        5000, ge=1, description="the same for allow-listed sources and trunks: excess dropped"
    )
    rate_window: float = Field(2.0, gt=0, le=60)
    auth_failure_limit: int = Field(10, ge=1, le=1000)
    auth_failure_window: float = Field(300.0, gt=0, le=86400)
    distributed_sources: int = Field(5, ge=2, le=1000)
    ban_steps: list[float] = Field([600.0, 3600.0, 86400.0], min_length=1)
    reject_banned: bool = Field(False, description="answer 403 instead of silence")
    identity_limit: int = Field(
        50, ge=2, le=100_000, description="distinct users one address may claim per window"
    )
    identity_window: float = Field(60.0, gt=0, le=3600)
    geoip_database: Path | None = Field(
        None, description="MaxMind GeoLite2/GeoIP2 Country .mmdb: watch registration countries"
    )
    nftables: bool = Field(False, description="mirror bans into an nftables set (root)")
    nftables_table: str = Field("pbxwarden", pattern=r"^[A-Za-z0-9_]{1,32}$")
    approve_new_networks: bool = Field(
        False, description="refuse registrations from a new network until an admin approves"
    )
    allow: list[str] = Field([], description="networks never banned (trunks, admins)")
    connections_per_source: int = Field(
        64,
        ge=1,
        le=100_000,
        description="TCP/TLS connections one address (IPv6: one /64) may hold; "
        "one more is a connection flood: refused, the source banned",
    )
    trusted_connections_per_source: int = Field(
        1024,
        ge=1,
        le=100_000,
        description="the same for allow-listed networks and trunk hosts: more is refused, "
        "never banned",
    )
    # extension locks (pbxwarden.firewall.locks): failures per extension, every source
    lock_failures: int = Field(10, ge=2, le=10_000)
    lock_window: float = Field(600.0, gt=0, le=86400)
    lock_sources: int = Field(2, ge=1, le=1000)
    lock_steps: list[float] = Field([3600.0, 86400.0, 604800.0], min_length=1)

    @field_validator("allow")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"not a network: {net!r} (use CIDR, e.g. 192.0.2.0/24)") from None
        return value

    @field_validator("ban_steps", "lock_steps")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError("durations must be positive seconds")
        return value


class CallsConfig(_Section):
    overload_lag: float = Field(
        0.25,
        ge=0,
        le=10,
        description="event-loop lag (s) above which new calls get 503 instead of work, when "
        "it lasts and SIP waits behind it (0: off)",
    )
    overload_queue: int = Field(
        2_000_000,
        ge=0,
        description="bytes of SIP datagrams waiting in the kernel above which new calls get "
        "503 (0: off); a deep queue is seconds of delay the event loop does not see",
    )
    admission_wait: float = Field(
        0.25,
        ge=0,
        le=5,
        description="seconds a new call over UDP may wait behind calls in progress before "
        "it gets 503 (twice that for one answering our challenge); 0: every datagram in "
        "arrival order",
    )
    drain_timeout: float = Field(
        0.0,
        ge=0,
        le=86400,
        description="on stop (SIGTERM), seconds the node refuses new calls with 503 (a SIP "
        "front sends them to another node) while its calls in progress go on, before it "
        "hangs up those left; 0: hang up at once",
    )
    ring_timeout: float = Field(
        60.0, gt=0, le=600, description="seconds before a call is unanswered"
    )
    max_duration: float = Field(
        14400.0, gt=0, le=86400, description="seconds; then both legs hang up"
    )
    session_min_se: int = Field(
        90,
        ge=1,
        le=86400,
        description="shortest session-timer interval (s) a caller may ask for; shorter "
        "ones get 422 (RFC 4028 sets 90; less is for tests)",
    )
    keepalive: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="seconds between in-dialog OPTIONS to both phones of an answered call; "
        "a call a phone no longer knows (481) or that goes unanswered is hung up (0: off)",
    )
    park_slots: int = Field(
        9,
        ge=0,
        le=99,
        description="park slots per tenant, dialled as the park code and 1, 2... (0: no park)",
    )
    park_timeout: float = Field(
        120.0,
        ge=0,
        le=3600,
        description="seconds a call waits parked before it rings the extension that parked "
        "it (0: it waits until retrieved or hung up)",
    )


class MediaConfig(_Section):
    """The built-in RTP relay: media of every call anchored on the PBX's own ports."""

    relay: bool = Field(
        False, description="anchor RTP at the PBX (phones behind NAT); off: SDP passed through"
    )
    bind: str | None = Field(None, description="address the relay's ports bind to; default sip")
    address: str | None = Field(
        None, description="address written into SDP (the PBX as phones reach it); default bind"
    )
    port_min: int = Field(10000, ge=1024, le=65534)
    port_max: int = Field(20000, ge=1025, le=65535)
    timeout: float = Field(
        120.0,
        ge=0,
        le=86400,
        description="an answered call with no RTP or RTCP for this long is hung up (0: never)",
    )

    @field_validator("bind", "address")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"must be an IP address, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _range(self) -> MediaConfig:
        if self.port_max - self.port_min < 3:
            raise ValueError("port_max must leave room above port_min for a port pair")
        return self


class DnsConfig(_Section):
    """Resolving trunks given by DNS name (RFC 3263: NAPTR, SRV, A/AAAA)."""

    nameservers: list[str] = Field(
        [], description="DNS servers for trunk names, IP or IP:port; empty: the system's"
    )
    timeout: float = Field(3.0, gt=0, le=30, description="seconds for one DNS question")
    min_ttl: float = Field(
        30.0, ge=1, le=86400, description="answers are kept at least this long (seconds)"
    )
    max_ttl: float = Field(
        3600.0, ge=1, le=604800, description="and at most this long, whatever their TTL"
    )

    @field_validator("nameservers")
    @classmethod
    def _check_nameservers(cls, value: list[str]) -> list[str]:
        for server in value:
            host, _ = parse_hostport(server, 53)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"a DNS server must be an IP address, got {host!r}") from None
        return value

    @model_validator(mode="after")
    def _ttls(self) -> DnsConfig:
        if self.min_ttl > self.max_ttl:
            raise ValueError("min_ttl must not exceed max_ttl")
        return self

    def nameserver_addresses(self) -> list[tuple[str, int]]:
        return [parse_hostport(server, 53) for server in self.nameservers]


class FeaturesConfig(_Section):
    """Codes dialled on a phone; ``*72`` followed by a number sets unconditional forwarding."""

    forward_always_set: str = "*72"
    forward_always_clear: str = "*73"
    forward_busy_set: str = "*90"
    forward_busy_clear: str = "*91"
    forward_noanswer_set: str = "*92"
    forward_noanswer_clear: str = "*93"
    park: str = "*70"  # transfer a call here to park it; its slots are *701, *702...
    hours_override: str = "*62"  # and a time condition's number: force it, or stop

    @field_validator("*")
    @classmethod
    def _code(cls, value: str) -> str:
        if not re.fullmatch(r"[*#][0-9*#]{1,6}", value):
            raise ValueError(f"feature code {value!r} must start with * or # (e.g. *72)")
        return value

    def codes(self) -> dict[str, tuple[str, bool]]:
        """code -> (forwarding kind, sets it)."""
        return {
            self.forward_always_set: ("always", True),
            self.forward_always_clear: ("always", False),
            self.forward_busy_set: ("busy", True),
            self.forward_busy_clear: ("busy", False),
            self.forward_noanswer_set: ("noanswer", True),
            self.forward_noanswer_clear: ("noanswer", False),
        }


def _hostname() -> str:
    import socket

    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64]
    return name or "node"


class ClusterConfig(_Section):
    """Several nodes as one PBX (docs/cluster.md): live state shared through Redis."""

    redis_url: str = Field(
        "",
        description="redis://[:password@]host:port/db of the Redis every node shares "
        "(bans, brute-force counts), or redis+sentinel://host:port,host:port/service/db "
        "for the master Redis Sentinel names (failover); empty: a single node, nothing "
        "shared",
    )
    node: str = Field(
        default_factory=_hostname,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="this node's name in the cluster (default: the host name)",
    )
    key_prefix: str = Field(
        "pbxwarden:",
        pattern=r"^[A-Za-z0-9._:{}-]{0,64}$",
        description="prefix of every Redis key and channel: several PBXs on one Redis",
    )
    timeout: float = Field(
        0.5,
        gt=0,
        le=10,
        description="seconds one Redis command may take; past it the node carries on "
        "alone (local state) until Redis answers again",
    )
    reconcile_interval: float = Field(
        5.0,
        ge=0.5,
        le=3600,
        description="seconds between full comparisons of this node's bans and locks with "
        "the shared ones (messages missed, a node started later)",
    )
    costly_when_down: Literal["refuse", "local"] = Field(
        "refuse",
        description="costly calls while Redis is unreachable: refused (the call limits "
        "cannot be known for the whole PBX) or judged on this node's own counts",
    )
    fronts: list[str] = Field(
        default_factory=list,
        description="IP addresses of the SIP fronts (Kamailio) relaying to this node: "
        "their X-PBX-Source header is the phone's real source, believed from them only, "
        "and they are never banned; empty: nothing trusted",
    )
    heartbeat_interval: float = Field(
        2.0,
        ge=0.05,
        le=60,
        description="seconds between this node's heartbeats in the node registry "
        "(pbxwarden cluster status)",
    )
    lost_after: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="seconds without a heartbeat after which this node is shown as lost "
        "(more than heartbeat_interval)",
    )
    baseline_interval: float = Field(
        60.0,
        ge=0.2,
        le=3600,
        description="seconds between merges of the guard's learned baselines: this node's "
        "own stored, the other nodes' read from the shared database",
    )

    @field_validator("fronts")
    @classmethod
    def _check_fronts(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_address(item.strip())))
            except ValueError:
                raise ValueError(f"a front must be an IP address, got {item!r}") from None
        return out

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip()
        if value and not re.match(r"^(redis|rediss|unix|redis\+sentinel)://", value):
            raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
        if value.startswith("redis+sentinel://"):
            from pbxwarden.cluster.connection import parse_sentinel

            parse_sentinel(value)  # its ValueError says what is wrong
        return value

    @model_validator(mode="after")
    def _check_lost_after(self) -> ClusterConfig:
        if self.lost_after <= self.heartbeat_interval:
            raise ValueError("cluster.lost_after must be more than cluster.heartbeat_interval")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_format: bool = Field(False, alias="json")


class Config(_Section):
    sip: SipConfig = SipConfig()
    http: HttpConfig = HttpConfig()
    storage: StorageConfig = StorageConfig()
    firewall: FirewallConfig = FirewallConfig()
    calls: CallsConfig = CallsConfig()
    media: MediaConfig = MediaConfig()
    dns: DnsConfig = DnsConfig()
    features: FeaturesConfig = FeaturesConfig()
    guard: GuardConfig = GuardConfig()
    provider: ProviderCeiling = ProviderCeiling()
    alerts: AlertsConfig = AlertsConfig()
    cluster: ClusterConfig = ClusterConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _media_address(self) -> Config:
        if self.media.relay and self.media.address is None:
            bind = self.media.bind or self.sip.listen_address[0]
            if ipaddress.ip_address(bind).is_unspecified:
                raise ValueError(
                    f"media.address is needed with the relay bound to {bind}: "
                    "the address phones reach the PBX at, written into SDP"
                )
        return self

    def media_addresses(self) -> tuple[str, str]:
        """Where the relay binds, and the address it writes into SDP."""
        bind = self.media.bind or self.sip.listen_address[0]
        return bind, self.media.address or bind

    def database_url(self, data_dir: Path) -> str:
        return self.storage.url or f"sqlite:///{data_dir / 'pbxwarden.db'}"


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Turn ``PBXWARDEN_SIP__LISTEN=...`` into ``{"sip": {"listen": ...}}``.

    Values that look like JSON lists (``["udp"]``) are decoded, so list settings can be set.
    """
    import json

    tree: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {key} conflicts with another")
        parsed: Any = value
        if value.startswith("["):
            try:
                parsed = json.loads(value)
            except ValueError:
                raise ConfigError(f"environment variable {key} is not a valid list") from None
        node[path[-1]] = parsed
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(error: ValidationError, source: str, env: dict[str, Any] | None = None) -> str:
    """One line per problem (the whole message on one line when there is one): the key,
    what is wrong, and for a key that does not exist the nearest one that does."""
    from pbxwarden.config_hints import suggest

    problems = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            variable = _variable(err["loc"], env or {})
            text = f"unknown key {where}" + (f" ({variable})" if variable else "")
            hint = suggest(Config, err["loc"])
            problems.append(text + (f": did you mean {hint}?" if hint else ""))
        else:
            problems.append(f"{where}: {err['msg']}")
    if len(problems) == 1:
        return f"invalid configuration ({source}): {problems[0]}"
    return "\n".join([f"invalid configuration ({source}):", *(f"  {p}" for p in problems)])


def _variable(loc: tuple[int | str, ...], env: dict[str, Any]) -> str | None:
    """The environment variable that set ``loc``, if one did."""
    node: Any = env
    path = [str(p) for p in loc]
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    while isinstance(node, dict) and node:  # an unknown section: one of its variables
        part = next(iter(node))
        path.append(part)
        node = node[part]
    return ENV_PREFIX + "__".join(p.upper() for p in path)


def load_config(data_dir: Path, environ: dict[str, str] | None = None) -> Config:
    """Load and validate; raises :class:`ConfigError` with a human-readable message."""
    path = data_dir / CONFIG_FILE
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    variables = dict(os.environ if environ is None else environ)
    env = _env_overrides(variables)
    try:
        config = Config.model_validate(_merge(raw, env))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, f"{path} and {ENV_PREFIX}* variables", env)) from None
    from pbxwarden.config_hints import misnamed_variables

    for name, meant in misnamed_variables(Config, variables, ENV_PREFIX):
        raise ConfigError(f"environment variable {name} is not read: did you mean {meant}?")
    return config


def load_or_create_secret(data_dir: Path) -> bytes:
    """The server secret that signs digest nonces; created once, readable by the owner only."""
    path = data_dir / SECRET_FILE
    if path.exists():
        secret = path.read_bytes()
        if len(secret) < 32:
            raise ConfigError(f"{path} is too short to be a secret; delete it to regenerate")
        return secret
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
    return secret


DEFAULT_CONFIG_TEXT = """\
# pbxwarden configuration. Every key can be overridden by an environment variable
# PBXWARDEN_<SECTION>__<KEY>, e.g. PBXWARDEN_SIP__LISTEN=0.0.0.0:5060.

[sip]
listen = "127.0.0.1:5060"        # UDP and TCP
transports = ["udp", "tcp"]
realm = "pbxwarden"              # digest realm; changing it invalidates stored SIP passwords
digest_algorithms = ["MD5"]      # add "SHA-256" (RFC 8760) when all phones support it
min_expires = 60
max_expires = 3600
default_expires = 3600
workers = 0                      # registrar processes for REGISTERs (e.g. one per core)
max_connections = 4096           # TCP/TLS connections at once (open-files limit raised to fit)
new_connection_timeout = 10      # seconds to send a valid request (TLS handshake included)
idle_timeout = 900               # seconds an established connection may be silent
                                 #   (both shorter once the table is three quarters full)
# [sip.tls]
# listen = "127.0.0.1:5061"
# cert_file = "/etc/pbxwarden/cert.pem"
# key_file = "/etc/pbxwarden/key.pem"

[http]
enabled = false                  # the admin API and /metrics (or: pbxwarden serve --http ADDR)
listen = "127.0.0.1:8080"
admin_networks = ["127.0.0.0/8", "::1/128"]   # every other address gets 403

[storage]
# url = "postgresql+psycopg://pbx:secret@127.0.0.1/pbxwarden"   # default: SQLite in the data dir

[firewall]
rate_limit = 100                 # requests per source per rate_window (seconds); more is a flood
rate_window = 2.0
trusted_rate_limit = 5000        # allow-listed sources and trunks: never banned, excess dropped
proven_rate_limit = 1000         # a source that registered in the last hour (busy lamp bursts)
auth_failure_limit = 10          # failed authentications per source within auth_failure_window
auth_failure_window = 300
ban_steps = [600, 3600, 86400]   # first, second, third and later bans (seconds)
reject_banned = false            # false: banned sources get silence, which teaches them nothing
allow = []                       # networks never banned: your trunks and admin networks (CIDR)
approve_new_networks = false     # true: a phone registering from a new /24 waits for approval
# geoip_database = "/var/lib/GeoIP/GeoLite2-Country.mmdb"  # also watch for a new country
nftables = false                 # true (Linux, root): the kernel drops banned sources' SIP traffic
identity_limit = 50              # more distinct users claimed by one address per window:
identity_window = 60             #   extension enumeration, banned
connections_per_source = 64      # TCP/TLS connections per address (IPv6: per /64); more:
                                 #   a connection flood, banned
trusted_connections_per_source = 1024   # allow-listed networks and trunks: refused, not banned
lock_failures = 10               # failed authentications of one extension within lock_window
lock_window = 600                #   from lock_sources or more addresses (or from a trunk's):
lock_sources = 2                 #   locked against networks it never registered from
lock_steps = [3600, 86400, 604800]  # first, second, third and later locks (seconds)

[calls]
ring_timeout = 60                # seconds of ringing before the caller hears "no answer"
max_duration = 14400             # no call lasts longer than this (seconds)
keepalive = 60                   # ask both phones every this many seconds whether the call
                                 #   still exists (in-dialog OPTIONS); dead calls are hung up
park_slots = 9                   # transfer a call to *70 to park it in the first free slot
park_timeout = 120               #   (*701-*709); dial the slot to take it; after this long
                                 #   it rings the extension that parked it
overload_lag = 0.25              # when the server lags this much (s), new calls get 503 (0: off)
overload_queue = 2000000         # ... or this many bytes of SIP wait in the kernel's buffer
admission_wait = 0.25            # calls in progress are served first; a new call waiting
                                 #   longer than this behind them gets 503 (0: arrival order)
drain_timeout = 0                # on stop, new calls get 503 and calls in progress go on for
                                 #   up to this long (a rolling restart behind a front)

[media]
relay = false                    # true: RTP flows through the PBX (phones behind NAT);
                                 #   false: phones send media to each other directly
# bind = "192.0.2.10"            # the relay's ports (default: the sip.listen address)
# address = "203.0.113.10"       # the PBX's address as phones reach it (written into SDP)
port_min = 10000                 # an even port for RTP, the next one for RTCP, per side
port_max = 20000
timeout = 120                    # answered calls with no media for this long are hung up

[dns]                            # trunks given by name (trunk add --host carrier.example)
nameservers = []                 # e.g. ["192.0.2.53", "192.0.2.54:5353"]; empty: the system's
timeout = 3                      # seconds for one DNS question
min_ttl = 30                     # answers are kept between min_ttl and max_ttl seconds,
max_ttl = 3600                   #   as their TTL says; a failed lookup keeps the last answer

[features]
forward_always_set = "*72"       # *72 followed by a number: forward every call there
forward_always_clear = "*73"
forward_busy_set = "*90"
forward_busy_clear = "*91"
forward_noanswer_set = "*92"
forward_noanswer_clear = "*93"
park = "*70"                     # call park (slots: this code and 1, 2...)
hours_override = "*62"           # *62 and a time condition's number: force it the other
                                 #   way from its hours, dial again to follow them

# The fraud guard. Closed by default: national fixed, mobile and toll-free numbers
# only. Per-tenant overrides go in [guard.tenants.NAME] with the same keys.
[guard.default]
allow_countries = []             # e.g. ["DE", "FR"]: international calls to these
allow_special = []               # e.g. ["premium-rate"]: only if you really mean it
allow_high_risk = false          # destinations known for revenue-share fraud
allow_prefixes = []              # E.164 prefixes always allowed (e.g. a partner's number)
deny_prefixes = []               # E.164 prefixes always refused
max_concurrent_calls = 10        # costly calls in progress per tenant
max_concurrent_per_extension = 2
calls_per_minute = 6             # costly attempts per extension
calls_per_hour = 60
spend_per_hour = 20.0            # estimated spend per extension (rate table; see docs/guard.md)
spend_per_day = 100.0
tenant_spend_per_day = 500.0
max_call_minutes = 240           # costly calls are cut off after this
# timezone = "Europe/Madrid"
# business_hours = ["mon-fri 08:00-18:00"]
# [guard.default.after_hours]    # what changes outside business hours
# allow_countries = []
# rates_file = "/etc/pbxwarden/rates.toml"   # (under [guard]) your carrier's prices

# The most a tenant's own admin (an API account bound to one tenant) may open in its
# policy; your own admins and this file are not bounded by it.
[provider]
allow_special = []               # e.g. ["shared-cost"]; "premium-rate" only if you mean it
allow_high_risk = false
allow_international_forwarding = true
max_spend_per_hour = 100.0       # per extension
max_spend_per_day = 500.0        # per extension
max_tenant_spend_per_day = 2000.0
max_concurrent_calls = 50
max_calls_per_hour = 600
max_call_minutes = 480
allow_report_only = false        # may a tenant admin put fraud rules in report-only mode
max_learning_days = 30.0
max_block_score = 90
allow_no_suspension = false

# Where alerts go (besides `pbxwarden alerts` and the logs). Uncomment what you use.
[alerts]
min_severity = "warning"
# [alerts.webhook]
# url = "https://hooks.example.com/pbxwarden"
# secret = "a long random string shared with the receiver"   # HMAC-SHA256 signature
# [alerts.email]
# host = "smtp.example.com"
# sender = "pbx@example.com"
# recipients = ["it@example.com"]
# username = "pbx@example.com"
# password = "..."
# [alerts.syslog]
# address = "unix:/dev/log"      # or "udp:192.0.2.10:514", "tcp:192.0.2.10:6514"

# Several nodes as one PBX (docs/cluster.md): bans and password-guessing counts shared
# through Redis (pip install 'pbxwarden[cluster]'). Empty: a single node.
[cluster]
redis_url = ""                   # e.g. "redis://10.0.0.5:6379/0", or Sentinel: "redis+sentinel://10.0.0.5:26379,10.0.0.6:26379/pbx/0"
# node = "pbx-a"                 # this node's name (default: the host name)
key_prefix = "pbxwarden:"        # of every key and channel: several PBXs on one Redis
timeout = 0.5                    # seconds a Redis command may take; then this node goes on alone
reconcile_interval = 5           # seconds between full comparisons with the shared state
costly_when_down = "refuse"      # costly calls while Redis is down: "refuse" or "local"
fronts = []                      # SIP fronts' addresses (Kamailio, deploy/kamailio): their
                                 #   X-PBX-Source header is believed, from them only
# heartbeat_interval = 2         # seconds between heartbeats (pbxwarden cluster status)
# lost_after = 10                # seconds without a heartbeat before a node shows as lost
# baseline_interval = 60         # seconds between merges of the guard's learned baselines

[log]
level = "info"
"""
