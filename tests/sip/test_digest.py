"""Tests for SIP digest authentication (pbxwarden.sip.digest)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbxwarden.sip.digest import (
    INVALID_CREDENTIALS,
    Algorithm,
    AuthResult,
    AuthStatus,
    Challenge,
    Credentials,
    DigestError,
    DigestServer,
    NonceCountTracker,
    NonceFactory,
    NonceStatus,
    build_authorization,
    choose_challenge,
    compute_ha1,
    compute_response,
    hash_hex,
    parse_challenge,
    parse_credentials,
)
from pbxwarden.sip.errors import ParseError

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "pbx.example.com"
USER = "alice"
PASSWORD = "correct horse battery staple"
URI = "sip:bob@pbx.example.com"

_CREDENTIAL_FIELDS = (
    "username",
    "realm",
    "nonce",
    "uri",
    "response",
    "algorithm",
    "cnonce",
    "nc",
    "qop",
    "opaque",
)


def _with(creds: Credentials, **changes: Any) -> Credentials:
    """Credentials with some fields changed (a value class, not a dataclass)."""
    fields = {name: getattr(creds, name) for name in _CREDENTIAL_FIELDS}
    return Credentials(**{**fields, **changes})


NOW = 1_700_000_000.0

# RFC 7616 section 3.9.1.
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

NO_DB = settings(database=None)


def _server(**kwargs: object) -> DigestServer:
    return DigestServer(SECRET, REALM, **kwargs)  # type: ignore[arg-type]


def _answer(
    server: DigestServer,
    algorithm: Algorithm,
    *,
    password: str = PASSWORD,
    nc: int = 1,
    now: float = NOW,
    method: str = "INVITE",
) -> Credentials:
    """Challenge at ``now`` and answer it as a well-behaved UA would."""
    header = next(h for h in server.challenges(now) if parse_challenge(h).algorithm is algorithm)
    value = build_authorization(
        parse_challenge(header), method, URI, USER, password, cnonce="0a4f113b", nc=nc
    )
    return parse_credentials(value)


def _ha1(algorithm: Algorithm = Algorithm.SHA256) -> str:
    return compute_ha1(USER, REALM, PASSWORD, algorithm)


# ------------------------------------------------------------------ known vectors


@pytest.mark.parametrize("algorithm", [Algorithm.MD5, Algorithm.SHA256])
def test_rfc7616_vectors(algorithm: Algorithm) -> None:
    ha1 = compute_ha1(RFC_USER, RFC_REALM, RFC_PASSWORD, algorithm)
    response = compute_response(
        ha1=ha1,
        algorithm=algorithm,
        nonce=RFC_NONCE,
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc="00000001",
        cnonce=RFC_CNONCE,
    )
    assert response == RFC_RESPONSES[algorithm]


@pytest.mark.parametrize("algorithm", [Algorithm.MD5, Algorithm.SHA256])
def test_rfc7616_vectors_through_client(algorithm: Algorithm) -> None:
    challenge = Challenge(RFC_REALM, RFC_NONCE, algorithm, "auth", RFC_OPAQUE)
    header = build_authorization(
        challenge, "GET", "/dir/index.html", RFC_USER, RFC_PASSWORD, RFC_CNONCE, 1
    )
    creds = parse_credentials(header)
    assert creds.response == RFC_RESPONSES[algorithm]
    assert creds.nc == "00000001"
    assert creds.qop == "auth"
    assert creds.opaque == RFC_OPAQUE


def test_rfc7616_authorization_header_parses() -> None:
    header = (
        'Digest username="Mufasa",\r\n realm="http-auth@example.org",\r\n'
        ' uri="/dir/index.html",\r\n algorithm=SHA-256,\r\n'
        f' nonce="{RFC_NONCE}",\r\n nc=00000001,\r\n cnonce="{RFC_CNONCE}",\r\n'
        f' qop=auth,\r\n response="{RFC_RESPONSES[Algorithm.SHA256]}",\r\n'
        f' opaque="{RFC_OPAQUE}"'
    )
    assert parse_credentials(header) == Credentials(
        username=RFC_USER,
        realm=RFC_REALM,
        nonce=RFC_NONCE,
        uri="/dir/index.html",
        response=RFC_RESPONSES[Algorithm.SHA256],
        algorithm=Algorithm.SHA256,
        cnonce=RFC_CNONCE,
        nc="00000001",
        qop="auth",
        opaque=RFC_OPAQUE,
    )


def test_rfc7616_challenge_parses() -> None:
    header = (
        'Digest\r\n realm="http-auth@example.org",\r\n qop="auth, auth-int",\r\n'
        f' algorithm=SHA-256,\r\n nonce="{RFC_NONCE}",\r\n opaque="{RFC_OPAQUE}"'
    )
    assert parse_challenge(header) == Challenge(
        RFC_REALM, RFC_NONCE, Algorithm.SHA256, "auth,auth-int", RFC_OPAQUE, False
    )


def test_hash_hex_and_ha1() -> None:
    assert hash_hex(Algorithm.MD5, "") == "d41d8cd98f00b204e9800998ecf8427e"
    assert hash_hex(Algorithm.SHA256, "abc").startswith("ba7816bf")
    assert compute_ha1("u", "r", "p", Algorithm.MD5_SESS) == compute_ha1(
        "u", "r", "p", Algorithm.MD5
    )
    assert len(compute_ha1("u", "r", "p", Algorithm.SHA256)) == 64
    assert Algorithm.parse("sha-256") is Algorithm.SHA256
    assert Algorithm.parse("md5-SESS") is Algorithm.MD5_SESS


# ------------------------------------------------------------------ server round trips


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_round_trip_ok(algorithm: Algorithm) -> None:
    server = _server(algorithms=list(Algorithm))
    creds = _answer(server, algorithm)
    assert creds.algorithm is algorithm
    result = server.verify("INVITE", creds, _ha1(algorithm.base), NOW + 1)
    assert result == AuthResult(AuthStatus.OK, "ok")
    assert result.ok


def test_challenges_list_sha256_first() -> None:
    headers = _server().challenges(NOW)
    assert [parse_challenge(h).algorithm for h in headers] == [Algorithm.SHA256, Algorithm.MD5]
    # Even when configured MD5-first, the strongest algorithm is offered first.
    headers = _server(algorithms=(Algorithm.MD5, Algorithm.SHA256)).challenges(NOW)
    assert [parse_challenge(h).algorithm for h in headers] == [Algorithm.SHA256, Algorithm.MD5]
    challenge = parse_challenge(headers[0])
    assert challenge.realm == REALM
    assert challenge.qop == "auth"
    assert not challenge.stale
    assert "stale" not in headers[0]


def test_stale_challenge_rendering() -> None:
    headers = _server().challenges(NOW, stale=True)
    assert all("stale=TRUE" in h for h in headers)
    assert all(parse_challenge(h).stale for h in headers)


@pytest.mark.parametrize("stale", [False, True])
def test_rendered_challenges_equal_the_challenge_objects(stale: bool) -> None:
    """challenges() renders from pre-quoted parts; it must say what to_header() says."""
    server = DigestServer(SECRET, 'odd "realm" \\ x', (Algorithm.SHA256, Algorithm.MD5))
    for text in server.challenges(NOW, stale=stale):
        parsed = parse_challenge(text)
        assert parsed.to_header() == text
        assert parsed.realm == 'odd "realm" \\ x' and parsed.stale is stale


def test_challenge_to_header_round_trip() -> None:
    challenge = Challenge('we"ird\\realm', "n0nce", Algorithm.SHA256_SESS, "auth", "op", True)
    assert parse_challenge(challenge.to_header()) == challenge


def test_wrong_password_failed() -> None:
    server = _server()
    creds = _answer(server, Algorithm.SHA256, password="guess")
    assert server.verify("INVITE", creds, _ha1(), NOW) == AuthResult(
        AuthStatus.FAILED, INVALID_CREDENTIALS
    )


def test_wrong_method_failed() -> None:
    server = _server()
    creds = _answer(server, Algorithm.SHA256, method="REGISTER")
    assert server.verify("INVITE", creds, _ha1(), NOW).status is AuthStatus.FAILED


@pytest.mark.parametrize("algorithm", [Algorithm.MD5, Algorithm.SHA256])
def test_unknown_user_indistinguishable_from_wrong_password(algorithm: Algorithm) -> None:
    server = _server()
    wrong = server.verify(
        "INVITE", _answer(server, algorithm, password="guess"), _ha1(algorithm), NOW
    )
    unknown = server.verify("INVITE", _answer(server, algorithm), None, NOW)
    assert unknown == wrong
    assert unknown.status is AuthStatus.FAILED


def test_expired_nonce_correct_password_is_stale() -> None:
    server = _server()
    creds = _answer(server, Algorithm.SHA256)
    result = server.verify("INVITE", creds, _ha1(), NOW + 301)
    assert result == AuthResult(AuthStatus.STALE, "nonce expired")


def test_expired_nonce_wrong_password_or_unknown_user_is_failed() -> None:
    server = _server()
    wrong = server.verify(
        "INVITE", _answer(server, Algorithm.SHA256, password="x"), _ha1(), NOW + 301
    )
    assert wrong == AuthResult(AuthStatus.FAILED, INVALID_CREDENTIALS)
    unknown = server.verify("INVITE", _answer(server, Algorithm.SHA256), None, NOW + 301)
    assert unknown == wrong


def test_tampered_nonce_failed() -> None:
    server = _server()
    creds = _answer(server, Algorithm.SHA256)
    nonce = creds.nonce
    tampered = nonce[:5] + ("A" if nonce[5] != "A" else "B") + nonce[6:]
    # Recompute the response over the tampered nonce: only the nonce MAC can catch it.
    response = compute_response(
        ha1=_ha1(),
        algorithm=Algorithm.SHA256,
        nonce=tampered,
        method="INVITE",
        uri=URI,
        qop="auth",
        nc="00000001",
        cnonce=creds.cnonce,
    )
    forged = _with(creds, nonce=tampered, response=response)
    # The MAC catches it: never accepted. Only one who knows the password can make
    # the digest match, so that one is asked for a fresh nonce; anyone else fails.
    assert server.verify("INVITE", forged, _ha1(), NOW) == AuthResult(
        AuthStatus.STALE, "nonce not issued by this node"
    )
    guessed = _with(forged, response="0" * len(response))
    assert server.verify("INVITE", guessed, _ha1(), NOW) == AuthResult(
        AuthStatus.FAILED, "invalid nonce"
    )


def test_another_nodes_nonce_asks_for_a_fresh_one_and_grants_nothing() -> None:
    """Each node signs nonces with its own secret. A phone its front moved to another
    node answers that node with the old node's nonce: a 403 would stop a real phone
    (PJSIP, linphone) registering; a fresh nonce (stale) lets it go on at once."""
    other = DigestServer(b"another secret of 16+ bytes", REALM)
    creds = _answer(other, Algorithm.SHA256, method="REGISTER")
    here = _server()
    for _ in range(2):  # no replay memory needed: nothing is ever granted on it
        assert here.verify("REGISTER", creds, _ha1(), NOW) == AuthResult(
            AuthStatus.STALE, "nonce not issued by this node"
        )
    wrong = _answer(other, Algorithm.SHA256, password="guess", method="REGISTER")
    assert here.verify("REGISTER", wrong, _ha1(), NOW) == AuthResult(
        AuthStatus.FAILED, "invalid nonce"
    )
    # an unknown user fails the same way as a wrong password: no enumeration
    assert here.verify("REGISTER", creds, None, NOW) == AuthResult(
        AuthStatus.FAILED, "invalid nonce"
    )


def test_nonce_from_another_issuer_is_stale_not_replayable() -> None:
    """Processes sharing the secret (registrar workers) keep separate replay memories:
    each honours only the nonces it issued, and asks for a fresh one otherwise."""
    worker1, worker2 = _server(issuer=1), _server(issuer=2)
    creds = _answer(worker1, Algorithm.SHA256)
    assert worker2.verify("INVITE", creds, _ha1(), NOW) == AuthResult(
        AuthStatus.STALE, "nonce issued by another process"
    )
    assert worker1.verify("INVITE", creds, _ha1(), NOW).status is AuthStatus.OK
    assert worker1.verify("INVITE", creds, _ha1(), NOW).reason == "nonce replayed"
    # A wrong password is still a failure, whoever issued the nonce.
    wrong = _answer(worker1, Algorithm.SHA256, password="guess")
    assert worker2.verify("INVITE", wrong, _ha1(), NOW).status is AuthStatus.FAILED
    with pytest.raises(ValueError):
        NonceFactory(SECRET, issuer=256)


def test_main_process_honours_worker_nonces_except_for_register() -> None:
    """A phone registered through a worker may reuse that nonce for an INVITE, which
    only the main process receives; a REGISTER with it must still go to its issuer."""
    worker = _server(issuer=1)
    main = _server(issuer=0, foreign_nonces_unless_register=True)
    invite = _answer(worker, Algorithm.SHA256, method="INVITE", nc=2)
    assert main.verify("INVITE", invite, _ha1(), NOW).status is AuthStatus.OK
    assert main.verify("INVITE", invite, _ha1(), NOW).reason == "nonce replayed"
    register = _answer(worker, Algorithm.SHA256, method="REGISTER")
    assert main.verify("REGISTER", register, _ha1(), NOW) == AuthResult(
        AuthStatus.STALE, "nonce issued by another process"
    )
    # The method is inside the digest: REGISTER credentials are no INVITE's.
    assert main.verify("INVITE", register, _ha1(), NOW).status is AuthStatus.FAILED


def test_nc_replay_rejected_and_increasing_accepted() -> None:
    server = _server()
    header = server.challenges(NOW)[0]
    challenge = parse_challenge(header)

    def creds(nc: int) -> Credentials:
        return parse_credentials(
            build_authorization(challenge, "INVITE", URI, USER, PASSWORD, "c", nc)
        )

    assert server.verify("INVITE", creds(1), _ha1(), NOW).status is AuthStatus.OK
    assert server.verify("INVITE", creds(1), _ha1(), NOW) == AuthResult(
        AuthStatus.FAILED, "nonce replayed"
    )
    assert server.verify("INVITE", creds(2), _ha1(), NOW).status is AuthStatus.OK
    assert server.verify("INVITE", creds(5), _ha1(), NOW).status is AuthStatus.OK
    assert server.verify("INVITE", creds(3), _ha1(), NOW).reason == "nonce replayed"


def test_wrong_password_does_not_burn_nonce_count() -> None:
    server = _server()
    challenge = parse_challenge(server.challenges(NOW)[0])
    bad = build_authorization(challenge, "INVITE", URI, USER, "guess", "c", 7)
    good = build_authorization(challenge, "INVITE", URI, USER, PASSWORD, "c", 1)
    assert server.verify("INVITE", parse_credentials(bad), _ha1(), NOW).status is (
        AuthStatus.FAILED
    )
    assert server.verify("INVITE", parse_credentials(good), _ha1(), NOW).ok


def test_realm_mismatch() -> None:
    server = _server()
    creds = _with(_answer(server, Algorithm.SHA256), realm="evil.example.com")
    assert server.verify("INVITE", creds, _ha1(), NOW) == AuthResult(
        AuthStatus.FAILED, "realm mismatch"
    )


def test_unsupported_algorithm() -> None:
    sha_only = _server(algorithms=(Algorithm.SHA256,))
    creds = _answer(_server(), Algorithm.MD5)
    assert sha_only.verify("INVITE", creds, _ha1(Algorithm.MD5), NOW) == AuthResult(
        AuthStatus.FAILED, "unsupported algorithm"
    )


def test_missing_qop_rejected_when_required() -> None:
    server = _server()
    legacy = dataclasses.replace(parse_challenge(server.challenges(NOW)[0]), qop=None)
    creds = parse_credentials(build_authorization(legacy, "INVITE", URI, USER, PASSWORD, "c", 1))
    assert creds.qop is None and creds.nc is None and creds.cnonce is None
    assert server.verify("INVITE", creds, _ha1(), NOW) == AuthResult(
        AuthStatus.FAILED, "qop required"
    )


def test_missing_qop_accepted_when_not_required() -> None:
    server = _server(require_qop=False)
    legacy = dataclasses.replace(parse_challenge(server.challenges(NOW)[0]), qop=None)
    creds = parse_credentials(build_authorization(legacy, "INVITE", URI, USER, PASSWORD, "c", 1))
    assert server.verify("INVITE", creds, _ha1(), NOW).ok
    wrong = parse_credentials(build_authorization(legacy, "INVITE", URI, USER, "x", "c", 1))
    assert server.verify("INVITE", wrong, _ha1(), NOW).reason == INVALID_CREDENTIALS


def test_qop_requires_nc_and_cnonce() -> None:
    server = _server()
    creds = _answer(server, Algorithm.SHA256)
    for broken in (
        _with(creds, nc=None),
        _with(creds, cnonce=None),
        _with(creds, cnonce=""),
    ):
        assert server.verify("INVITE", broken, _ha1(), NOW) == AuthResult(
            AuthStatus.FAILED, "missing nc or cnonce"
        )
    zero = _with(creds, nc="00000000")
    assert server.verify("INVITE", zero, _ha1(), NOW).reason == "invalid nonce count"


def test_only_qop_auth_accepted() -> None:
    server = _server()
    creds = _with(_answer(server, Algorithm.SHA256), qop="auth-int")
    assert server.verify("INVITE", creds, _ha1(), NOW).reason == "unsupported qop"


def test_bad_stored_ha1_is_a_caller_bug() -> None:
    server = _server()
    creds = _answer(server, Algorithm.SHA256)
    with pytest.raises(ValueError):
        server.verify("INVITE", creds, _ha1(Algorithm.MD5), NOW)


def test_uppercase_response_accepted() -> None:
    server = _server()
    creds = _answer(server, Algorithm.SHA256)
    upper = _with(creds, response=creds.response.upper())
    assert server.verify("INVITE", upper, _ha1(), NOW).ok


def test_server_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        DigestServer(b"short", REALM)
    with pytest.raises(ValueError):
        DigestServer(SECRET, REALM, algorithms=())
    with pytest.raises(ValueError):
        DigestServer(SECRET, REALM, algorithms=(Algorithm.MD5, Algorithm.MD5))
    with pytest.raises(DigestError):
        DigestServer(SECRET, "bad\r\nrealm")


# ------------------------------------------------------------------ nonces


def test_nonce_factory_statuses() -> None:
    factory = NonceFactory(SECRET, lifetime=300.0)
    nonce = factory.issue(NOW, REALM)
    assert len(nonce) == 43
    assert base64.urlsafe_b64decode(nonce + "=")[:8] == int(NOW * 1000).to_bytes(8, "big")
    assert factory.check(nonce, NOW, REALM) is NonceStatus.VALID
    assert factory.check(nonce, NOW + 300, REALM) is NonceStatus.VALID
    assert factory.check(nonce, NOW + 300.5, REALM) is NonceStatus.STALE
    assert factory.check(nonce, NOW - 1, REALM) is NonceStatus.VALID  # within skew
    assert factory.check(nonce, NOW - 60, REALM) is NonceStatus.INVALID  # from the future
    assert factory.check(nonce, NOW, "other.realm") is NonceStatus.INVALID
    assert NonceFactory(b"x" * 32).check(nonce, NOW, REALM) is NonceStatus.INVALID
    assert factory.issue(NOW, REALM) != nonce


@pytest.mark.parametrize(
    "garbage",
    ["", "abc", "A" * 43, "A" * 44, "!" * 43, "é" * 43, "A" * 42 + "=", "A" * 1000],
)
def test_nonce_factory_rejects_garbage(garbage: str) -> None:
    assert NonceFactory(SECRET).check(garbage, NOW, REALM) is NonceStatus.INVALID


def test_nonce_factory_rejects_non_canonical_spelling() -> None:
    factory = NonceFactory(SECRET)
    nonce = factory.issue(NOW, REALM)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(nonce[-1])
    # The last character carries 4 data bits and 2 padding bits: flip a padding bit.
    variant = nonce[:-1] + alphabet[index ^ 1]
    assert base64.urlsafe_b64decode(variant + "=") == base64.urlsafe_b64decode(nonce + "=")
    assert factory.check(variant, NOW, REALM) is NonceStatus.INVALID


def test_nonce_factory_every_single_character_change_invalid() -> None:
    factory = NonceFactory(SECRET)
    nonce = factory.issue(NOW, REALM)
    for i in range(len(nonce)):
        for repl in "A_":
            if nonce[i] != repl:
                changed = nonce[:i] + repl + nonce[i + 1 :]
                assert factory.check(changed, NOW, REALM) is NonceStatus.INVALID


def test_nonce_factory_arguments() -> None:
    with pytest.raises(ValueError):
        NonceFactory(b"too short")
    with pytest.raises(ValueError):
        NonceFactory(SECRET, lifetime=0)
    with pytest.raises(ValueError):
        NonceFactory(SECRET).issue(-1.0, REALM)
    with pytest.raises(ValueError):
        NonceFactory(SECRET).check("x", float("nan"), REALM)


# ------------------------------------------------------------------ nonce counts


def test_tracker_accepts_increasing_only() -> None:
    tracker = NonceCountTracker()
    assert tracker.accept("n", 1)
    assert not tracker.accept("n", 1)
    assert tracker.accept("n", 2)
    assert tracker.accept("n", 10)
    assert not tracker.accept("n", 9)
    assert tracker.accept("other", 1)
    assert not tracker.accept("x", 0)
    assert not tracker.accept("x", 2**32)


def test_tracker_is_bounded_and_eviction_does_not_reopen_replay() -> None:
    tracker = NonceCountTracker(max_entries=3)
    for i in range(3):
        assert tracker.accept(f"n{i}", 1, issued_at=float(i))
    assert tracker.accept("n3", 1, issued_at=3.0)
    assert len(tracker) == 3
    assert "n0" not in tracker
    assert tracker.horizon == 0.0
    # A replay of the evicted nonce is refused, newer unseen nonces are fine.
    assert not tracker.accept("n0", 1, issued_at=0.0)
    assert tracker.accept("n4", 1, issued_at=4.0)


def test_tracker_evicts_least_recently_used() -> None:
    tracker = NonceCountTracker(max_entries=2)
    assert tracker.accept("a", 1, issued_at=1.0)
    assert tracker.accept("b", 1, issued_at=2.0)
    assert tracker.accept("a", 2)
    assert tracker.accept("c", 1, issued_at=3.0)
    assert "a" in tracker and "b" not in tracker
    assert tracker.horizon == 2.0


def test_tracker_forgets_nonces_too_old_to_be_accepted_anyway() -> None:
    tracker = NonceCountTracker()
    for i in range(5):
        assert tracker.accept(f"n{i}", 1, issued_at=float(i))
    assert tracker.accept("n5", 1, issued_at=5.0, stale_before=3.0)
    assert len(tracker) == 3 and "n2" not in tracker and "n3" in tracker
    assert tracker.horizon == -math.inf  # forgotten as stale, not evicted: no horizon
    assert tracker.accept("x", 1, stale_before=1e9)  # of unknown age: kept, stops the sweep
    assert tracker.accept("y", 1, issued_at=6.0, stale_before=1e9)
    assert "x" in tracker and "y" in tracker


def test_server_forgets_counts_of_expired_nonces() -> None:
    tracker = NonceCountTracker()
    server = _server(tracker=tracker)
    old = _answer(server, Algorithm.SHA256, now=NOW)
    assert server.verify("INVITE", old, _ha1(), NOW + 1).ok and len(tracker) == 1
    later = NOW + 300 + 61 + 5
    fresh = _answer(server, Algorithm.SHA256, now=later)
    assert server.verify("INVITE", fresh, _ha1(), later + 1).ok
    assert len(tracker) == 1  # the expired one's count is gone
    assert server.verify("INVITE", old, _ha1(), later + 2).status is AuthStatus.STALE


def test_server_returns_stale_for_evicted_nonce() -> None:
    server = _server(tracker=NonceCountTracker(max_entries=1))
    first = _answer(server, Algorithm.SHA256, now=NOW)
    second = _answer(server, Algorithm.SHA256, now=NOW + 1)
    assert server.verify("INVITE", first, _ha1(), NOW + 2).ok
    assert server.verify("INVITE", second, _ha1(), NOW + 2).ok  # evicts the first
    replay = server.verify("INVITE", first, _ha1(), NOW + 2)
    assert replay == AuthResult(AuthStatus.STALE, "nonce no longer tracked")


# ------------------------------------------------------------------ parsing


def test_parse_credentials_tricky_but_valid() -> None:
    header = (
        'digest   USERNAME = "a\\"l\\\\ice" ,\t,realm="pbx.example.com",'
        '  nonce="n",uri="sip:bob@pbx.example.com" ,  Response = "ABCDEF12",'
        ' algorithm="sha-256", qop="auth", nc=0000000A, cnonce="x y",'
        ' foo=bar, baz="ignored, really", x-extension=1 ,'
    )
    creds = parse_credentials(header)
    assert creds == Credentials(
        username='a"l\\ice',
        realm="pbx.example.com",
        nonce="n",
        uri=URI,
        response="abcdef12",
        algorithm=Algorithm.SHA256,
        cnonce="x y",
        nc="0000000A",
        qop="auth",
        opaque=None,
    )


def test_parse_credentials_defaults_and_bare_values() -> None:
    creds = parse_credentials("DIGEST username=bob,realm=r,nonce=n,uri=sip:bob@h,response=00")
    assert creds.algorithm is Algorithm.MD5
    assert creds.uri == "sip:bob@h"
    assert creds.qop is None and creds.nc is None and creds.cnonce is None


def test_parse_credentials_utf8_username() -> None:
    challenge = Challenge(REALM, "n", Algorithm.SHA256)
    header = build_authorization(challenge, "REGISTER", URI, "jürgen", "pw", "c", 1)
    assert parse_credentials(header).username == "jürgen"


BASE = 'username="u", realm="r", nonce="n", uri="sip:x", response="0a"'


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("", "missing authentication scheme"),
        ("   ", "missing authentication scheme"),
        ("Basic dXNlcjpwYXNz", "unsupported authentication scheme"),
        ("Digest", "no digest parameters"),
        ("Digest ,,", "no digest parameters"),
        ('Digest="x"', "expected whitespace"),
        ('Digest realm="r", nonce="n", uri="sip:x", response="0a"', "'username'"),
        ('Digest username="u", nonce="n", uri="sip:x", response="0a"', "'realm'"),
        ('Digest username="u", realm="r", uri="sip:x", response="0a"', "'nonce'"),
        ('Digest username="u", realm="r", nonce="n", response="0a"', "'uri'"),
        ('Digest username="u", realm="r", nonce="n", uri="sip:x"', "'response'"),
        (f'Digest {BASE}, Username="v"', "duplicate parameter"),
        (f"Digest {BASE}, algorithm=SHA-512-256", "unsupported algorithm"),
        (f"Digest {BASE}, algorithm=", "missing value"),
        (f"Digest {BASE}, nc=1", "nc must be"),
        (f"Digest {BASE}, nc=0000000g", "nc must be"),
        (f"Digest {BASE}, nc=000000001", "nc must be"),
        (f"Digest {BASE}, qop=", "missing value"),
        (f'Digest {BASE}, qop="auth auth-int"', "qop must be"),
        (f"Digest {BASE}, userhash=true", "userhash"),
        ('Digest username="u, realm="r"', "expected ','"),
        ('Digest username="unterminated', "unterminated"),
        ('Digest username="trailing\\', "unterminated"),
        ('Digest username="a\r\nVia: x"', "invalid character"),
        ('Digest username="a\x00"', "invalid character"),
        ("Digest username", "expected '='"),
        ('Digest username="u" realm="r"', "expected ','"),
        ('Digest =value, username="u"', "unexpected character"),
        ('Digest username="u", realm="r", nonce="n", uri="sip:x", response="xyz"', "hex"),
        ('Digest username="u", realm="r", nonce="n", uri="sip:x", response=""', "hex"),
        ("Digest " + "a=b," * 3000, "too long"),
    ],
)
def test_parse_credentials_rejects(header: str, reason: str) -> None:
    with pytest.raises(DigestError) as info:
        parse_credentials(header)
    assert reason in str(info.value)
    assert isinstance(info.value, ParseError) and info.value.status == 400


@pytest.mark.parametrize(
    "header",
    [
        'Digest nonce="n"',
        'Digest realm="r"',
        'Digest realm="r", nonce="n", algorithm=SHA-999',
        'Digest realm="r", nonce="n", qop="auth-conf"',
        'Digest realm="r", nonce="n", realm="r"',
        'Basic realm="r"',
    ],
)
def test_parse_challenge_rejects(header: str) -> None:
    with pytest.raises(DigestError):
        parse_challenge(header)


def test_parse_challenge_legacy_and_variants() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", stale=true, domain="sip:r"')
    assert challenge == Challenge("r", "n", Algorithm.MD5, None, None, True)
    assert parse_challenge('Digest realm="r", nonce="n", qop="auth-int"').qop == "auth-int"
    assert not parse_challenge('Digest realm="r", nonce="n", stale="maybe"').stale


def test_choose_challenge_skips_unsupported() -> None:
    headers = [
        'Digest realm="r", nonce="a", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="r", nonce="b", algorithm=SHA-256, qop="auth"',
        'Digest realm="r", nonce="c", algorithm=MD5, qop="auth"',
    ]
    assert choose_challenge(headers).nonce == "b"
    with pytest.raises(DigestError):
        choose_challenge(headers[:1])


# ------------------------------------------------------------------ client


def test_build_authorization_auth_int_fallback_hashes_body() -> None:
    challenge = Challenge("r", "n", Algorithm.SHA256, qop="auth-int")
    creds = parse_credentials(
        build_authorization(challenge, "INVITE", URI, "u", "p", "c", 1, b"v=0")
    )
    assert creds.qop == "auth-int"
    expected = compute_response(
        ha1=compute_ha1("u", "r", "p", Algorithm.SHA256),
        algorithm=Algorithm.SHA256,
        nonce="n",
        method="INVITE",
        uri=URI,
        qop="auth-int",
        nc="00000001",
        cnonce="c",
        body=b"v=0",
    )
    assert creds.response == expected
    both = Challenge("r", "n", Algorithm.SHA256, qop="auth-int,auth")
    assert parse_credentials(build_authorization(both, "INVITE", URI, "u", "p", "c", 1)).qop == (
        "auth"
    )


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"username": "a\r\nX: y"}, "cannot be carried"),
        ({"uri": "sip:a\nb"}, "cannot be carried"),
        ({"nc": 0}, "nc must be"),
        ({"nc": 2**32}, "nc must be"),
        ({"cnonce": ""}, "cnonce"),
    ],
)
def test_build_authorization_rejects(kwargs: dict[str, object], reason: str) -> None:
    args: dict[str, object] = {
        "method": "INVITE",
        "uri": URI,
        "username": "u",
        "password": "p",
        "cnonce": "c",
        "nc": 1,
    }
    args.update(kwargs)
    challenge = Challenge("r", "n", Algorithm.SHA256)
    with pytest.raises(DigestError, match=reason):
        build_authorization(challenge, **args)  # type: ignore[arg-type]


def test_build_authorization_rejects_unsupported_qop_and_sess_without_qop() -> None:
    with pytest.raises(DigestError):
        build_authorization(
            Challenge("r", "n", Algorithm.MD5, "auth-conf"), "A", "u", "u", "p", "c", 1
        )
    with pytest.raises(DigestError):
        build_authorization(
            Challenge("r", "n", Algorithm.MD5_SESS, None), "A", "u", "u", "p", "c", 1
        )


# ------------------------------------------------------------------ property tests

_FRAGMENTS = st.sampled_from(
    [
        "Digest ",
        "digest",
        "username",
        "realm",
        "nonce",
        "uri",
        "response",
        "algorithm",
        "qop",
        "nc",
        "cnonce",
        "stale",
        "userhash",
        "=",
        ",",
        '"',
        "\\",
        " ",
        "\t",
        "\r\n",
        "auth",
        "MD5",
        "SHA-256",
        "00000001",
        "abc",
        "0a",
        "true",
        "é",
        "\x00",
    ]
)
_HEADERISH = st.lists(_FRAGMENTS, max_size=40).map("".join)
_PARAM = st.tuples(
    st.sampled_from(["username", "realm", "nonce", "uri", "response", "algorithm", "qop", "nc"]),
    st.one_of(_HEADERISH, st.text(max_size=10)),
    st.booleans(),
).map(lambda p: f'{p[0]}="{p[1]}"' if p[2] else f"{p[0]}={p[1]}")
_PARAMS = st.lists(_PARAM, max_size=10).map(lambda ps: "Digest " + ", ".join(ps))


@settings(database=None, max_examples=300)
@given(st.one_of(st.text(), _HEADERISH, _HEADERISH.map(lambda s: "Digest " + s), _PARAMS))
def test_parsers_raise_only_digest_error(text: str) -> None:
    for parse in (parse_credentials, parse_challenge):
        with contextlib.suppress(DigestError):
            parse(text)


_PRINTABLE = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"), max_size=30
)


@NO_DB
@given(username=_PRINTABLE, realm=_PRINTABLE, uri=_PRINTABLE, cnonce=_PRINTABLE.filter(bool))
def test_client_server_quoting_round_trip(username: str, realm: str, uri: str, cnonce: str) -> None:
    challenge = Challenge(realm, "n", Algorithm.SHA256, opaque=realm)
    assert parse_challenge(challenge.to_header()) == challenge
    creds = parse_credentials(
        build_authorization(challenge, "INVITE", uri, username, "pw", cnonce, 1)
    )
    assert (creds.username, creds.realm, creds.uri, creds.cnonce, creds.opaque) == (
        username,
        realm,
        uri,
        cnonce,
        realm,
    )


@NO_DB
@given(st.text(max_size=60))
def test_verify_never_raises_on_parsed_input(tail: str) -> None:
    server = _server()
    creds = _answer(server, Algorithm.SHA256)
    header = build_authorization(
        parse_challenge(server.challenges(NOW)[0]), "INVITE", URI, USER, PASSWORD, "c", 1
    )
    try:
        parsed = parse_credentials(header + tail)
    except DigestError:
        parsed = creds
    for ha1 in (_ha1(), None):
        assert isinstance(server.verify("INVITE", parsed, ha1, NOW), AuthResult)


_PARAM_NAMES = st.sampled_from(
    [
        "username",
        "realm",
        "nonce",
        "uri",
        "response",
        "qop",
        "nc",
        "cnonce",
        "algorithm",
        "opaque",
        "Realm",
        "x-y",
    ]
)
_VALUES = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=12)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(_PARAM_NAMES, _VALUES, st.booleans(), st.sampled_from(["", " ", "\t", "  "])),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["Digest ", "digest\t", " DIGEST  "]),
)
def test_fast_and_exact_parameter_parsers_agree(
    items: list[tuple[str, str, bool, str]], scheme: str
) -> None:
    from pbxwarden.sip.digest import _fast_params, _parse_params_exact

    text = scheme + ",".join(
        f"{ws}{name}{ws}={ws}" + (f'"{value}"' if quoted else value) + ws
        for name, value, quoted, ws in items
    )
    fast = _fast_params(text)
    if fast is None:
        return  # the exact parser handles it alone
    assert fast == _parse_params_exact(text)


def test_fast_path_takes_a_typical_phone_header() -> None:
    from pbxwarden.sip.digest import _fast_params, _parse_params_exact

    header = (
        'Digest username="1000",realm="pbxwarden",cnonce="6b8b4567",nc=00000001,'
        'qop=auth,uri="sip:127.0.0.1",nonce="AAABoxiTPoCKQkNN",'
        'response="4a5f2c8e9d3b1a7f6e5d4c3b2a190817",algorithm=MD5'
    )
    fast = _fast_params(header)
    assert fast is not None and fast == _parse_params_exact(header)
    assert fast["qop"] == "auth" and fast["uri"] == "sip:127.0.0.1"
