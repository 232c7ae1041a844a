"""Alert channels: tell a person about an attack while it can still be stopped.

Toll fraud runs at night and on week-ends, when nobody reads the PBX's logs; an alert
that only sits in the database is found with the phone bill. So the guard's alerts are
pushed to where people (or their tools) already look: an HTTP endpoint (chat, ticketing,
SIEM), e-mail, and syslog.

Delivery must never hurt the PBX or the other channels: each channel runs concurrently
with its own timeout, a failure becomes a status string and a log line, never an
exception. An attacker can make the guard raise many alerts, so repeats of the same
problem are held back for ``repeat_after`` (unless it becomes critical) and each channel
has a per-minute budget; what exceeds it is dropped and counted, not queued. Several
nodes of one PBX send a problem they both saw once (:attr:`AlertDispatcher.shared`).

The webhook is signed (HMAC-SHA256 over ``"{timestamp}.{body}"``) so a receiver can tell
pbxwarden's alerts from forged ones and refuse replays; :func:`verify_signature` is the
receiver's side. Secrets (the webhook key, the SMTP password) are :class:`SecretStr` and
are scrubbed from every reason and log line; webhook URLs are logged as their origin only
because many services (Slack, Teams...) put a token in the path.

Syslog uses facility 10 (``authpriv``) by default, not 4 (``auth``): RFC 5424 calls both
"security/authorization", but only ``authpriv`` is kept out of the general logs
everywhere (root-only ``/var/log/secure`` on Red Hat, ``/var/log/auth.log`` on Debian,
where ``auth`` can also land in ``/var/log/messages``), which suits messages naming a
company's phones under attack. Set ``facility = "auth"`` to get 4.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import hashlib
import hmac
import json
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiosmtplib
import httpx
import structlog

from pbxwarden.guard.alerts_config import FACILITIES as FACILITIES
from pbxwarden.guard.alerts_config import (
    AlertsConfig,
    EmailChannelConfig,
    SyslogChannelConfig,
    WebhookChannelConfig,
    _parse_target,
)

__all__ = [
    "Alert",
    "AlertDispatcher",
    "AlertsConfig",
    "EmailChannelConfig",
    "SyslogChannelConfig",
    "WebhookChannelConfig",
    "sign",
    "verify_signature",
]

log = structlog.get_logger("pbxwarden.alerts")

SEVERITIES = ("warning", "critical")
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
# RFC 5424 severities: crit(2), warning(4).
_SYSLOG_SEVERITY = {"critical": 2, "warning": 4}
# pbxwarden has no IANA Private Enterprise Number; 32473 is the one RFC 5612 reserves for
# documentation. Receivers should match on the name; change it if a number is registered.
SD_ID = "pbxwarden@32473"
SIGNATURE_HEADER = "X-Pbxwarden-Signature"
TIMESTAMP_HEADER = "X-Pbxwarden-Timestamp"
_DATAGRAM_MAX = 2048  # RFC 5426: what every receiver must accept
_STREAM_MAX = 8192


# -- the alert ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as people see it; ``id`` is the stored alert's (``pbxwarden alerts``)."""

    id: int | None
    tenant: str
    extension: str | None
    severity: str  # "warning" or "critical"
    rule: str  # short machine name, e.g. "forwarding-recon", "spend-cap"
    summary: str  # one sentence a non-expert understands
    reasons: tuple[str, ...]
    at: float  # unix time
    count: int = 1

    def __post_init__(self) -> None:
        if self.severity not in _RANK:
            raise ValueError(f"alert severity must be warning or critical, not {self.severity!r}")
        if not isinstance(self.reasons, tuple):
            object.__setattr__(self, "reasons", tuple(self.reasons))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "extension": self.extension,
            "severity": self.severity,
            "rule": self.rule,
            "summary": self.summary,
            "reasons": list(self.reasons),
            "at": self.at,
            "time": _iso(self.at),
            "count": self.count,
        }


def _iso(at: float) -> str:
    """RFC 3339 in UTC, milliseconds (as RFC 5424 wants it)."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


# -- configuration: pbxwarden.guard.alerts_config (loaded by every command) ----------------


# -- webhook signatures ------------------------------------------------------------------


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def sign(secret: str | bytes, timestamp: str, body: str | bytes) -> str:
    """The ``X-Pbxwarden-Signature`` value: ``sha256=<hex>`` of ``"{timestamp}.{body}"``."""
    mac = hmac.new(_bytes(secret), _bytes(timestamp) + b"." + _bytes(body), hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str | bytes,
    timestamp: str,
    body: str | bytes,
    header: str,
    now: float,
    tolerance: float = 300,
) -> bool:
    """For receivers: is this a fresh webhook signed with ``secret``? Never raises."""
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        return False
    if abs(now - int(timestamp)) > tolerance:
        return False
    expected = sign(secret, timestamp, body).encode()
    return hmac.compare_digest(expected, header.strip().lower().encode("utf-8", "replace"))


# -- channels ----------------------------------------------------------------------------


class _DeliveryError(Exception):
    """A channel could not deliver; the message is safe to log (no secrets)."""


class _Channel(Protocol):
    name: str

    @property
    def deadline(self) -> float: ...

    @property
    def secrets(self) -> tuple[str, ...]: ...

    async def send(self, alert: Alert) -> None: ...

    async def aclose(self) -> None: ...


def _backoff(attempt: int) -> float:
    return float(min(0.2 * 3**attempt, 5.0))


def _oneline(text: str) -> str:
    return " ".join(text.split())


class _Webhook:
    name = "webhook"

    def __init__(self, config: WebhookChannelConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self._client: httpx.AsyncClient | None = None

    @property
    def deadline(self) -> float:
        retries = self.config.retries
        return self.config.timeout * (retries + 1) * 2 + sum(map(_backoff, range(retries))) + 1

    @property
    def secrets(self) -> tuple[str, ...]:
        parts = urlsplit(self.config.url)
        tail = parts.path + ("?" + parts.query if parts.query else "")
        return (self.config.secret.get_secret_value(), self.config.url) + (
            (tail,) if len(tail) >= 8 else ()  # a path often holds a token
        )

    async def send(self, alert: Alert) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.config.timeout,
                follow_redirects=False,
                headers={"User-Agent": "pbxwarden"},
            )
        body = json.dumps(alert.to_json(), separators=(",", ":"), ensure_ascii=False).encode()
        secret = self.config.secret.get_secret_value()
        origin, attempts = self.config.origin, self.config.retries + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(_backoff(attempt - 1))
            timestamp = str(int(self._clock()))
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(secret, timestamp, body),
            }
            try:
                response = await self._client.post(self.config.url, content=body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = f"cannot connect to {origin}: {str(exc) or type(exc).__name__}"
                continue
            except httpx.TimeoutException:
                raise _DeliveryError(
                    f"{origin} did not answer within {self.config.timeout:g} s"
                ) from None
            except httpx.HTTPError as exc:
                raise _DeliveryError(f"{origin}: {type(exc).__name__}: {exc}") from None
            if response.is_success:
                return
            last = f"{origin} answered HTTP {response.status_code}"
            if response.status_code < 500:
                raise _DeliveryError(last)
        raise _DeliveryError(f"{last} ({attempts} attempts)" if attempts > 1 else last)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _subject(alert: Alert) -> str:
    where = f"tenant {alert.tenant}" + (f" ext {alert.extension}" if alert.extension else "")
    summary = _oneline(alert.summary).rstrip(".")
    if len(summary) > 140:
        summary = summary[:139] + "…"
    return _oneline(f"[pbxwarden {alert.severity.upper()}] {where}: {summary}")


def _email_body(alert: Alert) -> str:
    """Plain text for the person who gets paged, who may not know what SIP is."""
    if alert.severity == "critical":
        meaning = (
            "CRITICAL means pbxwarden believes someone is trying to make calls at your\n"
            "company's expense right now. Please look at it today."
        )
    else:
        meaning = (
            "WARNING means something unusual happened that may be the start of an attack\n"
            "on your phone system. Please check that it was expected."
        )
    lines = [
        f"pbxwarden, the guard against phone fraud on your phone system, raised a "
        f"{alert.severity.upper()} alert.",
        meaning,
        "",
        "What happened",
        f"  {_oneline(alert.summary)}",
        "",
        "Where and when",
        f"  Tenant (company):   {alert.tenant}",
    ]
    if alert.extension:
        lines.append(f"  Extension (phone):  {alert.extension}")
    when = datetime.fromtimestamp(alert.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines.append(f"  Time:               {when}")
    if alert.id is not None:
        lines.append(f"  Alert number:       {alert.id}")
    if alert.count > 1:
        lines.append(f"  Seen:               {alert.count} times")
    lines += ["", "Why pbxwarden thinks so"]
    lines += [f"  - {_oneline(r)}" for r in alert.reasons] or ["  - (no details given)"]
    lines += ["", "What to do next (commands to run on the PBX server)"]
    steps: list[str] = []
    if alert.extension:
        steps += [
            "Check the extension's call forwarding:\n"
            "       pbxwarden forward list\n"
            "     A diversion nobody in your company set is the usual sign of a hijacked\n"
            "     phone; remove it with:\n"
            f"       pbxwarden forward clear {alert.extension}",
            f"Look at the recent calls of extension {alert.extension}:\n"
            "       pbxwarden cdr --since 86400",
            "If the phone's password may be known to someone else, have it changed and\n"
            "     check where the phone registers from:\n"
            "       pbxwarden extension networks",
        ]
    else:
        steps += [
            "Look at the recent calls:\n       pbxwarden cdr --since 86400",
            "Look at the addresses the SIP firewall has banned:\n       pbxwarden bans list",
        ]
    if alert.id is not None:
        steps.append(
            f"When it is dealt with, resolve the alert:\n       pbxwarden alerts resolve {alert.id}"
        )
    else:
        steps.append(
            "When it is dealt with, find the alert with `pbxwarden alerts list`\n"
            "     and resolve it with `pbxwarden alerts resolve ID`."
        )
    lines += [f"  {n}. {step}" for n, step in enumerate(steps, 1)]
    lines += [
        "",
        "-- ",
        f"Sent by pbxwarden (rule {alert.rule}). The same alert is not sent again for a",
        "while unless it becomes critical. You receive it because your address is in the",
        "[alerts.email] recipients of pbxwarden.toml.",
    ]
    return "\n".join(lines) + "\n"


# ASCII headers are short: not folding them avoids the stdlib's odd "Subject:" CRLF SP
# fold. Non-ASCII ones keep the default folding, which keeps encoded words within 75.
_ASCII_HEADER_POLICY = email.policy.default.clone(max_line_length=998)
# A non-ASCII body is sent quoted-printable or base64, which every relay accepts.
_BODY_POLICY = email.policy.default.clone(cte_type="7bit")


class _Email:
    name = "email"

    def __init__(self, config: EmailChannelConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock

    @property
    def deadline(self) -> float:
        return self.config.timeout * 8  # connect, EHLO, TLS, AUTH, MAIL, RCPT, DATA, QUIT

    @property
    def secrets(self) -> tuple[str, ...]:
        password = self.config.password
        return (password.get_secret_value(),) if password is not None else ()

    def message(self, alert: Alert) -> EmailMessage:
        cfg = self.config
        headers = {"From": cfg.sender, "To": ", ".join(cfg.recipients), "Subject": _subject(alert)}
        msg = EmailMessage(policy=_BODY_POLICY)
        msg.set_content(_email_body(alert))
        ascii_only = all(v.isascii() for v in headers.values())
        msg.policy = _ASCII_HEADER_POLICY if ascii_only else email.policy.default
        for name, value in headers.items():
            msg[name] = value
        msg["Date"] = formatdate(self._clock(), usegmt=True)
        domain = parseaddr(cfg.sender)[1].rpartition("@")[2] or "pbxwarden.invalid"
        msg["Message-ID"] = make_msgid("pbxwarden", domain=domain)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies
        if alert.id is not None:
            msg["X-Pbxwarden-Alert"] = str(alert.id)
        return msg

    async def send(self, alert: Alert) -> None:
        cfg = self.config
        where = f"{cfg.host}:{cfg.effective_port}"
        msg = self.message(alert)  # flattened here: aiosmtplib would re-fold with its policy
        raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
        try:
            errors, _ = await aiosmtplib.send(
                raw,
                sender=parseaddr(cfg.sender)[1],
                recipients=[parseaddr(r)[1] for r in cfg.recipients],
                hostname=cfg.host,
                port=cfg.effective_port,
                username=cfg.username,
                password=cfg.password.get_secret_value() if cfg.password else None,
                use_tls=cfg.tls,
                start_tls=cfg.starttls,
                cert_bundle=str(cfg.ca_file) if cfg.ca_file else None,
                timeout=cfg.timeout,
            )
        except aiosmtplib.SMTPTimeoutError:
            raise _DeliveryError(f"SMTP {where} did not answer within {cfg.timeout:g} s") from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise _DeliveryError(f"SMTP {where}: {type(exc).__name__}: {exc}") from None
        if errors:
            log.warning("alert e-mail refused for some recipients", refused=sorted(errors))

    async def aclose(self) -> None:
        return None


def _printable(value: str, limit: int) -> str:
    """An RFC 5424 header field: PRINTUSASCII, or the nil value."""
    clean = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return clean or "-"


def _sd_value(value: str) -> str:
    return _oneline(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _format_syslog(
    alert: Alert, *, facility: int, app_name: str, hostname: str, procid: str, limit: int
) -> bytes:
    """One RFC 5424 message, at most ``limit`` bytes."""
    pri = facility * 8 + _SYSLOG_SEVERITY[alert.severity]
    params = {
        "tenant": alert.tenant,
        "extension": alert.extension,
        "rule": alert.rule,
        "severity": alert.severity,
        "id": None if alert.id is None else str(alert.id),
        "count": str(alert.count),
    }
    sd = " ".join(f'{k}="{_sd_value(v)}"' for k, v in params.items() if v is not None)
    header = (
        f"<{pri}>1 {_iso(alert.at)} {_printable(hostname, 255)} {_printable(app_name, 48)} "
        f"{_printable(procid, 128)} {_printable(alert.rule, 32)} [{SD_ID} {sd}]"
    )
    text = _oneline(alert.summary)
    if alert.reasons:
        text += " Reasons: " + "; ".join(_oneline(r) for r in alert.reasons)
    msg = text.encode()
    if not text.isascii():
        msg = b"\xef\xbb\xbf" + msg  # RFC 5424 MSG-UTF8 starts with a BOM
    data = (header + " ").encode() + msg
    if len(data) > limit:
        data = data[:limit].decode("utf-8", "ignore").encode()
    return data


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.error: Exception | None = None

    def error_received(self, exc: Exception) -> None:
        self.error = exc


class _Syslog:
    name = "syslog"
    secrets: tuple[str, ...] = ()

    def __init__(self, config: SyslogChannelConfig) -> None:
        self.config = config
        self.target = _parse_target(config.address)
        self._hostname = socket.gethostname()
        self._procid = str(os.getpid())

    @property
    def deadline(self) -> float:
        return self.config.timeout * 2

    async def send(self, alert: Alert) -> None:
        target = self.target
        where = target.path if target.kind == "unix" else f"{target.host}:{target.port}"
        data = _format_syslog(
            alert,
            facility=self.config.facility,
            app_name=self.config.app_name,
            hostname=self._hostname,
            procid=self._procid,
            limit=_STREAM_MAX if target.kind == "tcp" else _DATAGRAM_MAX,
        )
        try:
            async with asyncio.timeout(self.config.timeout):
                if target.kind == "tcp":
                    await self._send_stream(data)
                else:
                    await self._send_datagram(data)
        except TimeoutError:
            raise _DeliveryError(
                f"syslog {target.kind}:{where} did not answer within {self.config.timeout:g} s"
            ) from None
        except OSError as exc:
            raise _DeliveryError(f"syslog {target.kind}:{where}: {exc}") from None

    async def _send_datagram(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        target = self.target
        if target.kind == "unix":
            transport, protocol = await loop.create_datagram_endpoint(
                _DatagramProtocol, remote_addr=target.path, family=socket.AF_UNIX
            )
        else:
            transport, protocol = await loop.create_datagram_endpoint(
                _DatagramProtocol, remote_addr=(target.host, target.port)
            )
        try:
            transport.sendto(data)
        finally:
            transport.close()
        if protocol.error is not None:
            raise protocol.error

    async def _send_stream(self, data: bytes) -> None:
        _, writer = await asyncio.open_connection(self.target.host, self.target.port)
        try:
            writer.write(f"{len(data)} ".encode() + data)  # RFC 6587 octet counting
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def aclose(self) -> None:
        return None


# -- the dispatcher ----------------------------------------------------------------------


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    text = _oneline(text)
    return text if len(text) <= 300 else text[:299] + "…"


class SharedDedupe(Protocol):
    """The repeats already sent by the PBX's other nodes (``pbxwarden.cluster.alerts``):
    the same problem seen by two nodes is sent once."""

    async def claim(self, key: str, severity: str, window: float) -> bool:
        """True: this node sends (no node sent it at this severity within ``window``,
        or that cannot be known: an extra alert beats a lost one)."""

    async def unclaim(self, key: str, severity: str) -> None:
        """Nothing was delivered: another node's next occurrence may send it."""


class AlertDispatcher:
    """Sends alerts to the configured channels, concurrently, deduplicated, rate limited."""

    def __init__(self, config: AlertsConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        channels: list[_Channel] = []
        if config.webhook is not None:
            channels.append(_Webhook(config.webhook, clock))
        if config.email is not None:
            channels.append(_Email(config.email, clock))
        if config.syslog is not None:
            channels.append(_Syslog(config.syslog))
        self._channels = {c.name: c for c in channels}
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # (channel, key) -> sent
        self._window: dict[str, deque[float]] = {name: deque() for name in self._channels}
        self._dropped: dict[str, int] = dict.fromkeys(self._channels, 0)
        self._dropping: set[str] = set()
        self._closed = False
        self.shared: SharedDedupe | None = None  # several nodes: repeats sent once in all
        self.elsewhere = 0  # alerts not sent because another node sent them

    @property
    def configured(self) -> list[str]:
        return list(self._channels)

    @property
    def dropped(self) -> dict[str, int]:
        """Alerts dropped by each channel's rate limit since start."""
        return dict(self._dropped)

    async def send(self, alert: Alert, key: str | None = None) -> dict[str, str]:
        """Deliver to every channel; returns each channel's outcome. Never raises."""
        if _RANK[alert.severity] < _RANK[self.config.min_severity]:
            return dict.fromkeys(self._channels, "below min_severity")
        key = key or f"{alert.tenant}/{alert.extension or ''}/{alert.rule}"
        now, rank = self._clock(), _RANK[alert.severity]
        mark = (now, rank)  # identity tells this send's mark from a concurrent one's
        self._prune(now)
        results: dict[str, str] = {}
        admitted: dict[str, tuple[float, int] | None] = {}
        for name in self._channels:
            prev = self._last.get((name, key))
            if prev is not None and now - prev[0] >= self.config.repeat_after:
                prev = None
            if prev is not None and rank <= prev[1]:
                results[name] = "suppressed (duplicate)"
                continue
            window = self._window[name]
            while window and window[0] <= now - 60:
                window.popleft()
            if len(window) >= self.config.max_per_minute:
                self._dropped[name] += 1
                results[name] = "suppressed (rate limit)"
                if name not in self._dropping:  # one line per burst, not one per alert
                    self._dropping.add(name)
                    log.warning(
                        "alerts dropped by the rate limit",
                        channel=name,
                        max_per_minute=self.config.max_per_minute,
                        dropped_total=self._dropped[name],
                        **self._context(alert),
                    )
                continue
            self._dropping.discard(name)
            window.append(now)
            admitted[name] = prev
            self._last[(name, key)] = mark
        shared = self.shared if admitted and self.config.repeat_after > 0 else None
        if shared is not None and not await shared.claim(
            key, alert.severity, self.config.repeat_after
        ):
            self.elsewhere += 1
            for name in admitted:  # sent by another node: a duplicate here too
                with contextlib.suppress(ValueError):
                    self._window[name].remove(now)
                results[name] = "suppressed (sent by another node)"
            return {name: results[name] for name in self._channels}
        outcomes = await asyncio.gather(*(self._deliver(name, alert) for name in admitted))
        if shared is not None and "sent" not in outcomes:
            await shared.unclaim(key, alert.severity)
        for (name, prev), outcome in zip(admitted.items(), outcomes, strict=True):
            results[name] = outcome
            if outcome != "sent" and self._last.get((name, key)) is mark:
                # Not delivered: the next occurrence may try again.
                if prev is None:
                    self._last.pop((name, key), None)
                else:
                    self._last[(name, key)] = prev
        return {name: results[name] for name in self._channels}

    async def _deliver(self, name: str, alert: Alert) -> str:
        channel = self._channels[name]
        try:
            if self._closed:
                raise _DeliveryError("the dispatcher is closed")
            async with asyncio.timeout(channel.deadline):
                await channel.send(alert)
        except _DeliveryError as exc:
            reason = _scrub(str(exc), channel.secrets)
        except TimeoutError:
            reason = f"no answer within {channel.deadline:g} s"
        except Exception as exc:  # a channel must never break the others
            reason = _scrub(f"unexpected {type(exc).__name__}: {exc}", channel.secrets)
        else:
            log.info("alert sent", channel=name, **self._context(alert))
            return "sent"
        log.warning("alert not delivered", channel=name, reason=reason, **self._context(alert))
        return f"failed: {reason}"

    @staticmethod
    def _context(alert: Alert) -> dict[str, Any]:
        return {
            "alert_id": alert.id,
            "tenant": alert.tenant,
            "extension": alert.extension,
            "rule": alert.rule,
            "severity": alert.severity,
        }

    def _prune(self, now: float) -> None:
        if len(self._last) > 4096:
            horizon = now - self.config.repeat_after
            self._last = {k: v for k, v in self._last.items() if v[0] > horizon}

    async def aclose(self) -> None:
        self._closed = True
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.aclose()
