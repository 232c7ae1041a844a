"""SIP digest authentication (RFC 3261 section 22, RFC 7616, RFC 8760), sans-I/O.

Hand-written because no maintained Python library does server-side SIP digest with
stateless nonces: HTTP libraries only implement the client side, and SIP stacks that
verify credentials keep a per-nonce table or come welded to their own transport.
Nothing here touches sockets or clocks (callers pass ``now``), so every path,
expiry and replay included, is deterministic under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final

from pbxwarden.sip.errors import ParseError

__all__ = [
    "INVALID_CREDENTIALS",
    "Algorithm",
    "AuthResult",
    "AuthStatus",
    "Challenge",
    "Credentials",
    "DigestError",
    "DigestServer",
    "NonceCountTracker",
    "NonceFactory",
    "NonceStatus",
    "build_authorization",
    "choose_challenge",
    "compute_ha1",
    "compute_response",
    "hash_hex",
    "parse_challenge",
    "parse_credentials",
]

# One reason for both "no such user" and "wrong password", so results cannot be told apart.
INVALID_CREDENTIALS = "invalid credentials"

# Headers beyond this are hostile or broken; the cap bounds parsing work per request.
_MAX_HEADER_LENGTH = 8192
_MAX_NC = 0xFFFFFFFF

_WS = frozenset(" \t\r\n")


class DigestError(ParseError):
    """A digest header is malformed or unusable; a server answers such requests with 400."""


class Algorithm(StrEnum):
    """Digest algorithms; a StrEnum (str and Enum) so f-strings render the wire token."""

    MD5 = "MD5"
    MD5_SESS = "MD5-sess"
    SHA256 = "SHA-256"
    SHA256_SESS = "SHA-256-sess"

    @property
    def is_session(self) -> bool:
        """``-sess`` variants bind HA1 to the nonce and cnonce (RFC 7616 section 3.4.2)."""
        return self.value.endswith("-sess")

    @property
    def base(self) -> Algorithm:
        """The stored HA1 depends only on the hash, so ``-sess`` shares its base's HA1."""
        return Algorithm.SHA256 if self.value.startswith("SHA-256") else Algorithm.MD5

    @property
    def hex_length(self) -> int:
        """Lets callers and the server reject an HA1 stored for the wrong algorithm."""
        return 64 if self.base is Algorithm.SHA256 else 32

    @classmethod
    def parse(cls, token: str) -> Algorithm:
        """Algorithm tokens are case-insensitive on the wire (RFC 7616 section 3.3)."""
        member = _ALGORITHMS.get(token.lower())
        if member is None:
            raise DigestError(f"unsupported algorithm {_shown(token)}")
        return member


_ALGORITHMS: Final = {member.value.lower(): member for member in Algorithm}


def _utf8(text: str) -> bytes:
    # surrogatepass: hashing must never raise on odd input that reached us somehow.
    return text.encode("utf-8", "surrogatepass")


def _hash_bytes(algorithm: Algorithm, data: bytes) -> str:
    name = "sha256" if algorithm.base is Algorithm.SHA256 else "md5"
    return hashlib.new(name, data).hexdigest()


def hash_hex(algorithm: Algorithm, data: str) -> str:
    """H() of RFC 7616: the lowercase hex digest of the UTF-8 encoding of ``data``."""
    return _hash_bytes(algorithm, _utf8(data))


def compute_ha1(username: str, realm: str, password: str, algorithm: Algorithm) -> str:
    """HA1 is what the PBX stores instead of the password; for ``-sess`` it is the base HA1."""
    return hash_hex(algorithm, f"{username}:{realm}:{password}")


def compute_response(
    *,
    ha1: str,
    algorithm: Algorithm,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str | None,
    cnonce: str | None,
    body: bytes = b"",
) -> str:
    """Shared by server and client so both sides can never disagree on the formula.

    ``qop=None`` is the RFC 2069 form that old SIP equipment still sends; ``nc`` and
    ``qop`` are hashed exactly as they appeared on the wire.
    """
    if algorithm.is_session:
        if cnonce is None:
            raise DigestError(f"{algorithm.value} requires a cnonce")
        ha1 = hash_hex(algorithm, f"{ha1}:{nonce}:{cnonce}")
    a2 = f"{method}:{uri}"
    if qop is not None and qop.lower() == "auth-int":
        a2 = f"{a2}:{_hash_bytes(algorithm, body)}"
    ha2 = hash_hex(algorithm, a2)
    if qop is None:
        return hash_hex(algorithm, f"{ha1}:{nonce}:{ha2}")
    return hash_hex(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --------------------------------------------------------------------------- parsing


def _shown(value: str) -> str:
    """Attacker text goes into error messages and logs, so cap it and escape controls."""
    return repr(value[:40] + ("..." if len(value) > 40 else ""))


_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_B64URL_RE = re.compile(r"[A-Za-z0-9_\-]+")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_AT_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
_BARE_AT_RE = re.compile(r"[\x21\x23-\x2b\x2d-\x5b\x5d-\x7e]*")
# Runs of quoted-string characters that need no attention (not '"', not '\\').
_QDRUN_RE = re.compile(r"[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\ud7ff\ue000-\U0010ffff]*")
_QDTEXT_RE = re.compile(r"[\t\x20-\x7e\x80-\ud7ff\ue000-\U0010ffff]*")


def _skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _WS:
        i += 1
    return i


def _scan(pattern: re.Pattern[str], s: str, i: int) -> int:
    m = pattern.match(s, i)
    assert m is not None
    return m.end()


def _is_qdtext(c: str) -> bool:
    o = ord(c)
    return o == 0x09 or (o >= 0x20 and o != 0x7F and not 0xD800 <= o <= 0xDFFF)


def _parse_quoted(s: str, i: int) -> tuple[str, int]:
    """Unescape the quoted-string opening at ``s[i]``; returns (value, index after it).

    Scans runs of ordinary characters with one regex step each: this sits on the
    per-REGISTER path, where a character-at-a-time loop showed up in profiles.
    """
    out: list[str] = []
    i += 1
    n = len(s)
    while i < n:
        j = _scan(_QDRUN_RE, s, i)
        if j > i:
            out.append(s[i:j])
            i = j
            if i >= n:
                break
        c = s[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            i += 1
            if i >= n:
                break
            c = s[i]
        if not _is_qdtext(c):
            raise DigestError(f"invalid character U+{ord(c):04X} in quoted string")
        out.append(c)
        i += 1
    raise DigestError("unterminated quoted string")


_FAST_SCHEME_RE = re.compile(r"[ \t]*[Dd][Ii][Gg][Ee][Ss][Tt][ \t]+")
_FAST_PARAM_RE = re.compile(
    r"[ \t]*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*=[ \t]*"
    r'(?:"([\t\x20\x21\x23-\x5b\x5d-\x7e]*)"|([\x21\x23-\x2b\x2d-\x5b\x5d-\x7e]+))'
    r"[ \t]*(?:,|\Z)"
)


def _fast_params(s: str) -> dict[str, str] | None:
    """The common case in one regex step per parameter: plain ASCII, no escapes.

    Returns None for anything else (escapes, UTF-8, odd whitespace, errors), which
    the exact parser then handles, so both paths agree on every input.
    """
    m = _FAST_SCHEME_RE.match(s)
    if m is None:
        return None
    pos, n = m.end(), len(s)
    params: dict[str, str] = {}
    while pos < n:
        m = _FAST_PARAM_RE.match(s, pos)
        if m is None:
            return None
        name = m.group(1).lower()
        if name in params:
            return None
        quoted = m.group(2)
        params[name] = quoted if quoted is not None else m.group(3)
        pos = m.end()
    return params or None


def _parse_params(header_value: str) -> dict[str, str]:
    """Split ``Digest a=b, c="d"`` into lowercase names and unquoted values.

    A single pass with explicit errors; regexes only scan runs of one character class,
    so there is no backtracking to bound.
    """
    if len(header_value) > _MAX_HEADER_LENGTH:
        raise DigestError("header value too long")
    fast = _fast_params(header_value)
    return fast if fast is not None else _parse_params_exact(header_value)


def _parse_params_exact(s: str) -> dict[str, str]:
    start = _skip_ws(s, 0)
    i = _scan(_TOKEN_AT_RE, s, start)
    scheme = s[start:i]
    if not scheme:
        raise DigestError("missing authentication scheme")
    if scheme.lower() != "digest":
        raise DigestError(f"unsupported authentication scheme {_shown(scheme)}")
    if i < len(s) and s[i] not in _WS:
        raise DigestError("expected whitespace after 'Digest'")
    params: dict[str, str] = {}
    n = len(s)
    while True:
        i = _skip_ws(s, i)
        if i >= n:
            break
        if s[i] == ",":  # empty list elements are allowed (RFC 9110 section 5.6.1)
            i += 1
            continue
        start = i
        i = _scan(_TOKEN_AT_RE, s, i)
        name = s[start:i].lower()
        if not name:
            raise DigestError(f"unexpected character {_shown(s[i])} at offset {i}")
        i = _skip_ws(s, i)
        if i >= n or s[i] != "=":
            raise DigestError(f"expected '=' after parameter {_shown(name)}")
        i = _skip_ws(s, i + 1)
        if i < n and s[i] == '"':
            value, i = _parse_quoted(s, i)
        else:
            start = i
            i = _scan(_BARE_AT_RE, s, i)
            value = s[start:i]
            if not value:
                raise DigestError(f"missing value for parameter {_shown(name)}")
        if name in params:
            raise DigestError(f"duplicate parameter {_shown(name)}")
        params[name] = value
        i = _skip_ws(s, i)
        if i < n:
            if s[i] != ",":
                raise DigestError(f"expected ',' after parameter {_shown(name)}")
            i += 1
    if not params:
        raise DigestError("no digest parameters")
    return params


def _require(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if value is None:
        raise DigestError(f"missing required parameter {name!r}")
    return value


def _parse_nc(value: str) -> int | None:
    if len(value) != 8 or not _HEX_RE.fullmatch(value):
        return None
    return int(value, 16)


class Credentials:
    """An Authorization / Proxy-Authorization value; ``nc`` and ``qop`` stay as sent
    because the response hash covers their exact text. Written out rather than a
    dataclass: compiled by mypyc, a dataclass keeps an interpreted __init__."""

    __slots__ = (
        "algorithm",
        "cnonce",
        "nc",
        "nonce",
        "opaque",
        "qop",
        "realm",
        "response",
        "uri",
        "username",
    )

    def __init__(
        self,
        username: str,
        realm: str,
        nonce: str,
        uri: str,
        response: str,
        algorithm: Algorithm = Algorithm.MD5,
        cnonce: str | None = None,
        nc: str | None = None,
        qop: str | None = None,
        opaque: str | None = None,
    ) -> None:
        self.username: Final = username
        self.realm: Final = realm
        self.nonce: Final = nonce
        self.uri: Final = uri
        self.response: Final = response
        self.algorithm: Final = algorithm
        self.cnonce: Final = cnonce
        self.nc: Final = nc
        self.qop: Final = qop
        self.opaque: Final = opaque

    def _fields(self) -> tuple[object, ...]:
        return (
            self.username,
            self.realm,
            self.nonce,
            self.uri,
            self.response,
            self.algorithm,
            self.cnonce,
            self.nc,
            self.qop,
            self.opaque,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credentials) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:  # never the response hash: it is password-equivalent
        return f"Credentials(username={self.username!r}, realm={self.realm!r})"


def parse_credentials(header_value: str) -> Credentials:
    """Parse untrusted credentials; any defect raises DigestError and nothing else."""
    params = _parse_params(header_value)
    if params.get("userhash", "false").lower() == "true":
        raise DigestError("userhash is not supported")
    username = _require(params, "username")
    realm = _require(params, "realm")
    nonce = _require(params, "nonce")
    uri = _require(params, "uri")
    response = _require(params, "response")
    if not response or len(response) > 128 or not _HEX_RE.fullmatch(response):
        raise DigestError("response must be a hexadecimal digest")
    algorithm = Algorithm.parse(params["algorithm"]) if "algorithm" in params else Algorithm.MD5
    nc = params.get("nc")
    if nc is not None and _parse_nc(nc) is None:
        raise DigestError("nc must be exactly 8 hexadecimal digits")
    qop = params.get("qop")
    if qop is not None and (not qop or not _TOKEN_RE.fullmatch(qop)):
        raise DigestError("qop must be a single token")
    return Credentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=response.lower(),
        algorithm=algorithm,
        cnonce=params.get("cnonce"),
        nc=nc,
        qop=qop,
        opaque=params.get("opaque"),
    )


# --------------------------------------------------------------------------- rendering


def _quote(value: str) -> str:
    """Quote for a header; refuses CR, LF and other controls so no value can inject headers."""
    if not _QDTEXT_RE.fullmatch(value):
        raise DigestError(f"value {_shown(value)} cannot be carried in a quoted string")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_KNOWN_QOPS = ("auth", "auth-int")


@dataclass(frozen=True)
class Challenge:
    """A WWW-Authenticate / Proxy-Authenticate value.

    ``qop`` is the offered list as comma-separated tokens (normally just "auth");
    ``None`` means an RFC 2069 server that offers no qop.
    """

    realm: str
    nonce: str
    algorithm: Algorithm
    qop: str | None = "auth"
    opaque: str | None = None
    stale: bool = False

    def to_header(self) -> str:
        """Render with ``stale=TRUE`` only when set, as RFC 3261 examples do."""
        parts = [
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
        ]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        parts.append(f"algorithm={self.algorithm.value}")
        if self.qop is not None:
            parts.append(f"qop={_quote(self.qop)}")
        if self.stale:
            parts.append("stale=TRUE")
        return "Digest " + ", ".join(parts)


def parse_challenge(header_value: str) -> Challenge:
    """Parse a challenge from a trunk; unknown algorithms raise so callers skip to the next."""
    params = _parse_params(header_value)
    realm = _require(params, "realm")
    nonce = _require(params, "nonce")
    algorithm = Algorithm.parse(params["algorithm"]) if "algorithm" in params else Algorithm.MD5
    qop: str | None = None
    if "qop" in params:
        offered = [opt.strip().lower() for opt in params["qop"].split(",")]
        known = [opt for opt in _KNOWN_QOPS if opt in offered]
        if not known:
            raise DigestError("challenge offers no supported qop")
        qop = ",".join(known)
    return Challenge(
        realm=realm,
        nonce=nonce,
        algorithm=algorithm,
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "false").lower() == "true",
    )


def choose_challenge(header_values: Iterable[str]) -> Challenge:
    """RFC 8760 section 2.4: use the first challenge whose algorithm we support."""
    for value in header_values:
        try:
            return parse_challenge(value)
        except DigestError:
            continue
    raise DigestError("no usable digest challenge")


def build_authorization(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int,
    body: bytes = b"",
) -> str:
    """Answer a challenge with qop=auth; ``body`` only matters if a peer offers only auth-int."""
    qop: str | None = None
    if challenge.qop is not None:
        offered = [opt.strip().lower() for opt in challenge.qop.split(",")]
        qop = next((opt for opt in _KNOWN_QOPS if opt in offered), None)
        if qop is None:
            raise DigestError("challenge offers no supported qop")
        if not 1 <= nc <= _MAX_NC:
            raise DigestError("nc must be between 1 and 0xFFFFFFFF")
        if not cnonce:
            raise DigestError("cnonce must not be empty")
    nc_text = f"{nc:08x}" if qop is not None else None
    response = compute_response(
        ha1=compute_ha1(username, challenge.realm, password, challenge.algorithm),
        algorithm=challenge.algorithm,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce if qop is not None else None,
        body=body,
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={challenge.algorithm.value}",
    ]
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc_text}", f"cnonce={_quote(cnonce)}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


# --------------------------------------------------------------------------- nonces


class NonceStatus(Enum):
    VALID = "valid"
    STALE = "stale"
    INVALID = "invalid"


# Domain separation, so the nonce secret stays safe if it is ever reused for other MACs.
_NONCE_LABEL = b"pbxwarden/sip/digest/nonce/v1\x00"
_TS_LEN = 8
_RANDOM_LEN = 8
_MAC_LEN = 16
_NONCE_RAW_LEN = _TS_LEN + _RANDOM_LEN + _MAC_LEN
_NONCE_TEXT_LEN = 43  # unpadded url-safe base64 of 32 bytes
_MAX_NOW = float(2**64 // 1000)


class NonceFactory:
    """Stateless nonces: the server keeps nothing per challenge, so a flood of
    unauthenticated requests cannot exhaust memory, and a cluster sharing the secret
    can verify each other's nonces. Timestamps are wall-clock milliseconds.
    """

    def __init__(
        self, secret: bytes, lifetime: float = 300.0, max_skew: float = 5.0, issuer: int = 0
    ) -> None:
        if len(secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes")
        if not lifetime > 0 or not max_skew >= 0:
            raise ValueError("lifetime must be positive and max_skew non-negative")
        if not 0 <= issuer <= 255:
            raise ValueError("issuer must fit in one byte")
        self._secret = bytes(secret)
        self.lifetime = lifetime
        self.max_skew = max_skew
        self.issuer = issuer

    def _mac(self, head: bytes, realm: str) -> bytes:
        msg = _NONCE_LABEL + head + _utf8(realm)
        return hmac.digest(self._secret, msg, "sha256")[:_MAC_LEN]  # one-shot: C fast path

    def issue(self, now: float, realm: str) -> str:
        if not 0.0 <= now < _MAX_NOW:
            raise ValueError("now is out of range for a nonce timestamp")
        head = (
            int(now * 1000).to_bytes(_TS_LEN, "big")
            + bytes((self.issuer,))
            + secrets.token_bytes(_RANDOM_LEN - 1)
        )
        raw = head + self._mac(head, realm)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def issued_at(self, nonce: str, realm: str) -> float | None:
        """Issue time (seconds) of an authentic nonce, else None; ignores expiry."""
        opened = self.open(nonce, realm)
        return None if opened is None else opened[0]

    def open(self, nonce: str, realm: str) -> tuple[float, int] | None:
        """Issue time (seconds) and issuer of an authentic nonce, else None.

        The issuer is whichever process signed it (0: the main one, 1..: registrar
        workers). Each keeps its own replay memory, so a nonce is only honoured by its
        issuer; the others ask for a fresh one (stale) instead of trusting a count they
        never saw.
        """
        if len(nonce) != _NONCE_TEXT_LEN or not _B64URL_RE.fullmatch(nonce):
            return None
        raw = base64.urlsafe_b64decode(nonce + "=")
        # Reject non-canonical spellings (stray low bits in the last character), so one
        # nonce has exactly one string form and replay tracking by string is sound.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != nonce:
            return None
        head, mac = raw[: _TS_LEN + _RANDOM_LEN], raw[_TS_LEN + _RANDOM_LEN :]
        if not hmac.compare_digest(mac, self._mac(head, realm)):
            return None
        return int.from_bytes(head[:_TS_LEN], "big") / 1000.0, head[_TS_LEN]

    def check(self, nonce: str, now: float, realm: str) -> NonceStatus:
        if not math.isfinite(now):
            raise ValueError("now must be finite")
        return self.status(self.issued_at(nonce, realm), now)

    def status(self, issued: float | None, now: float) -> NonceStatus:
        """The status of a nonce whose authenticated issue time (or None) is known."""
        if issued is None or issued - now > self.max_skew:
            return NonceStatus.INVALID
        if now - issued > self.lifetime:
            return NonceStatus.STALE
        return NonceStatus.VALID


class NonceCountTracker:
    """Highest nc per nonce, so a captured request cannot be replayed within the nonce
    lifetime (a replayed INVITE is a free toll call).

    Memory is bounded by evicting the least recently used nonce. Eviction must not
    reopen replay, so when ``issued_at`` is supplied the tracker keeps a horizon (the
    latest issue time it has evicted) and refuses unknown nonces issued at or before it.
    Not thread-safe: meant for one event loop.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._horizon = -math.inf

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._seen

    @property
    def horizon(self) -> float:
        return self._horizon

    def accept(
        self, nonce: str, nc: int, issued_at: float | None = None, stale_before: float = -math.inf
    ) -> bool:
        """``stale_before``: nonces issued before it are refused as stale before they
        get here, so their counts need not be kept (the least recently used ones go)."""
        if not 1 <= nc <= _MAX_NC:
            return False
        entry = self._seen.get(nonce)
        if entry is None:
            if issued_at is not None and issued_at <= self._horizon:
                return False
            self._seen[nonce] = (nc, -math.inf if issued_at is None else issued_at)
            while len(self._seen) > self._max_entries:
                _, (_, evicted_at) = self._seen.popitem(last=False)
                self._horizon = max(self._horizon, evicted_at)
            self._forget_stale(stale_before)
            return True
        last, at = entry
        if nc <= last:
            return False
        self._seen[nonce] = (nc, at)
        self._seen.move_to_end(nonce)
        return True

    def _forget_stale(self, stale_before: float) -> None:
        # A phone uses a nonce once or twice, soon after it was issued: the least
        # recently used entries are the oldest, and looking at them alone costs nothing
        # per nonce kept. One of unknown age (-inf) stops the sweep: it might be live.
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            at = seen[oldest][1]
            if at == -math.inf or at >= stale_before:
                return
            del seen[oldest]


# --------------------------------------------------------------------------- server


class AuthStatus(Enum):
    OK = "ok"
    STALE = "stale"
    FAILED = "failed"


class AuthResult:
    """``reason`` is for logs; it never distinguishes an unknown user from a bad password."""

    __slots__ = ("reason", "status")

    def __init__(self, status: AuthStatus, reason: str) -> None:
        self.status: Final = status
        self.reason: Final = reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AuthResult) and (self.status, self.reason) == (
            other.status,
            other.reason,
        )

    def __hash__(self) -> int:
        return hash((self.status, self.reason))

    def __repr__(self) -> str:
        return f"AuthResult({self.status!r}, {self.reason!r})"

    @property
    def ok(self) -> bool:
        return self.status is AuthStatus.OK


def _failed(reason: str) -> AuthResult:
    return AuthResult(AuthStatus.FAILED, reason)


def _strength(algorithm: Algorithm) -> int:
    return 0 if algorithm.base is Algorithm.SHA256 else 1


class DigestServer:
    """Challenges and verifies one realm.

    Challenges are ordered strongest first whatever order is configured: RFC 8760
    clients take the first algorithm they support, so listing MD5 first would
    silently downgrade every modern phone.
    """

    def __init__(
        self,
        secret: bytes,
        realm: str,
        algorithms: Sequence[Algorithm] = (Algorithm.SHA256, Algorithm.MD5),
        nonce_lifetime: float = 300.0,
        require_qop: bool = True,
        *,
        tracker: NonceCountTracker | None = None,
        issuer: int = 0,
        foreign_nonces_unless_register: bool = False,
    ) -> None:
        """``issuer``: who signs this server's nonces (0: the main process, 1..: registrar
        workers); each honours its own only. ``foreign_nonces_unless_register``: the main
        process also honours the workers' nonces for requests other than REGISTER,
        which only it receives (a phone reusing its registration nonce for an INVITE
        saves a round trip). That opens no replay: the method is inside the digest, so
        a REGISTER's credentials cannot pass as an INVITE's, and every INVITE, with its
        nonce counts, meets this one replay memory."""
        if not algorithms:
            raise ValueError("at least one algorithm is required")
        if len(set(algorithms)) != len(algorithms):
            raise ValueError("duplicate algorithms")
        self._realm_param = f"Digest realm={_quote(realm)}"  # fails at startup if unfit
        self._realm = realm
        self._algorithms = tuple(sorted(algorithms, key=_strength))
        self._require_qop = require_qop
        self._nonces = NonceFactory(secret, nonce_lifetime, issuer=issuer)
        self._foreign_unless_register = foreign_nonces_unless_register
        self._tracker = tracker if tracker is not None else NonceCountTracker()
        # Per-process random HA1s for unknown users: the same hashing as a real user,
        # and no value anyone could ever match.
        self._dummy_ha1 = {
            alg: secrets.token_hex(alg.hex_length // 2) for alg in (Algorithm.MD5, Algorithm.SHA256)
        }

    @property
    def realm(self) -> str:
        return self._realm

    @property
    def algorithms(self) -> tuple[Algorithm, ...]:
        return self._algorithms

    def make_challenges(self, now: float, stale: bool = False) -> list[Challenge]:
        return [
            Challenge(
                realm=self._realm,
                nonce=self._nonces.issue(now, self._realm),
                algorithm=alg,
                qop="auth",
                stale=stale,
            )
            for alg in self._algorithms
        ]

    def challenges(self, now: float, stale: bool = False) -> list[str]:
        """One header value per algorithm, each to go in its own header field.

        Rendered as :meth:`Challenge.to_header` would (a test holds them equal) from
        parts quoted once: half of all SIP a registrar answers is this challenge.
        """
        tail = ', qop="auth", stale=TRUE' if stale else ', qop="auth"'
        issue = self._nonces.issue
        realm = self._realm
        return [  # a nonce is base64url: nothing in it needs escaping
            f'{self._realm_param}, nonce="{issue(now, realm)}", algorithm={alg.value}{tail}'
            for alg in self._algorithms
        ]

    def verify(
        self, method: str, credentials: Credentials, ha1: str | None, now: float
    ) -> AuthResult:
        """Check credentials against the stored HA1 (``None`` for an unknown user).

        Checks that do not depend on the user run first and may return early; from the
        digest comparison on, unknown users and wrong passwords take the same path.
        Replay state is only touched after the digest matched, so nobody without the
        password can burn a legitimate client's nonce counts.
        """
        c = credentials
        if c.algorithm not in self._algorithms:
            return _failed("unsupported algorithm")
        if c.realm != self._realm:
            return _failed("realm mismatch")
        nc: int | None = None
        if c.qop is None:
            if self._require_qop or c.algorithm.is_session:
                return _failed("qop required")
        elif c.qop.lower() != "auth":
            return _failed("unsupported qop")
        else:
            if not c.cnonce or c.nc is None:
                return _failed("missing nc or cnonce")
            nc = _parse_nc(c.nc)
            if not nc:
                return _failed("invalid nonce count")
        if not math.isfinite(now):
            raise ValueError("now must be finite")
        opened = self._nonces.open(c.nonce, self._realm)
        issued = None if opened is None else opened[0]
        nonce_status = self._nonces.status(issued, now)

        if ha1 is not None:
            key = ha1.lower()
            if len(key) != c.algorithm.hex_length or not _HEX_RE.fullmatch(key):
                raise ValueError(f"stored HA1 is not a {c.algorithm.base.value} digest")
        else:
            key = self._dummy_ha1[c.algorithm.base]
        expected = compute_response(
            ha1=key,
            algorithm=c.algorithm,
            nonce=c.nonce,
            method=method,
            uri=c.uri,
            qop=c.qop,
            nc=c.nc,
            cnonce=c.cnonce,
        )
        matches = hmac.compare_digest(expected.encode("ascii"), _utf8(c.response.lower()))
        if not matches or ha1 is None:
            # an unauthentic nonce is refused whatever the digest says, with the same
            # answer as a wrong password (nothing tells a forged nonce from a guess)
            invalid = nonce_status is NonceStatus.INVALID
            return _failed("invalid nonce" if invalid else INVALID_CREDENTIALS)

        if nonce_status is NonceStatus.INVALID:
            # The digest is right but the nonce is not ours: another node's (each node
            # signs with its own secret) or one from before the secret changed. The
            # phone knows the password; a fresh nonce (stale=true) lets it go on without
            # asking its user, where a 403 would stop a real phone registering after
            # its front moved it to another node. Nothing is granted on such a nonce.
            return AuthResult(AuthStatus.STALE, "nonce not issued by this node")
        if nonce_status is NonceStatus.STALE:
            return AuthResult(AuthStatus.STALE, "nonce expired")
        foreign = opened is not None and opened[1] != self._nonces.issuer
        if foreign and (method == "REGISTER" or not self._foreign_unless_register):
            return AuthResult(AuthStatus.STALE, "nonce issued by another process")
        if nc is not None:
            forgotten = issued is not None and issued <= self._tracker.horizon
            if forgotten and c.nonce not in self._tracker:
                # Evicted from replay memory: a fresh nonce costs the client one round trip.
                return AuthResult(AuthStatus.STALE, "nonce no longer tracked")
            # refused as expired from then on (a minute's slack for a clock stepped back)
            stale_before = now - self._nonces.lifetime - 60.0
            if not self._tracker.accept(c.nonce, nc, issued, stale_before):
                return _failed("nonce replayed")
        return AuthResult(AuthStatus.OK, "ok")
