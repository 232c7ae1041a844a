"""SDP reading and rewriting for the relay, and which packets a relay port accepts."""

from __future__ import annotations

import pytest

from pbxwarden.pbx.media import Endpoint, MediaStream, SdpError, is_sdp, rewrite, streams

OFFER = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844527 IN IP4 192.168.1.20\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.168.1.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=rtcp:49171\r\n"
    b"a=ice-ufrag:F7gI\r\n"
    b"a=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\n"
    b"a=candidate:1 1 UDP 2130706431 192.168.1.20 49170 typ host\r\n"
    b"a=x-vendor-thing:42\r\n"
    b"a=sendrecv\r\n"
    b"m=video 0 RTP/AVP 96\r\n"
    b"m=video 51372 RTP/AVP 97\r\n"
    b"c=IN IP6 2001:db8::7\r\n"
    b"a=rtcp-mux\r\n"
)


def test_streams_of_an_offer() -> None:
    assert streams(OFFER) == [
        MediaStream("audio", "192.168.1.20", 49170, 49171),
        MediaStream("video", "192.168.1.20", 0, 0),
        MediaStream("video", "2001:db8::7", 51372, 51372),  # rtcp-mux: RTCP on the RTP port
    ]


def test_rtcp_defaults_to_the_next_port() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    body += b"m=audio 4000 RTP/AVP 0\r\n"
    assert streams(body) == [MediaStream("audio", "10.0.0.1", 4000, 4001)]


def test_rewrite_points_every_stream_at_the_relay_and_hides_the_phone() -> None:
    out = rewrite(OFFER, "203.0.113.5", [30000, 0, 30010])
    text = out.decode()
    assert "192.168.1.20" not in text and "2001:db8::7" not in text
    assert "c=IN IP4 203.0.113.5\r\n" in text
    assert "o=alice 2890844526 2890844527 IN IP4 203.0.113.5\r\n" in text
    assert "m=audio 30000 RTP/AVP 0 8 101\r\n" in text
    assert "a=rtcp:30001\r\n" in text
    assert "m=video 0 RTP/AVP 96\r\n" in text
    assert "m=video 30010 RTP/AVP 97\r\n" in text
    assert "candidate" not in text and "ice-" not in text
    # codecs, DTMF, direction and attributes the library does not know are kept
    for kept in ("a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15", "a=sendrecv"):
        assert kept in text
    assert "a=x-vendor-thing:42" in text
    assert text.count("a=rtcp-mux") == 1
    assert streams(out) == [
        MediaStream("audio", "203.0.113.5", 30000, 30001),
        MediaStream("video", "203.0.113.5", 0, 0),
        MediaStream("video", "203.0.113.5", 30010, 30010),
    ]


def test_rewrite_to_ipv6() -> None:
    out = rewrite(OFFER, "::1", [30000, 0, 30010]).decode()
    assert "c=IN IP6 ::1\r\n" in out and "IN IP6 ::1\r\n" in out.splitlines(True)[1]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "no media"),
        (b"garbage", "no media"),
        (b"v=0\r\ns=-\r\nt=0 0\r\n", "no media"),
        (b"v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio x RTP/AVP 0\r\n", "not a port"),
        (b"v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 99999 RTP/AVP 0\r\n", "out of range"),
        (b"v=0\r\nc=IN IP4 999.1.1.1\r\nm=audio 4000 RTP/AVP 0\r\n", "no usable c="),
        (b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n", "no usable c="),
        (b"\xff\xfe", "not UTF-8"),
        (b"v=0\r\nc=IN IP4 10.0.0.1\r\n" + b"m=audio 4000 RTP/AVP 0\r\n" * 9, "more than 8"),
    ],
)
def test_unusable_sdp_is_a_readable_error(body: bytes, why: str) -> None:
    with pytest.raises(SdpError, match=why):
        streams(body)


def test_rewrite_refuses_a_changed_stream_count() -> None:
    with pytest.raises(SdpError):
        rewrite(OFFER, "203.0.113.5", [30000])


def test_is_sdp() -> None:
    assert is_sdp("application/sdp", b"v=0")
    assert is_sdp("Application/SDP; charset=utf-8", b"v=0")
    assert not is_sdp("application/sdp", b"")
    assert not is_sdp(None, b"v=0")
    assert not is_sdp("multipart/mixed;boundary=x", b"v=0")


def _endpoint(host: str = "192.168.1.20", port: int = 49170) -> Endpoint:
    endpoint = Endpoint("198.51.100.7")
    endpoint.describe(MediaStream("audio", host, port, port + 1), "198.51.100.7")
    return endpoint


def test_media_goes_where_the_sdp_says_until_the_phone_sends() -> None:
    endpoint = _endpoint()
    assert endpoint.target() == ("192.168.1.20", 49170)
    assert endpoint.target(rtcp=True) == ("192.168.1.20", 49171)


def test_first_packet_from_the_signalling_address_latches_behind_nat() -> None:
    endpoint = _endpoint()
    assert endpoint.accepts(("198.51.100.7", 61000))  # the NAT's public side
    assert endpoint.target() == ("198.51.100.7", 61000)
    assert endpoint.accepts(("198.51.100.7", 61000))
    assert not endpoint.accepts(("198.51.100.7", 61002))  # the latch holds
    # RTCP latches on its own: the NAT maps it to an unrelated port
    assert endpoint.target(rtcp=True) == ("192.168.1.20", 49171)
    assert endpoint.accepts(("198.51.100.7", 62017), rtcp=True)
    assert endpoint.target(rtcp=True) == ("198.51.100.7", 62017)


def test_strangers_neither_latch_nor_redirect_media() -> None:
    endpoint = _endpoint()
    assert not endpoint.accepts(("203.0.113.66", 49170))
    assert endpoint.target() == ("192.168.1.20", 49170)
    assert endpoint.accepts(("192.168.1.20", 49170))
    assert not endpoint.accepts(("203.0.113.66", 49170))
    assert endpoint.target() == ("192.168.1.20", 49170)


def test_new_sdp_address_restarts_latching() -> None:
    endpoint = _endpoint()
    assert endpoint.accepts(("198.51.100.7", 61000))
    endpoint.describe(MediaStream("audio", "192.168.1.20", 49170, 49171), "198.51.100.7")
    assert endpoint.target() == ("198.51.100.7", 61000)  # same SDP (a re-INVITE): kept
    endpoint.describe(MediaStream("audio", "192.168.1.21", 50000, 50001), "198.51.100.7")
    assert endpoint.target() == ("192.168.1.21", 50000)


def test_disabled_stream_accepts_and_sends_nothing() -> None:
    endpoint = _endpoint(port=0)
    assert endpoint.target() is None
    assert not endpoint.accepts(("192.168.1.20", 49170))
    assert Endpoint("198.51.100.7").target() is None  # no SDP yet


def test_direction_per_stream_or_from_the_session() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    body += b"a=recvonly\r\nm=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\na=inactive\r\n"
    assert [s.direction for s in streams(body)] == ["recvonly", "inactive"]
    assert streams(OFFER)[0].direction == "sendrecv"
