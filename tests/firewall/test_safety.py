"""Manual bans that would hurt the PBX itself are recognised (sans-I/O)."""

from __future__ import annotations

from pbxwarden.firewall.safety import ban_refusal, ssh_client_address


def test_addresses_the_pbx_depends_on_are_named() -> None:
    kw = {
        "allow": ["10.0.0.0/8"],
        "trunk_hosts": ["198.51.100.10"],
        "listen_hosts": ["127.0.0.1"],
        "admin_address": "203.0.113.9",
    }
    assert "firewall.allow" in (ban_refusal("10.1.2.3", **kw) or "")  # type: ignore[arg-type]
    assert "trunk" in (ban_refusal("198.51.100.10", **kw) or "")  # type: ignore[arg-type]
    assert "this machine" in (ban_refusal("127.0.0.1", **kw) or "")  # type: ignore[arg-type]
    assert ban_refusal("127.0.0.9", **kw) is None  # type: ignore[arg-type]  # another source
    assert "yourself" in (ban_refusal("203.0.113.9", **kw) or "")  # type: ignore[arg-type]
    assert ban_refusal("192.0.2.66", **kw) is None  # type: ignore[arg-type]


def test_loopback_is_fine_to_ban_when_the_pbx_does_not_listen_there() -> None:
    assert ban_refusal("127.0.0.1", listen_hosts=["192.0.2.1"]) is None
    assert ban_refusal("::1", listen_hosts=["::"]) is not None
    assert ban_refusal("127.0.0.1", listen_hosts=["0.0.0.0"]) is not None
    assert ban_refusal("192.0.2.1", listen_hosts=["192.0.2.1"]) is not None  # itself


def test_the_ssh_session_address() -> None:
    assert ssh_client_address({"SSH_CONNECTION": "203.0.113.9 52100 192.0.2.1 22"}) == (
        "203.0.113.9"
    )
    assert ssh_client_address({"SSH_CLIENT": "2001:db8::5 52100 22"}) == "2001:db8::5"
    assert ssh_client_address({"SSH_CLIENT": "garbage"}) is None
    assert ssh_client_address({}) is None
