"""Registrar and authenticator rules, sans-I/O: requests in, responses out, a fake clock."""

from __future__ import annotations

import pytest

from pbxwarden.pbx.auth import Authenticator
from pbxwarden.pbx.location import LocationService
from pbxwarden.pbx.registrar import Registrar, RegistrarPolicy
from pbxwarden.sip.digest import (
    Algorithm,
    DigestServer,
    build_authorization,
    choose_challenge,
    compute_ha1,
)
from pbxwarden.sip.message import Request, parse_message
from pbxwarden.store.db import ExtensionAuth

REALM = "pbxwarden"
NOW = 1_800_000_000.0
EXT = ExtensionAuth(
    7,
    "default",
    "1000",
    REALM,
    {a: compute_ha1("1000", REALM, "Right-Passw0rd", a) for a in (Algorithm.MD5, Algorithm.SHA256)},
    True,
)


def register(
    contacts: list[str] | None = None,
    *,
    expires: int | None = None,
    call_id: str = "c1",
    cseq: int = 1,
    to_user: str = "1000",
    extra: str = "",
) -> Request:
    lines = [
        "REGISTER sip:pbx.example SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1",
        f"From: <sip:{to_user}@pbx.example>;tag=1",
        f"To: <sip:{to_user}@pbx.example>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    lines += [f"Contact: {c}" for c in contacts or []]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if extra:
        lines.append(extra)
    msg = parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


@pytest.fixture
def registrar() -> Registrar:
    return Registrar(
        LocationService(),
        RegistrarPolicy(min_expires=60, max_expires=3600, default_expires=1800, max_contacts=3),
    )


def contacts_of(response: object) -> list[str]:
    return response.headers.get_all("Contact")  # type: ignore[attr-defined,no-any-return]


def test_bindings_added_listed_and_capped(registrar: Registrar) -> None:
    r = registrar.register(
        register(["<sip:a@192.0.2.10>;q=0.5", "<sip:b@192.0.2.10>"], expires=99999),
        EXT,
        "udp:192.0.2.10:5060",
        NOW,
    )
    assert r.status == 200
    listed = contacts_of(r)
    assert listed == ["<sip:b@192.0.2.10>;expires=3600", "<sip:a@192.0.2.10>;expires=3600;q=0.5"]
    assert r.headers.get("Date") == "Fri, 15 Jan 2027 08:00:00 GMT"


def test_default_and_per_contact_expires(registrar: Registrar) -> None:
    r = registrar.register(register(["<sip:a@h>;expires=120", "<sip:b@h>"]), EXT, "s", NOW)
    assert sorted(contacts_of(r)) == ["<sip:a@h>;expires=120", "<sip:b@h>;expires=1800"]


def test_interval_too_brief(registrar: Registrar) -> None:
    r = registrar.register(register(["<sip:a@h>"], expires=59), EXT, "s", NOW)
    assert r.status == 423 and r.headers.get("Min-Expires") == "60"
    assert registrar.location.lookup("pbxwarden/1000", NOW) == []


def test_cseq_must_increase_within_a_call_id(registrar: Registrar) -> None:
    assert registrar.register(register(["<sip:a@h>"], cseq=5), EXT, "s", NOW).status == 200
    stale = registrar.register(register(["<sip:a@h>"], cseq=5), EXT, "s", NOW)
    assert stale.status == 400 and "CSeq" in stale.reason
    # A new Call-ID (phone rebooted) may start over.
    assert (
        registrar.register(register(["<sip:a@h>"], call_id="c2", cseq=1), EXT, "s", NOW).status
        == 200
    )


def test_unregister_one_and_all(registrar: Registrar) -> None:
    registrar.register(register(["<sip:a@h>", "<sip:b@h>"], cseq=1), EXT, "s", NOW)
    r = registrar.register(register(["<sip:a@h>"], expires=0, cseq=2), EXT, "s", NOW)
    assert contacts_of(r) == ["<sip:b@h>;expires=1800"]
    bad_star = registrar.register(register(["*"], expires=10, cseq=3), EXT, "s", NOW)
    assert bad_star.status == 400
    star = registrar.register(register(["*"], expires=0, cseq=4), EXT, "s", NOW)
    assert star.status == 200 and contacts_of(star) == []


def test_max_contacts(registrar: Registrar) -> None:
    assert (
        registrar.register(register([f"<sip:{c}@h>" for c in "abc"]), EXT, "s", NOW).status == 200
    )
    over = registrar.register(register(["<sip:d@h>"], cseq=2), EXT, "s", NOW)
    assert over.status == 403 and "too many" in over.reason
    # Refreshing existing ones is still allowed.
    assert registrar.register(register(["<sip:a@h>"], cseq=3), EXT, "s", NOW).status == 200


def test_bindings_expire(registrar: Registrar) -> None:
    registrar.register(register(["<sip:a@h>"], expires=60), EXT, "s", NOW)
    assert len(registrar.location.lookup("pbxwarden/1000", NOW + 59)) == 1
    assert registrar.location.lookup("pbxwarden/1000", NOW + 60) == []
    assert registrar.location.purge(NOW + 60) == 1


def test_third_party_registration_refused(registrar: Registrar) -> None:
    r = registrar.register(register(["<sip:a@h>"], to_user="1001"), EXT, "s", NOW)
    assert r.status == 403


def test_write_back_changes_are_tracked(registrar: Registrar) -> None:
    loc = registrar.location
    registrar.register(register(["<sip:a@h>"], cseq=1), EXT, "s", NOW)
    upserts, deletes = loc.drain_changes()
    assert [u.contact for u in upserts] == ["sip:a@h"] and deletes == []
    registrar.register(register(["<sip:a@h>"], expires=0, cseq=2), EXT, "s", NOW)
    upserts, deletes = loc.drain_changes()
    assert upserts == [] and deletes == [(7, "sip:a@h")]
    assert not loc.has_changes


def make_auth() -> Authenticator:
    server = DigestServer(b"k" * 32, REALM, (Algorithm.MD5,))
    return Authenticator({REALM: server}, REALM, "pbxwarden")


def test_auth_challenge_then_success() -> None:
    auth = make_auth()
    req = register(["<sip:a@h>"])
    first = auth.authenticate(req, None, None, NOW)
    assert first.response is not None and first.response.status == 401
    challenge = choose_challenge(first.response.headers.get_all("WWW-Authenticate"))
    header = build_authorization(
        challenge, "REGISTER", "sip:pbx.example", "1000", "Right-Passw0rd", "abc", 1
    )
    req2 = register(["<sip:a@h>"], cseq=2, extra=f"Authorization: {header}")
    creds = auth.credentials(req2)
    ok = auth.authenticate(req2, creds, EXT, NOW)
    assert ok.response is None and ok.extension == EXT


def test_unknown_disabled_and_wrong_password_look_identical() -> None:
    auth = make_auth()
    first = auth.authenticate(register(), None, None, NOW)
    assert first.response is not None
    challenge = choose_challenge(first.response.headers.get_all("WWW-Authenticate"))
    outcomes = []
    for password, ext in (
        ("Wrong-Passw0rd", EXT),
        ("Right-Passw0rd", None),
        ("Right-Passw0rd", ExtensionAuth(7, "default", "1000", REALM, EXT.ha1, False)),
    ):
        header = build_authorization(
            challenge, "REGISTER", "sip:pbx.example", "1000", password, "abc", 1
        )
        req = register(cseq=2, extra=f"Authorization: {header}")
        out = auth.authenticate(req, auth.credentials(req), ext, NOW)
        assert out.response is not None
        outcomes.append(
            (out.response.status, out.response.reason, out.reason, sorted(out.response.headers))
        )
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert outcomes[0][0] == 403


def test_expired_nonce_with_right_password_is_stale() -> None:
    auth = make_auth()
    first = auth.authenticate(register(), None, None, NOW)
    assert first.response is not None
    challenge = choose_challenge(first.response.headers.get_all("WWW-Authenticate"))
    header = build_authorization(
        challenge, "REGISTER", "sip:pbx.example", "1000", "Right-Passw0rd", "abc", 1
    )
    req = register(cseq=2, extra=f"Authorization: {header}")
    late = auth.authenticate(req, auth.credentials(req), EXT, NOW + 3600)
    assert late.response is not None and late.response.status == 401
    assert "stale=true" in (late.response.headers.get("WWW-Authenticate") or "").lower()


def test_a_refresh_keeps_when_the_contact_first_registered(registrar: Registrar) -> None:
    """``registered_at`` shows an admin when a phone (or an attacker's) first appeared."""
    registrar.register(register(["<sip:a@h>"], cseq=1), EXT, "s", NOW)
    registrar.register(register(["<sip:a@h>", "<sip:b@h>"], cseq=2), EXT, "s", NOW + 300)
    bindings = {b.contact: b for b in registrar.location.lookup("pbxwarden/1000", NOW + 300)}
    assert bindings["sip:a@h"].registered_at == NOW
    assert bindings["sip:b@h"].registered_at == NOW + 300
    assert bindings["sip:a@h"].expires_at == NOW + 300 + 1800
