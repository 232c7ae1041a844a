"""One SDP session per dialog: the origin a phone first saw stays, versions count changes."""

from __future__ import annotations

from pbxwarden.pbx.sdp_origin import SdpOrigins


def sdp(origin: str, port: int = 4000, direction: str = "sendrecv") -> bytes:
    return (
        f"v=0\r\no={origin}\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na={direction}\r\n"
    ).encode()


def origin_of(body: bytes) -> str:
    line = next(x for x in body.decode().split("\r\n") if x.startswith("o="))
    return line[2:]


KEY = ("call-1", "pbx-tag")


def test_the_first_description_passes_unchanged() -> None:
    origins = SdpOrigins()
    body = sdp("alice 111 5 IN IP4 10.0.0.1")
    assert origins.rewrite(KEY, body) == body


def test_a_new_party_behind_the_dialog_keeps_the_session_and_counts_one_up() -> None:
    """A transfer: the transferee got A's session; the target's offer comes with the
    target's own origin, and must look like A's session, version one higher."""
    origins = SdpOrigins()
    origins.rewrite(KEY, sdp("alice 111 5 IN IP4 10.0.0.1"))
    target = origins.rewrite(KEY, sdp("carol 999 1 IN IP4 10.0.0.3", port=6000))
    assert origin_of(target) == "alice 111 6 IN IP4 10.0.0.1"
    assert b"m=audio 6000" in target  # the rest is the target's description
    again = origins.rewrite(KEY, sdp("carol 999 1 IN IP4 10.0.0.3", port=6000))
    assert origin_of(again) == "alice 111 6 IN IP4 10.0.0.1", "unchanged: the same version"
    hold = origins.rewrite(KEY, sdp("carol 999 2 IN IP4 10.0.0.3", 6000, "sendonly"))
    assert origin_of(hold) == "alice 111 7 IN IP4 10.0.0.1"


def test_a_retransmission_is_rewritten_to_the_same_bytes() -> None:
    origins = SdpOrigins()
    origins.rewrite(KEY, sdp("alice 111 5 IN IP4 10.0.0.1"))
    once = origins.rewrite(KEY, sdp("carol 999 1 IN IP4 10.0.0.3", port=6000))
    assert origins.rewrite(KEY, once) == once


def test_dialogs_are_apart_and_forgotten() -> None:
    origins = SdpOrigins()
    origins.rewrite(KEY, sdp("alice 111 5 IN IP4 10.0.0.1"))
    other = sdp("bob 222 9 IN IP4 10.0.0.2")
    assert origins.rewrite(("call-2", "t"), other) == other
    origins.forget(KEY)
    fresh = sdp("carol 999 1 IN IP4 10.0.0.3")
    assert origins.rewrite(KEY, fresh) == fresh
    assert len(origins) == 2


def test_descriptions_without_a_usable_origin_are_left_alone() -> None:
    origins = SdpOrigins()
    assert origins.rewrite(KEY, b"v=0\r\ns=-\r\n") == b"v=0\r\ns=-\r\n"
    odd = sdp("alice 111 notanumber IN IP4 10.0.0.1")
    assert origins.rewrite(KEY, odd) == odd
    assert len(origins) == 0
