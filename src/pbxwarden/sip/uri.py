"""SIP, SIPS and tel URIs and the name-addr form (RFC 3261 sections 19.1 and 25, RFC 3966).

Hand-written because no maintained Python library parses SIP URIs to the letter of
RFC 3261 (escaped user parts, URI parameters versus header parameters, IPv6
references) while staying fast enough for a per-packet path.
"""

from __future__ import annotations

import re

from pbxwarden.sip.errors import ParseError

# RFC 3261 25.1 character classes, written as regex classes.
_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN_RE = re.compile(rf"[{_TOKEN_CHARS}]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# user = 1*( unreserved / escaped / user-unreserved ), user-unreserved = & = + $ , ; ? /
_USER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
_PASSWORD_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*")
# hostname = *( domainlabel "." ) toplabel [ "." ], toplabel starting with a letter;
# the optional final dot is stripped before matching. Possessive quantifiers: no
# backtracking, whatever a scanner sends.
_HOSTNAME_RE = re.compile(r"(?:[A-Za-z0-9\-]++\.)*+[A-Za-z][A-Za-z0-9\-]*+")
_OCTET = r"(?:25[0-5]|2[0-4]\d|[01]?\d?\d)"
_IPV4_RE = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_IPV6_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]")
# paramchar = param-unreserved / unreserved / escaped; param-unreserved = [ ] / : & + $
_PARAM_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+")
_HEADER_PART_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|%[0-9A-Fa-f]{2})*")
# Generic absoluteURI (RFC 2396) for schemes we do not interpret.
_ABSOLUTE_REST_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%;/?:@&=+$,\[\]#]+")
_TEL_NUMBER_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+")

Params = dict[str, str | None]


def _parse_params(text: str, what: str, pattern: re.Pattern[str] = _PARAM_RE) -> Params:
    """Parse ``;a=b;c`` (text without the leading ``;``) into an ordered dict."""
    params: Params = {}
    for item in text.split(";"):
        if not item:
            raise ParseError(f"empty parameter in {what}")
        name, eq, value = item.partition("=")
        if not pattern.fullmatch(name):
            raise ParseError(f"bad parameter name {name!r} in {what}")
        if eq:
            if not pattern.fullmatch(value):
                raise ParseError(f"bad value for parameter {name!r} in {what}")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def _render_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _valid_host(host: str) -> bool:
    if _IPV4_RE.fullmatch(host) or _IPV6_RE.fullmatch(host):
        return True
    if host.endswith("."):
        host = host[:-1]
    if not host or not _HOSTNAME_RE.fullmatch(host):
        return False
    # Labels neither start nor end with '-', and none is empty.
    return not (
        host[0] == "-"
        or "-." in host
        or ".-" in host
        or ".." in host
        or host.rstrip(".").endswith("-")
    )


def split_hostport(text: str, what: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 in brackets) and validate both parts."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError(f"unterminated IPv6 reference in {what}")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ParseError(f"bad host in {what}")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
    if not host or not _valid_host(host):
        raise ParseError(f"bad host {host!r} in {what}")
    port: int | None = None
    if port_text is not None:
        if (
            not (port_text.isascii() and port_text.isdigit())
            or len(port_text) > 5
            or (int(port_text) > 65535)
        ):
            raise ParseError(f"bad port in {what}")
        port = int(port_text)
    return host.lower(), port


# URI and NameAddr are written out rather than dataclasses: compiled by mypyc
# (setup.py), a dataclass keeps an interpreted __init__, slow on a per-message path.


class URI:
    """A parsed URI. ``sip``/``sips`` fully; ``tel`` as number plus params; others opaque."""

    __slots__ = ("headers", "host", "opaque", "params", "password", "port", "scheme", "user")

    def __init__(
        self,
        scheme: str,
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: Params | None = None,
        headers: str | None = None,
        opaque: str | None = None,  # the text after ``scheme:`` for schemes we do not interpret
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params: Params = {} if params is None else params
        self.headers = headers
        self.opaque = opaque

    def _fields(self) -> tuple[object, ...]:
        return (
            self.scheme,
            self.user,
            self.password,
            self.host,
            self.port,
            self.params,
            self.headers,
            self.opaque,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, URI) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"URI({str(self)!r})"

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    def with_params(self, **params: str | None) -> URI:
        merged = dict(self.params)
        merged.update(params)
        return _copy(self, merged)

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user}{_render_params(self.params)}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        host = self.host
        # RFC 3261 25.1 / RFC 5118: an IPv6 reference is bracketed (hosts parsed from the
        # wire keep theirs; ones from socket addresses, like "::1", get them here)
        out.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
        if self.port is not None:
            out += [":", str(self.port)]
        out.append(_render_params(self.params))
        if self.headers is not None:
            out += ["?", self.headers]
        return "".join(out)

    def aor(self) -> str:
        """The address-of-record key: scheme, user and host, nothing else (RFC 3261 10.3)."""
        return (
            f"{self.scheme}:{self.user}@{self.host}" if self.user else f"{self.scheme}:{self.host}"
        )


_CACHE: dict[str, URI] = {}
_CACHE_MAX = 4096


def _copy(uri: URI, params: Params | None = None) -> URI:
    """A copy that shares nothing mutable: ``params`` (or a copy of the URI's)."""
    return URI(
        uri.scheme,
        uri.user,
        uri.password,
        uri.host,
        uri.port,
        dict(uri.params) if params is None else params,
        uri.headers,
        uri.opaque,
    )


def parse_uri(text: str, what: str = "URI") -> URI:
    """Parse any URI; SIP/SIPS/tel strictly, other schemes as RFC 2396 absolute URIs.

    The same few URIs recur in every message (the PBX's own address, each phone's
    AOR and contact), so valid parses are remembered by their exact text in a bounded
    table and handed out as copies; invalid text is parsed (and refused) every time.
    """
    cached = _CACHE.get(text)
    if cached is not None:
        return _copy(cached)
    uri = _parse_uri(text, what)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[text] = _copy(uri)
    return uri


def _parse_uri(text: str, what: str) -> URI:
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.fullmatch(scheme) or not rest:
        raise ParseError(f"malformed {what} {text!r}")
    scheme = scheme.lower()
    if scheme in ("sip", "sips"):
        return _parse_sip_uri(scheme, rest, what)
    if scheme == "tel":
        number, _, param_text = rest.partition(";")
        if not _TEL_NUMBER_RE.fullmatch(number):
            raise ParseError(f"bad telephone number in {what}")
        return URI("tel", user=number, params=_parse_params(param_text, what) if param_text else {})
    if not _ABSOLUTE_REST_RE.fullmatch(rest):
        raise ParseError(f"malformed {what} {text!r}")
    return URI(scheme, opaque=rest)


def _parse_sip_uri(scheme: str, rest: str, what: str) -> URI:
    # '@' may only appear (unescaped) as the userinfo delimiter, while '?' and ';' are
    # legal inside the user part: so split off the userinfo first, at the last '@'.
    user = password = None
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, pcolon, pw = userinfo.partition(":")
        if not _USER_RE.fullmatch(user):
            raise ParseError(f"bad user part in {what}")
        if pcolon:
            if not _PASSWORD_RE.fullmatch(pw):
                raise ParseError(f"bad password part in {what}")
            password = pw
    body, qmark, headers = rest.partition("?")
    if qmark and (
        not headers
        or not all(
            _HEADER_PART_RE.fullmatch(part)
            for pair in headers.split("&")
            for part in pair.split("=", 1)
        )
    ):
        raise ParseError(f"bad headers in {what}")
    hostport, semi, param_text = body.partition(";")
    host, port = split_hostport(hostport, what)
    params = _parse_params(param_text, what) if semi else {}
    return URI(scheme, user, password, host, port, params, headers if qmark else None)


class NameAddr:
    """``"Display" <uri>;params`` or ``uri;params``: the value of From, To, Contact, Route."""

    __slots__ = ("display_name", "params", "raw", "uri")

    def __init__(
        self,
        uri: URI,
        display_name: str | None = None,
        params: Params | None = None,
        raw: str | None = None,
    ) -> None:
        self.uri = uri
        self.display_name = display_name
        self.params: Params = {} if params is None else params
        # The text as received, reused when echoed unchanged (From and To in every
        # response): whoever changes the fields in place must reset it to None.
        self.raw = raw

    def __eq__(self, other: object) -> bool:  # ``raw`` is only a rendering cache
        return (
            isinstance(other, NameAddr)
            and self.uri == other.uri
            and self.display_name == other.display_name
            and self.params == other.params
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> NameAddr:
        params = dict(self.params)
        params["tag"] = tag
        return NameAddr(self.uri, self.display_name, params)

    def __str__(self) -> str:
        if self.raw is not None:
            return self.raw
        name = f"{self.display_name} " if self.display_name else ""
        return f"{name}<{self.uri}>{_render_params(self.params)}"


_DISPLAY_TOKENS_RE = re.compile(rf"[{_TOKEN_CHARS}]+(?:[ \t]+[{_TOKEN_CHARS}]+)*")
# token, [IPv6], an IPv6 address without brackets (RFC 3261's received=), quoted-string
_GENERIC_VALUE_RE = re.compile(
    rf"[{_TOKEN_CHARS}]+|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f.]*+:[0-9A-Fa-f:.]++|\"(?:[^\"\\]|\\.)*\""
)


def parse_quoted(text: str, start: int, what: str) -> int:
    """Return the index just past the quoted string starting at ``text[start] == '"'``."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise ParseError(f"unterminated quoted string in {what}")


def parse_header_params(text: str, what: str) -> Params:
    """Parse generic header parameters ``;name[=token|host|quoted-string]`` (RFC 3261 25.1)."""
    params: Params = {}
    text = text.strip()
    if not text:
        return params
    if text[0] != ";":
        raise ParseError(f"unexpected text {text[:20]!r} in {what}")
    i, n = 1, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        j = i
        while j < n and text[j] not in "=; \t":
            j += 1
        name = text[i:j]
        if not TOKEN_RE.fullmatch(name):
            raise ParseError(f"bad parameter {name!r} in {what}")
        while j < n and text[j] in " \t":
            j += 1
        value: str | None = None
        if j < n and text[j] == "=":
            j += 1
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == '"':
                k = parse_quoted(text, j, what)
            else:
                k = j
                while k < n and text[k] not in "; \t":
                    k += 1
            value = text[j:k]
            if not _GENERIC_VALUE_RE.fullmatch(value):
                raise ParseError(f"bad value for parameter {name!r} in {what}")
            j = k
            while j < n and text[j] in " \t":
                j += 1
        params[name.lower()] = value
        if j >= n:
            return params
        if text[j] != ";":
            raise ParseError(f"unexpected text {text[j : j + 20]!r} in {what}")
        i = j + 1


def _find_outside_quotes(text: str, char: str, what: str) -> int:
    """Index of ``char`` not inside a quoted string, or -1."""
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i = parse_quoted(text, i, what)
            continue
        if c == char:
            return i
        i += 1
    return -1


def parse_name_addr(text: str, what: str) -> NameAddr:
    """Parse name-addr or addr-spec with header params; rejects the RFC 4475 traps.

    In the addr-spec form (no angle brackets) everything after the first ``;`` is a
    header parameter, and ``?`` or ``,`` are not allowed (RFC 3261 20.10).
    """
    text = original = text.strip()
    display: str | None = None
    if not text:
        raise ParseError(f"empty {what}")
    if text[0] == '"':
        end = parse_quoted(text, 0, what)
        display = text[:end]
        rest = text[end:].lstrip(" \t")
        if not rest.startswith("<"):
            raise ParseError(f"display name without <URI> in {what}")
        text = rest
    lt = _find_outside_quotes(text, "<", what)
    if lt >= 0:
        if display is None and lt > 0:
            name = text[:lt].strip()
            if name and not _DISPLAY_TOKENS_RE.fullmatch(name):
                raise ParseError(f"display name must be tokens or quoted in {what}")
            display = name or None
        gt = text.find(">", lt)
        if gt < 0:
            raise ParseError(f"missing '>' in {what}")
        uri = parse_uri(text[lt + 1 : gt], what)
        return NameAddr(uri, display, parse_header_params(text[gt + 1 :], what), original)
    spec, semi, param_text = text.partition(";")
    if "?" in spec or "," in spec or " " in spec.strip() or "\t" in spec.strip():
        raise ParseError(f"URI with '?', ',' or spaces must be enclosed in <> in {what}")
    params = parse_header_params(semi + param_text, what) if semi else {}
    return NameAddr(parse_uri(spec.strip(), what), None, params, original)
