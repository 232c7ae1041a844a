"""SIP messages: parsing, validation and serialization (RFC 3261 sections 7, 20 and 25).

Sans-I/O: bytes in, objects out, objects to bytes. Hand-written because no
maintained Python SIP parser validates to RFC 4475's torture tests while staying
fast enough to sit on the per-packet path.

The headers every layer relies on (Via, From, To, Call-ID, CSeq, Max-Forwards,
Contact, Expires) are parsed and validated eagerly into typed fields, so a
malformed one is answered with 400 before any state is touched; all other headers
stay as text in :class:`Headers` and are only interpreted by whoever needs them.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from typing import Final

from pbxwarden.sip.errors import ParseError
from pbxwarden.sip.uri import (
    TOKEN_RE,
    URI,
    NameAddr,
    Params,
    parse_header_params,
    parse_name_addr,
    parse_quoted,
    parse_uri,
    split_hostport,
)

SIP_VERSION: Final = "SIP/2.0"
MAGIC_COOKIE: Final = "z9hG4bK"
MAX_MESSAGE_SIZE: Final = 65_535
MAX_HEADERS: Final = 128
MAX_HEADER_LINE: Final = 8_192
MAX_31BIT: Final = 2**31 - 1
MAX_32BIT: Final = 2**32 - 1

COMPACT_FORMS: Final = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}
_WELL_KNOWN = [
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Expires",
    "From",
    "In-Reply-To",
    "Max-Forwards",
    "Min-Expires",
    "MIME-Version",
    "Organization",
    "Priority",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "Record-Route",
    "Reply-To",
    "Require",
    "Retry-After",
    "Route",
    "Server",
    "Subject",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
    "Event",
    "Allow-Events",
    "Refer-To",
    "Referred-By",
    "Session-Expires",
    "Min-SE",
    "RSeq",
    "RAck",
    "Path",
    "Diversion",
    "History-Info",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Privacy",
    "Reason",
    "Replaces",
    "Identity",
]
_CANONICAL: dict[str, str] = {name.lower(): name for name in _WELL_KNOWN}
_CANONICAL.update({k: v for k, v in COMPACT_FORMS.items()})

REASON_PHRASES: Final = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    429: "Too Many Requests",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def canonical_name(name: str) -> str:
    """The conventional spelling of a header name; compact forms are expanded.

    Unknown names keep their first-seen spelling so that later lookups in any case
    match; the table is bounded because names come from the network.
    """
    lower = name.lower()
    known = _CANONICAL.get(lower)
    if known is not None:
        return known
    if len(_CANONICAL) < 4096:
        _CANONICAL[lower] = name
    return name


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts digits int() refuses, such as '²'."""
    return text.isascii() and text.isdigit()


def split_commas(value: str, what: str) -> list[str]:
    """Split a comma-separated header value, respecting quoted strings and ``<...>``."""
    if "," not in value:
        return [value.strip()]
    out: list[str] = []
    start = i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == '"':
            i = parse_quoted(value, i, what)
            continue
        if c == "<":
            end = value.find(">", i)
            if end < 0:
                raise ParseError(f"missing '>' in {what}")
            i = end + 1
            continue
        if c == ",":
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    out.append(value[start:].strip())
    return out


def generate_tag() -> str:
    return secrets.token_hex(8)


def generate_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(10)


def generate_call_id() -> str:
    return secrets.token_hex(16)


class Headers:
    """Ordered header fields other than the typed ones; names compared case-insensitively."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(k), v) for k, v in items]

    def get(self, name: str) -> str | None:
        key = canonical_name(name)
        for k, v in self._items:
            if k == key:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        key = canonical_name(name)
        return [v for k, v in self._items if k == key]

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        key = canonical_name(name)
        self._items = [(k, v) for k, v in self._items if k != key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new


# Value classes written out rather than dataclasses: compiled by mypyc (setup.py), a
# dataclass keeps an interpreted __init__, which is slow on a per-message path.


class Via:
    """One Via value. ``received``/``rport`` are filled in by the receiving transport (RFC 3581)."""

    __slots__ = ("host", "params", "port", "raw", "transport")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: Params | None = None,
        raw: str | None = None,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params: Params = {} if params is None else params
        # The value as received, reused when the Via is echoed unchanged in a response
        # (most Vias are): whoever changes ``params`` in place must reset it to None.
        self.raw = raw

    def __eq__(self, other: object) -> bool:  # ``raw`` is only a rendering cache
        return (
            isinstance(other, Via)
            and self.transport == other.transport
            and self.host == other.host
            and self.port == other.port
            and self.params == other.params
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Via({self.transport!r}, {self.host!r}, {self.port!r}, {self.params!r})"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    def __str__(self) -> str:
        if self.raw is not None:
            return self.raw
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # RFC 5118: sent-by is an IPv6 reference, bracketed
        if self.port is not None:
            host = f"{host}:{self.port}"
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items())
        return f"SIP/2.0/{self.transport} {host}{params}"


_VIA_PROTOCOL_RE = re.compile(
    r"\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+"
)


def parse_via(value: str) -> Via:
    m = _VIA_PROTOCOL_RE.match(value)
    if not m:
        raise ParseError("malformed Via sent-protocol")
    if m.group(1).upper() != "SIP" or m.group(2) != "2.0":
        raise ParseError("Via protocol is not SIP/2.0")
    rest = value[m.end() :]
    hostport, semi, param_text = rest.partition(";")
    host, port = split_hostport(hostport.strip().replace(" ", "").replace("\t", ""), "Via")
    params = parse_header_params(";" + param_text, "Via") if semi else {}
    branch = params.get("branch")
    if "branch" in params and (not branch or branch == MAGIC_COOKIE):
        raise ParseError("empty Via branch")
    rport = params.get("rport")
    if rport is not None and (not _digits(rport) or int(rport) > 65535):
        raise ParseError("bad Via rport")
    ttl = params.get("ttl")
    if ttl is not None and (not _digits(ttl) or int(ttl) > 255):
        raise ParseError("bad Via ttl")
    return Via(m.group(3).upper(), host, port, params, value)


class CSeq:
    __slots__ = ("method", "number")

    def __init__(self, number: int, method: str) -> None:
        self.number: Final = number
        self.method: Final = method

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CSeq)
            and self.number == other.number
            and (self.method == other.method)
        )

    def __hash__(self) -> int:
        return hash((self.number, self.method))

    def __repr__(self) -> str:
        return f"CSeq({self.number!r}, {self.method!r})"

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2 or not _digits(parts[0]) or not TOKEN_RE.fullmatch(parts[1]):
        raise ParseError("malformed CSeq")
    if len(parts[0]) > 10 or int(parts[0]) > MAX_31BIT:
        raise ParseError("CSeq number too large")
    return CSeq(int(parts[0]), parts[1])


def _parse_delta(value: str, what: str, limit: int = MAX_32BIT) -> int:
    value = value.strip()
    if not value.isdigit() or not value.isascii():
        raise ParseError(f"{what} is not a number")
    if len(value) > 10 or int(value) > limit:
        raise ParseError(f"{what} value too large")
    return int(value)


class Message:
    """Fields common to requests and responses."""

    __slots__ = (
        "body",
        "call_id",
        "contact_star",
        "contacts",
        "cseq",
        "expires",
        "from_",
        "headers",
        "max_forwards",
        "to",
        "via",
    )

    def __init__(
        self,
        via: list[Via],
        from_: NameAddr,
        to: NameAddr,
        call_id: str,
        cseq: CSeq,
        headers: Headers | None = None,
        body: bytes = b"",
        max_forwards: int | None = None,
        contacts: list[NameAddr] | None = None,
        contact_star: bool = False,
        expires: int | None = None,
    ) -> None:
        self.via = via
        self.from_ = from_
        self.to = to
        self.call_id = call_id
        self.cseq = cseq
        self.headers = Headers() if headers is None else headers
        self.body = body
        self.max_forwards = max_forwards
        self.contacts: list[NameAddr] = [] if contacts is None else contacts
        self.contact_star = contact_star
        self.expires = expires

    def _header_lines(self) -> list[str]:
        lines = [f"Via: {v}" for v in self.via]
        if self.max_forwards is not None:
            lines.append(f"Max-Forwards: {self.max_forwards}")
        lines += [
            f"From: {self.from_}",
            f"To: {self.to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq}",
        ]
        if self.contact_star:
            lines.append("Contact: *")
        lines += [f"Contact: {c}" for c in self.contacts]
        if self.expires is not None:
            lines.append(f"Expires: {self.expires}")
        lines += [f"{k}: {v}" for k, v in self.headers]
        lines.append(f"Content-Length: {len(self.body)}")
        return lines

    @property
    def transaction_branch(self) -> str | None:
        return self.via[0].branch if self.via else None


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(
        self,
        via: list[Via],
        from_: NameAddr,
        to: NameAddr,
        call_id: str,
        cseq: CSeq,
        headers: Headers | None = None,
        body: bytes = b"",
        max_forwards: int | None = None,
        contacts: list[NameAddr] | None = None,
        contact_star: bool = False,
        expires: int | None = None,
        method: str = "",
        uri: URI | None = None,
    ) -> None:
        super().__init__(
            via,
            from_,
            to,
            call_id,
            cseq,
            headers,
            body,
            max_forwards,
            contacts,
            contact_star,
            expires,
        )
        self.method = method
        self.uri = URI("sip") if uri is None else uri

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} cseq={self.cseq} call-id={self.call_id}>"

    def to_bytes(self) -> bytes:
        head = "\r\n".join([f"{self.method} {self.uri} {SIP_VERSION}", *self._header_lines()])
        return head.encode() + b"\r\n\r\n" + self.body


class Response(Message):
    __slots__ = ("reason", "status")

    def __init__(
        self,
        via: list[Via],
        from_: NameAddr,
        to: NameAddr,
        call_id: str,
        cseq: CSeq,
        headers: Headers | None = None,
        body: bytes = b"",
        max_forwards: int | None = None,
        contacts: list[NameAddr] | None = None,
        contact_star: bool = False,
        expires: int | None = None,
        status: int = 200,
        reason: str = "OK",
    ) -> None:
        super().__init__(
            via,
            from_,
            to,
            call_id,
            cseq,
            headers,
            body,
            max_forwards,
            contacts,
            contact_star,
            expires,
        )
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} cseq={self.cseq} call-id={self.call_id}>"

    def to_bytes(self) -> bytes:
        head = "\r\n".join([f"{SIP_VERSION} {self.status} {self.reason}", *self._header_lines()])
        return head.encode() + b"\r\n\r\n" + self.body


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """Build a response the way RFC 3261 8.2.6 says: copy Via, From, To, Call-ID, CSeq.

    Any response but 100 gets a To tag when the request had none (8.2.6.2).
    """
    to = request.to
    if to.tag is None and status > 100:
        to = to.with_tag(to_tag or generate_tag())
    extra = Headers(headers)
    if status == 100 and (ts := request.headers.get("Timestamp")) is not None:
        extra.add("Timestamp", ts)
    return Response(
        via=list(request.via),
        from_=request.from_,
        to=to,
        call_id=request.call_id,
        cseq=request.cseq,
        headers=extra,
        body=body,
        status=status,
        reason=reason if reason is not None else REASON_PHRASES.get(status, "Unknown"),
    )


_TYPED = frozenset(
    ("Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards", "Contact", "Expires", "Content-Length")
)


# Header names exactly as received (before the colon) -> canonical name, once validated.
_SEEN_NAMES: dict[str, str] = {}


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if lf >= 0 and (crlf < 0 or lf < crlf):  # a bare-LF message: its body may hold CRLFs
        return data[:lf], data[lf + 2 :]
    if crlf >= 0:
        return data[:crlf], data[crlf + 4 :]
    # A message with no body and no blank line (some UDP senders): all head.
    return data.rstrip(b"\r\n"), b""


def parse_message(data: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> Request | Response:
    """Parse one complete message (a UDP datagram, or one framed by :class:`StreamFramer`).

    Raises :class:`ParseError` naming the problem; ``status`` says how to answer.
    """
    if len(data) > max_size:
        raise ParseError("message too large", 513)
    data = data.lstrip(b"\r\n")  # RFC 3261 7.5: ignore CRLFs before the start line
    head_bytes, body = _split_head(data)
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("message header is not valid UTF-8") from None
    lines = head.split("\r\n") if "\r\n" in head else head.split("\n")
    start = lines[0]
    raw: list[tuple[str, str]] = []
    for line in lines[1:]:
        if len(line) > MAX_HEADER_LINE:
            raise ParseError("header line too long")
        if line[:1] in (" ", "\t"):
            if not raw:
                raise ParseError("continuation line before first header")
            name, value = raw[-1]
            value = f"{value} {line.strip()}".strip()
            if len(name) + 2 + len(value) > MAX_HEADER_LINE:  # as it will be written out
                raise ParseError("header line too long")
            raw[-1] = (name, value)
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError(f"malformed header line {line[:40]!r}")
        canonical = _SEEN_NAMES.get(name)
        if canonical is None:  # a spelling not met before: validate it once
            stripped = name.rstrip(" \t")
            if not _HEADER_NAME_RE.fullmatch(stripped):
                raise ParseError(f"malformed header line {line[:40]!r}")
            canonical = canonical_name(stripped)
            if len(_SEEN_NAMES) < 4096:  # bounded: names come from the network
                _SEEN_NAMES[name] = canonical
        raw.append((canonical, value.strip()))
    if len(raw) > MAX_HEADERS:
        raise ParseError("too many header fields")
    return _build(start, raw, body)


def _build(start: str, raw: list[tuple[str, str]], body: bytes) -> Request | Response:
    # The start line first, so that a wrong version is answered 505 whatever follows.
    is_response = start.startswith("SIP/")
    first = _parse_status_line(start) if is_response else _parse_request_line(start)
    via: list[Via] = []
    from_ = to = None
    call_id = None
    cseq = None
    max_forwards = expires = content_length = None
    contacts: list[NameAddr] = []
    contact_star = False
    headers = Headers()
    items = headers._items
    for key, value in raw:
        if key not in _TYPED:
            if key == "Retry-After":
                _parse_delta(value.partition("(")[0].partition(";")[0], "Retry-After")
            elif key == "Date" and not value.endswith(" GMT"):
                raise ParseError("Date must be in GMT (RFC 3261 20.17)")
            items.append((key, value))
        elif key == "Via":
            for part in split_commas(value, "Via"):
                if not part:
                    raise ParseError("empty Via value")
                via.append(parse_via(part))
        elif key == "From" or key == "To":
            parts = split_commas(value, key)
            if len(parts) != 1:
                raise ParseError(f"more than one value in {key}")
            if (from_ if key == "From" else to) is not None:
                raise ParseError(f"more than one {key} header")
            parsed = parse_name_addr(parts[0], key)
            if key == "From":
                from_ = parsed
            else:
                to = parsed
        elif key == "Call-ID":
            if call_id is not None:
                raise ParseError("more than one Call-ID header")
            if not value or any(c in value for c in " \t,"):
                raise ParseError("malformed Call-ID")
            call_id = value
        elif key == "CSeq":
            if cseq is not None:
                raise ParseError("more than one CSeq header")
            cseq = parse_cseq(value)
        elif key == "Max-Forwards":
            if max_forwards is not None:
                raise ParseError("more than one Max-Forwards header")
            max_forwards = _parse_delta(value, "Max-Forwards", 255)
        elif key == "Expires":
            if expires is not None:
                raise ParseError("more than one Expires header")
            expires = _parse_delta(value, "Expires")
        elif key == "Content-Length":
            if content_length is not None:
                raise ParseError("more than one Content-Length header")
            content_length = _parse_delta(value, "Content-Length", MAX_MESSAGE_SIZE)
        else:  # Contact
            if value == "*":
                contact_star = True
                continue
            for part in split_commas(value, "Contact"):
                if not part:
                    raise ParseError("empty Contact value")
                contact = parse_name_addr(part, "Contact")
                if (exp := contact.params.get("expires")) is not None:
                    _parse_delta(exp, "Contact expires")
                contacts.append(contact)
    if content_length is not None:
        if content_length > len(body):
            raise ParseError("Content-Length larger than the message body")
        body = body[:content_length]
    if contact_star and contacts:
        raise ParseError("Contact '*' mixed with other contacts")
    if len(via) + len(contacts) + len(headers) > MAX_HEADERS:  # each is written as a line
        raise ParseError("too many header fields")
    missing = [
        n
        for n, v in (
            ("Via", via),
            ("From", from_),
            ("To", to),
            ("Call-ID", call_id),
            ("CSeq", cseq),
        )
        if not v
    ]
    if missing:
        raise ParseError(f"missing required header: {', '.join(missing)}")
    assert from_ is not None and to is not None and call_id is not None and cseq is not None
    if is_response:
        status, reason = first
        assert isinstance(status, int) and isinstance(reason, str)
        return Response(
            via,
            from_,
            to,
            call_id,
            cseq,
            headers,
            body,
            max_forwards,
            contacts,
            contact_star,
            expires,
            status,
            reason,
        )
    method, uri = first
    assert isinstance(method, str) and isinstance(uri, URI)
    if cseq.method != method:
        raise ParseError("CSeq method does not match the Request-Line")
    return Request(
        via,
        from_,
        to,
        call_id,
        cseq,
        headers,
        body,
        max_forwards,
        contacts,
        contact_star,
        expires,
        method,
        uri,
    )


def _parse_request_line(start: str) -> tuple[str, URI]:
    parts = start.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ParseError("malformed Request-Line")
    method, uri_text, version = parts
    if not TOKEN_RE.fullmatch(method):
        raise ParseError("malformed method in Request-Line")
    if version.upper() != SIP_VERSION:
        if version.upper().startswith("SIP/"):
            raise ParseError(f"unsupported SIP version {version}", 505)
        raise ParseError("malformed Request-Line")
    uri = parse_uri(uri_text, "Request-URI")
    if uri.is_sip and uri.headers is not None:
        raise ParseError("headers are not allowed in the Request-URI")
    return method, uri


def _parse_status_line(start: str) -> tuple[int, str]:
    version, _, rest = start.partition(" ")
    code, _, reason = rest.partition(" ")
    if version.upper() != SIP_VERSION:
        raise ParseError(f"unsupported SIP version {version}", 505)
    if len(code) != 3 or not _digits(code) or not 100 <= int(code) <= 699:
        raise ParseError("malformed status code")
    return int(code), reason


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages using Content-Length (RFC 3261 18.3).

    ``feed`` returns complete messages' bytes; a keep-alive (double CRLF, RFC 5626)
    is reported as ``b""`` so the transport can answer it with a single CRLF.
    A stream that breaks framing raises :class:`ParseError`: the connection must close.
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_size

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        while buf:
            if buf[:4] == b"\r\n\r\n":
                del buf[:4]
                out.append(b"")
                continue
            if buf[:2] == b"\r\n":
                if len(buf) < 4:
                    break
                del buf[:2]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self._max:
                    raise ParseError("message header too large", 513)
                break
            length = _content_length(bytes(buf[:end]))
            total = end + 4 + length
            if total > self._max:
                raise ParseError("message too large", 513)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out


_CL_RE = re.compile(
    rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE
)


def _content_length(head: bytes) -> int:
    m = _CL_RE.search(head)
    if m is None:
        raise ParseError("Content-Length is required on stream transports")
    if len(m.group(1)) > 10:
        raise ParseError("Content-Length value too large", 513)
    return int(m.group(1))


_ECHO_HEADERS = {
    "via": "Via",
    "v": "Via",
    "from": "From",
    "f": "From",
    "to": "To",
    "t": "To",
    "call-id": "Call-ID",
    "i": "Call-ID",
    "cseq": "CSeq",
}
_UNSAFE_REASON_RE = re.compile(r"[^\x20-\x7e]")


def safe_reason(text: str, limit: int = 120) -> str:
    """Make text usable as a reason phrase: printable ASCII only, bounded length."""
    return _UNSAFE_REASON_RE.sub("?", text)[:limit]


def error_response_bytes(data: bytes, status: int, reason: str) -> bytes | None:
    """A best-effort error response to a request that failed to parse (RFC 3261 8.2).

    Echoes the raw Via, From, To, Call-ID and CSeq lines so that the sender can match
    it to its transaction. Returns None when no answer is possible or wanted: the
    message is a response, an ACK, or has no Via to route the answer by.
    """
    head = _split_head(data.lstrip(b"\r\n"))[0].decode("utf-8", "replace")
    lines = head.split("\n")
    start = lines[0].strip()
    if start.startswith("SIP/") or start.startswith("ACK ") or not start:
        return None
    echoed: list[str] = []
    for line in lines[1:]:
        line = line.rstrip("\r")
        if line[:1] in (" ", "\t") and echoed:
            echoed[-1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        canon = _ECHO_HEADERS.get(name.strip().lower())
        if colon and canon:
            echoed.append(f"{canon}: {value.strip()}")
    if not any(h.startswith("Via:") for h in echoed):
        return None
    text = "\r\n".join(
        [f"{SIP_VERSION} {status} {safe_reason(reason)}", *echoed, "Content-Length: 0"]
    )
    return text.encode("utf-8", "replace") + b"\r\n\r\n"
