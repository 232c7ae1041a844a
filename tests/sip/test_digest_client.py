"""The digest client that answers a carrier's 401/407 (pbxwarden.sip.digest_client)."""

from __future__ import annotations

import hashlib

import pytest

from pbxwarden.sip.digest import (
    Algorithm,
    DigestError,
    DigestServer,
    compute_ha1,
    parse_credentials,
)
from pbxwarden.sip.digest_client import (
    ClientCredentials,
    DigestClient,
    select_challenge,
    with_credentials,
)
from pbxwarden.sip.message import (
    CSeq,
    Headers,
    Request,
    Response,
    Via,
    generate_branch,
    make_response,
    parse_message,
)
from pbxwarden.sip.uri import URI, NameAddr

# RFC 7616 section 3.9.1 (the same vectors tests/sip/test_digest.py checks the server with).
RFC_USER = "Mufasa"
RFC_PASSWORD = "Circle of Life"
RFC_REALM = "http-auth@example.org"
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_RESPONSES = {
    Algorithm.MD5: "8ca523f5e9506fed4657c9700eebdbec",
    Algorithm.SHA256: "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "carrier.example"
USER = "pbx-trunk-1"
PASSWORD = "carrier given secret"
NOW = 1_700_000_000.0


def _invite(headers: Headers | None = None) -> Request:
    return Request(
        via=[Via("UDP", "192.0.2.1", 5060, {"branch": generate_branch(), "rport": None})],
        from_=NameAddr(URI("sip", user="1000", host="192.0.2.1"), None, {"tag": "ft1"}),
        to=NameAddr(URI("sip", user="+12025550143", host="198.51.100.10")),
        call_id="call-1@192.0.2.1",
        cseq=CSeq(1, "INVITE"),
        headers=headers or Headers([("Content-Type", "application/sdp")]),
        body=b"v=0\r\n",
        max_forwards=70,
        contacts=[NameAddr(URI("sip", host="192.0.2.1", port=5060))],
        method="INVITE",
        uri=URI("sip", user="+12025550143", host="198.51.100.10", port=5060),
    )


def _challenge(status: int, *values: str, request: Request | None = None) -> Response:
    name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    return make_response(request or _invite(), status, headers=[(name, v) for v in values])


def _rfc_challenge(algorithm: Algorithm) -> str:
    return (
        f'Digest realm="{RFC_REALM}", qop="auth, auth-int", algorithm={algorithm.value}, '
        f'nonce="{RFC_NONCE}", opaque="{RFC_OPAQUE}"'
    )


def _client(password: str = PASSWORD, realm: str | None = None) -> DigestClient:
    return DigestClient(ClientCredentials(USER, password, realm))


# ------------------------------------------------------------------ known vectors


@pytest.mark.parametrize("algorithm", [Algorithm.MD5, Algorithm.SHA256])
def test_rfc7616_vectors(algorithm: Algorithm) -> None:
    client = DigestClient(
        ClientCredentials(RFC_USER, RFC_PASSWORD), cnonce_factory=lambda: RFC_CNONCE
    )
    header, value = client.answer(
        _challenge(401, _rfc_challenge(algorithm)), "GET", "/dir/index.html"
    )
    assert header == "Authorization"
    creds = parse_credentials(value)
    assert creds.response == RFC_RESPONSES[algorithm]
    assert (creds.username, creds.realm, creds.nonce) == (RFC_USER, RFC_REALM, RFC_NONCE)
    assert (creds.qop, creds.nc, creds.cnonce) == ("auth", "00000001", RFC_CNONCE)
    assert creds.opaque == RFC_OPAQUE and creds.algorithm is algorithm


def test_rfc2617_qop_auth_vector() -> None:
    """RFC 2617 section 3.5, the example every SIP stack is checked against."""
    client = DigestClient(
        ClientCredentials("Mufasa", "Circle Of Life"), cnonce_factory=lambda: "0a4f113b"
    )
    challenge = (
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    _, value = client.answer(_challenge(401, challenge), "GET", "/dir/index.html")
    assert parse_credentials(value).response == "6629fae49393a05397450978507c4ef1"


def test_rfc2069_fallback_without_qop() -> None:
    """A challenge with no qop (old carrier equipment) is answered the RFC 2069 way:
    response = H(HA1:nonce:HA2), and no qop, nc or cnonce on the wire."""
    challenge = f'Digest realm="{REALM}", nonce="abc123", algorithm=MD5'
    uri = "sip:+12025550143@198.51.100.10:5060"
    _, value = _client().answer(_challenge(401, challenge), "INVITE", uri)
    creds = parse_credentials(value)
    assert (creds.qop, creds.nc, creds.cnonce) == (None, None, None)
    assert "qop" not in value and "cnonce" not in value
    ha1 = hashlib.md5(f"{USER}:{REALM}:{PASSWORD}".encode()).hexdigest()
    ha2 = hashlib.md5(f"INVITE:{uri}".encode()).hexdigest()
    assert creds.response == hashlib.md5(f"{ha1}:abc123:{ha2}".encode()).hexdigest()


# ------------------------------------------------------------------ against our own server


@pytest.mark.parametrize("algorithm", [Algorithm.MD5, Algorithm.SHA256])
def test_round_trip_with_digest_server(algorithm: Algorithm) -> None:
    server = DigestServer(SECRET, REALM, [algorithm])
    invite = _invite()
    response = _challenge(401, *server.challenges(NOW), request=invite)
    # The response goes over the wire and back: parse what the carrier would send.
    parsed = parse_message(response.to_bytes())
    assert isinstance(parsed, Response)
    header, value = _client().answer(parsed, "INVITE", str(invite.uri))
    assert header == "Authorization"
    creds = parse_credentials(value)
    ha1 = compute_ha1(USER, REALM, PASSWORD, algorithm)
    assert server.verify("INVITE", creds, ha1, NOW + 1).ok
    wrong = parse_credentials(_client("not the password").answer(parsed, "INVITE", "x")[1])
    assert not server.verify("INVITE", wrong, ha1, NOW + 1).ok


def test_reused_nonce_counts_up_and_the_server_accepts_it() -> None:
    server = DigestServer(SECRET, REALM, [Algorithm.MD5])
    response = _challenge(401, *server.challenges(NOW))
    client = _client()
    ha1 = compute_ha1(USER, REALM, PASSWORD, Algorithm.MD5)
    ncs = []
    for _ in range(3):
        creds = parse_credentials(client.answer(response, "REGISTER", "sip:carrier.example")[1])
        ncs.append(creds.nc)
        assert server.verify("REGISTER", creds, ha1, NOW).ok  # not taken for a replay
    assert ncs == ["00000001", "00000002", "00000003"]


def test_strongest_first_is_taken_and_unknown_algorithms_skipped() -> None:
    server = DigestServer(SECRET, REALM, [Algorithm.SHA256, Algorithm.MD5])
    response = _challenge(
        401, f'Digest realm="{REALM}", nonce="n0", algorithm=SHA-512-256', *server.challenges(NOW)
    )
    challenge, header = select_challenge(response)
    assert (challenge.algorithm, header) == (Algorithm.SHA256, "Authorization")
    md5_only = _challenge(401, 'Basic realm="x"', f'Digest realm="{REALM}", nonce="n1"')
    assert select_challenge(md5_only)[0].algorithm is Algorithm.MD5


def test_configured_realm_is_preferred() -> None:
    response = _challenge(
        407,
        'Digest realm="edge-proxy", nonce="n1", qop="auth"',
        f'Digest realm="{REALM}", nonce="n2", qop="auth"',
    )
    assert select_challenge(response)[0].realm == "edge-proxy"
    challenge, header = select_challenge(response, REALM)
    assert (challenge.realm, header) == (REALM, "Proxy-Authorization")


def test_proxy_challenge_is_answered_with_proxy_authorization() -> None:
    server = DigestServer(SECRET, REALM, [Algorithm.MD5])
    response = _challenge(407, *server.challenges(NOW))
    header, value = _client().answer(response, "INVITE", "sip:x@198.51.100.10")
    assert header == "Proxy-Authorization"
    assert parse_credentials(value).username == USER


@pytest.mark.parametrize(
    "response",
    [
        make_response(_invite(), 403),
        make_response(_invite(), 401),  # no challenge at all
        _challenge(401, 'Basic realm="x"'),
        _challenge(401, f'Digest realm="{REALM}", nonce="n", qop="auth-conf"'),
    ],
)
def test_unanswerable_challenges_raise(response: Response) -> None:
    with pytest.raises(DigestError):
        _client().answer(response, "INVITE", "sip:x@198.51.100.10")


def test_password_never_in_repr() -> None:
    creds = ClientCredentials(USER, PASSWORD)
    assert PASSWORD not in repr(creds) and PASSWORD not in repr(_client().credentials)


# ------------------------------------------------------------------ resending


def test_with_credentials_is_a_new_transaction_of_the_same_request() -> None:
    invite = _invite()
    response = _challenge(401, f'Digest realm="{REALM}", nonce="n1", qop="auth"')
    header, value = _client().answer(response, "INVITE", str(invite.uri))
    again = with_credentials(invite, header, value)
    assert again.cseq == CSeq(2, "INVITE")
    assert again.via[0].branch != invite.via[0].branch
    assert again.via[0].branch is not None and again.via[0].branch.startswith("z9hG4bK")
    assert (again.call_id, again.from_.tag, again.to.tag) == (invite.call_id, "ft1", None)
    assert (again.uri, again.body) == (invite.uri, invite.body)
    assert again.headers.get_all("Authorization") == [value]
    assert again.headers.get("Content-Type") == "application/sdp"
    # the original is untouched (the transaction layer still holds it for the ACK)
    assert invite.cseq.number == 1 and "Authorization" not in invite.headers
    # a second round replaces the answer instead of piling them up
    third = with_credentials(again, header, "Digest new")
    assert third.cseq.number == 3 and third.headers.get_all("Authorization") == ["Digest new"]
    assert parse_message(third.to_bytes()).cseq.number == 3
