"""The ``[alerts]`` configuration: where the guard's alerts go, validated.

Apart from :mod:`pbxwarden.guard.alerts` (which delivers them, with httpx, aiosmtplib
and asyncio) because the configuration is loaded by every ``pbxwarden`` command and
must not pull those in; the names are re-exported there.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13,
    "console": 14, "solaris-cron": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}  # fmt: skip


class _Section(BaseModel):
    # Validation errors must not echo a rejected secret back.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WebhookChannelConfig(_Section):
    url: str = Field(description="http(s) URL the alerts are POSTed to, as JSON")
    secret: SecretStr = Field(description="HMAC-SHA256 key shared with the receiver")
    timeout: float = Field(5.0, gt=0, le=60, description="seconds per attempt")
    retries: int = Field(2, ge=0, le=5, description="again after a connection error or 5xx")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip()
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("the webhook url is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the webhook url must be http:// or https:// with a host")
        if any(c.isspace() or ord(c) < 32 for c in value):
            raise ValueError("the webhook url must not contain spaces or control characters")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("the webhook secret must be at least 16 characters")
        return value

    @property
    def origin(self) -> str:
        """scheme://host[:port]: what may be logged (paths often hold a token)."""
        parts = urlsplit(self.url)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _check_address(value: str) -> str:
    addr = parseaddr(value)[1]
    if any(c in value for c in "\r\n") or "@" not in addr or " " in addr:
        raise ValueError(f"{value!r} is not an e-mail address")
    return value


class EmailChannelConfig(_Section):
    host: str = Field(description="SMTP server")
    port: int | None = Field(None, ge=1, le=65535, description="default 465 (tls), 587, 25")
    starttls: bool = Field(True, description="upgrade with STARTTLS (fails if not offered)")
    tls: bool = Field(False, description="implicit TLS (SMTPS, usually port 465)")
    ca_file: Path | None = Field(None, description="CA bundle for a relay with a private CA")
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(description="From address, e.g. 'PBX <pbx@example.com>'")
    recipients: list[str] = Field(min_length=1)
    timeout: float = Field(10.0, gt=0, le=120, description="seconds per SMTP step")

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _check_address(value)

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [_check_address(v) for v in value]

    @model_validator(mode="after")
    def _consistent(self) -> EmailChannelConfig:
        if self.tls and self.starttls:
            raise ValueError("choose tls (implicit, port 465) or starttls, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        plaintext = not (self.tls or self.starttls)
        if self.username is not None and plaintext and not _is_loopback(self.host):
            raise ValueError(
                "refusing to send the SMTP password unencrypted: set starttls or tls "
                "(only a relay on this machine may be used without)"
            )
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 465 if self.tls else 587 if self.starttls else 25


@dataclass(frozen=True, slots=True)
class _Target:
    kind: Literal["udp", "tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""


def _parse_target(value: str) -> _Target:
    kind, _, rest = value.strip().partition(":")
    if kind == "unix":
        if not rest.startswith("/"):
            raise ValueError("a unix syslog address is an absolute path: unix:/dev/log")
        return _Target("unix", path=rest)
    if kind not in ("udp", "tcp"):
        raise ValueError("syslog address must be udp:HOST:PORT, tcp:HOST:PORT or unix:/path")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise ValueError(f"bad syslog address {value!r}")
    else:
        host, _, port_text = rest.partition(":")
        if ":" in port_text:
            raise ValueError("write an IPv6 syslog address in brackets: udp:[::1]:514")
    if not host:
        raise ValueError(f"missing host in syslog address {value!r}")
    try:
        port = int(port_text) if port_text else 514
    except ValueError:
        raise ValueError(f"bad port in syslog address {value!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range in syslog address {value!r}")
    return _Target("udp" if kind == "udp" else "tcp", host=host, port=port)


class SyslogChannelConfig(_Section):
    address: str = Field(
        "unix:/dev/log", description="udp:HOST:PORT, tcp:HOST:PORT (RFC 6587) or unix:/path"
    )
    facility: int = Field(10, ge=0, le=23, description="number or name; 10 = authpriv")
    app_name: str = Field("pbxwarden", min_length=1, max_length=48)
    timeout: float = Field(5.0, gt=0, le=60)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        _parse_target(value)
        return value.strip()

    @field_validator("facility", mode="before")
    @classmethod
    def _facility(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().isdigit():
            name = value.strip().lower()
            if name not in FACILITIES:
                raise ValueError(f"unknown syslog facility {value!r}")
            return FACILITIES[name]
        return value

    @field_validator("app_name")
    @classmethod
    def _app_name(cls, value: str) -> str:
        if not all(33 <= ord(c) <= 126 for c in value):
            raise ValueError("app_name must be printable ASCII without spaces")
        return value


class AlertsConfig(_Section):
    """The ``[alerts]`` section: where the guard's alerts go."""

    min_severity: Literal["warning", "critical"] = "warning"
    repeat_after: float = Field(3600.0, ge=0, description="seconds before a repeat is sent")
    max_per_minute: int = Field(30, ge=1, description="per channel; excess is dropped")
    webhook: WebhookChannelConfig | None = None
    email: EmailChannelConfig | None = None
    syslog: SyslogChannelConfig | None = None
