"""Coverage-guided fuzzing (atheris/libFuzzer) of everything that reads SIP off the wire.

Each input is used as:

* one datagram: ``parse_message`` must return a message or raise ``ParseError``; what it
  accepts must serialize (``to_bytes``) and parse again to the same essentials; and
  ``error_response_bytes`` must never raise and, when it answers, answer with one
  well-formed header section;
* a TCP byte stream, cut into chunks whose sizes come from the input itself:
  ``StreamFramer.feed`` may only raise ``ParseError``, and every message it frames
  goes through the datagram checks above;
* digest header values (every ``Authorization``/``WWW-Authenticate``-like line, and the
  whole input as text): ``parse_credentials``/``parse_challenge`` may only raise
  ``DigestError``.

Anything else (another exception, a failed assertion) is a crash that libFuzzer saves
as ``crash-<sha1>`` for replay: ``python tests/fuzz/fuzz_parser.py crash-<sha1>``.

Run (see docs/fuzzing.md; the first directory receives new inputs, keep it out of git)::

    python tests/fuzz/fuzz_parser.py /tmp/sip-corpus tests/fuzz/corpus tests/sip/torture \\
        -max_total_time=120 -rss_limit_mb=2048
"""

from __future__ import annotations

import contextlib
import sys

import atheris

# str.startswith/endswith comparisons guide the fuzzer too. Not the "RegEx" hook: its
# pattern proxy does not accept match(text, pos), which the digest parser uses.
atheris.enabled_hooks.add("str")

with atheris.instrument_imports(include=["pbxwarden"]):
    from pbxwarden.sip.digest import DigestError, parse_challenge, parse_credentials
    from pbxwarden.sip.errors import ParseError
    from pbxwarden.sip.message import (
        Request,
        Response,
        StreamFramer,
        error_response_bytes,
        parse_message,
    )

_DIGEST_HEADERS = (
    b"authorization",
    b"proxy-authorization",
    b"www-authenticate",
    b"proxy-authenticate",
)


def _essentials(msg: Request | Response) -> tuple[object, ...]:
    first: object = msg.method if isinstance(msg, Request) else msg.status
    return (
        type(msg).__name__,
        first,
        msg.call_id,
        msg.cseq.number,
        msg.cseq.method,
        tuple(v.branch for v in msg.via),
        msg.body,
        msg.from_.tag,
        msg.to.tag,
    )


def _check_reply(data: bytes, status: int, reason: str) -> None:
    reply = error_response_bytes(data, status, reason)
    if reply is None:
        return
    if not reply.startswith(f"SIP/2.0 {status} ".encode()):
        raise AssertionError(f"bad status line in {reply[:80]!r}")
    if reply.find(b"\r\n\r\n") != len(reply) - 4:
        raise AssertionError(f"not one header section: {reply!r}")


def check_datagram(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except ParseError as exc:
        _check_reply(data, exc.status, f"Bad Request ({exc.reason})")
        return
    wire = msg.to_bytes()
    again = parse_message(wire)  # a ParseError here is a crash: we wrote what we refuse
    if _essentials(again) != _essentials(msg):
        raise AssertionError(f"round trip changed the message:\n{data!r}\n{wire!r}")
    _check_reply(data, 500, "Server Internal Error")


def check_stream(data: bytes) -> None:
    framer = StreamFramer()
    step = 1 + (data[0] % 61 if data else 0)
    messages: list[bytes] = []
    with contextlib.suppress(ParseError):  # framing lost: the transport closes the connection
        for i in range(0, len(data), step):
            messages += framer.feed(data[i : i + step])
    for message in messages:
        if message:
            check_datagram(message)


def check_digest(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    values = [text[:9000]]
    for line in data.split(b"\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in _DIGEST_HEADERS:
            values.append(value.strip().decode("utf-8", "replace"))
    for value in values:
        for parse in (parse_credentials, parse_challenge):
            with contextlib.suppress(DigestError):
                parse(value)


def TestOneInput(data: bytes) -> None:  # the name atheris looks for
    check_datagram(data)
    check_stream(data)
    check_digest(data)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
