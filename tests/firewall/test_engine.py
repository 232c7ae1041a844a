"""Firewall decisions on a fake clock: floods, brute force, scanners, escalation, allow lists."""

from __future__ import annotations

from pbxwarden.firewall.engine import Ban, Firewall, FirewallSettings, Verdict
from pbxwarden.sip.message import Request, parse_message

T0 = 1_800_000_000.0


def options(agent: str | None) -> Request:
    ua = f"User-Agent: {agent}\r\n" if agent else ""
    msg = parse_message(
        (
            "OPTIONS sip:100@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.7;branch=z9hG4bKx\r\n"
            "From: <sip:100@pbx>;tag=1\r\nTo: <sip:100@pbx>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
            f"{ua}Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Request)
    return msg


def test_flood_is_banned_and_then_dropped_before_parsing() -> None:
    fw = Firewall(FirewallSettings(rate_limit=20, rate_window=2.0))
    verdicts = [fw.check_source("203.0.113.7", T0 + i * 0.01) for i in range(25)]
    assert verdicts[:20] == [Verdict.ALLOW] * 20
    assert verdicts[20] is Verdict.DROP
    assert "203.0.113.7" in fw.bans and fw.bans["203.0.113.7"].reason == "request flood"
    assert fw.check_source("203.0.113.7", T0 + 60) is Verdict.DROP
    # Another source is not affected.
    assert fw.check_source("198.51.100.1", T0 + 1) is Verdict.ALLOW
    events = fw.drain_events()
    assert [e.kind for e in events] == ["ban"]


def test_a_phone_that_registered_may_burst_but_not_flood() -> None:
    """A desk phone subscribing to its 200 busy lamps at boot (twice 200 requests with
    the challenges) is not banned once it registered with a right password; past the
    proven limit it is, and a stranger's burst is banned at the ordinary limit."""
    fw = Firewall(FirewallSettings(rate_limit=100, proven_rate_limit=1000, rate_window=2.0))
    fw.auth_succeeded("192.0.2.20", T0)
    burst = [fw.check_source("192.0.2.20", T0 + 1 + i * 0.002) for i in range(400)]
    assert burst == [Verdict.ALLOW] * 400 and not fw.bans
    flood = [fw.check_source("192.0.2.20", T0 + 1.8 + i * 0.0001) for i in range(700)]
    assert Verdict.DROP in flood and fw.bans["192.0.2.20"].reason == "request flood"
    stranger = [fw.check_source("198.51.100.9", T0 + 1 + i * 0.002) for i in range(400)]
    assert stranger[100] is Verdict.DROP and "198.51.100.9" in fw.bans
    fw.auth_succeeded("192.0.2.30", T0)  # an hour later the login no longer counts
    late = [fw.check_source("192.0.2.30", T0 + 3700 + i * 0.002) for i in range(200)]
    assert Verdict.DROP in late


def test_steady_traffic_below_the_limit_is_never_banned() -> None:
    fw = Firewall(FirewallSettings(rate_limit=20, rate_window=2.0))
    # 9 requests per second for a minute: 18 per window, under 20 even with decay.
    for i in range(540):
        assert fw.check_source("192.0.2.10", T0 + i / 9) is Verdict.ALLOW
    assert not fw.bans


def test_brute_force_ban_escalates_and_expires() -> None:
    fw = Firewall(FirewallSettings(auth_failure_limit=5, ban_steps=(600.0, 3600.0, 86400.0)))
    now = T0
    durations = []
    for _round in range(4):
        for _ in range(5):
            fw.auth_failed("203.0.113.9", "1000", now)
        ban = fw.bans["203.0.113.9"]
        durations.append(ban.until - now)
        assert fw.check_source("203.0.113.9", ban.until - 1) is Verdict.DROP
        now = ban.until + 1
        assert fw.check_source("203.0.113.9", now) is Verdict.ALLOW
    assert durations == [600.0, 3600.0, 86400.0, 86400.0]
    kinds = [e.kind for e in fw.drain_events()]
    assert kinds.count("ban") == 4 and kinds.count("unban") == 4


def test_success_resets_the_failure_count() -> None:
    fw = Firewall(FirewallSettings(auth_failure_limit=3))
    fw.auth_failed("192.0.2.5", "1000", T0)
    fw.auth_failed("192.0.2.5", "1000", T0 + 1)
    fw.auth_succeeded("192.0.2.5")
    fw.auth_failed("192.0.2.5", "1000", T0 + 2)
    assert not fw.bans


def test_failures_outside_the_window_do_not_add_up() -> None:
    fw = Firewall(FirewallSettings(auth_failure_limit=3, auth_failure_window=60))
    for i in range(10):
        fw.auth_failed("192.0.2.5", "1000", T0 + i * 31)
    assert not fw.bans


def test_distributed_brute_force_alerts_once() -> None:
    fw = Firewall(FirewallSettings(distributed_sources=4, auth_failure_limit=100))
    for i in range(8):
        fw.auth_failed(f"203.0.113.{i}", "1000", T0 + i)
    alerts = [e for e in fw.drain_events() if e.kind == "distributed-brute-force"]
    assert len(alerts) == 1 and alerts[0].extension == "1000"
    assert "4 sources" in alerts[0].reason


def test_scanner_user_agents_are_banned() -> None:
    fw = Firewall()
    assert fw.inspect(options("friendly-scanner"), "203.0.113.50", T0) is Verdict.DROP
    assert fw.inspect(options("sipcli/v1.8"), "203.0.113.51", T0) is Verdict.DROP
    assert fw.inspect(options("VaxSIPUserAgent/3.1"), "203.0.113.52", T0) is Verdict.DROP
    assert fw.inspect(options("Yealink SIP-T46S 66.86.0.15"), "192.0.2.1", T0) is Verdict.ALLOW
    assert fw.inspect(options(None), "192.0.2.2", T0) is Verdict.ALLOW
    assert set(fw.bans) == {"203.0.113.50", "203.0.113.51", "203.0.113.52"}


def test_allowlisted_networks_are_never_banned() -> None:
    fw = Firewall(
        FirewallSettings(
            rate_limit=5, auth_failure_limit=2, allow=("198.51.100.0/24", "2001:db8::/32")
        )
    )
    for i in range(50):
        assert fw.check_source("198.51.100.20", T0 + i * 0.001) is Verdict.ALLOW
        fw.auth_failed("2001:db8::5", "1000", T0)
    assert fw.inspect(options("friendly-scanner"), "198.51.100.20", T0) is Verdict.ALLOW
    assert not fw.bans


def test_reject_mode() -> None:
    fw = Firewall(FirewallSettings(reject_banned=True))
    fw.ban("203.0.113.3", "manual", T0)
    assert fw.check_source("203.0.113.3", T0 + 1) is Verdict.REJECT


def test_loaded_bans_replace_memory_and_keep_escalation() -> None:
    fw = Firewall(FirewallSettings(auth_failure_limit=1, ban_steps=(10.0, 100.0)))
    fw.ban("203.0.113.4", "x", T0)
    fw.drain_events()
    # The store no longer has it (an admin removed it): unbanned, with an event.
    fw.load([Ban("192.0.2.99", T0 + 50, "manual", 1, T0)], T0 + 1)
    assert set(fw.bans) == {"192.0.2.99"}
    assert [(e.kind, e.reason) for e in fw.drain_events()] == [
        ("unban", "removed by an administrator")
    ]
    # A ban remembered from the store makes the next one longer.
    fw.load([Ban("203.0.113.8", T0 - 5, "old", 1, T0 - 20)], T0)
    fw.auth_failed("203.0.113.8", "1000", T0 + 1)
    assert fw.bans["203.0.113.8"].until == T0 + 1 + 100.0


def test_memory_is_bounded_under_spoofed_sources() -> None:
    fw = Firewall(FirewallSettings(max_tracked=1000, auth_failure_limit=1000))
    for i in range(20_000):
        address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        fw.check_source(address, T0)
        fw.auth_failed(address, str(1000 + i), T0)
    assert len(fw._current) <= 1000
    assert len(fw._source_failures) <= 1001
    assert len(fw._extension_sources) <= 1001


def register_as(user: str) -> Request:
    msg = parse_message(
        (
            f"REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.7;branch=z9hG4bK{user}\r\n"
            f"From: <sip:{user}@pbx>;tag=1\r\nTo: <sip:{user}@pbx>\r\nCall-ID: c{user}\r\n"
            "CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Request)
    return msg


def test_extension_enumeration_is_banned() -> None:
    fw = Firewall(FirewallSettings(identity_limit=20, identity_window=60))
    verdicts = [
        fw.inspect(register_as(str(1000 + i)), "203.0.113.7", T0 + i * 0.1) for i in range(25)
    ]
    assert verdicts[:20] == [Verdict.ALLOW] * 20 and verdicts[20] is Verdict.DROP
    assert "extension enumeration" in fw.bans["203.0.113.7"].reason


def test_one_phone_or_a_slow_trickle_is_not_enumeration() -> None:
    fw = Firewall(
        FirewallSettings(identity_limit=20, identity_window=60, allow=("198.51.100.0/24",))
    )
    for i in range(500):
        assert fw.inspect(register_as("1000"), "192.0.2.1", T0 + i) is Verdict.ALLOW
    for i in range(100):  # a new identity every 5 s: 12 per minute
        assert fw.inspect(register_as(str(2000 + i)), "192.0.2.2", T0 + i * 5) is Verdict.ALLOW
    for i in range(100):  # allow-listed office PBX
        assert fw.inspect(register_as(str(3000 + i)), "198.51.100.9", T0) is Verdict.ALLOW
    assert not fw.bans


def test_trusted_sources_are_capped_but_never_banned() -> None:
    fw = Firewall(
        FirewallSettings(rate_limit=10, trusted_rate_limit=40, allow=("198.51.100.0/24",))
    )
    verdicts = [fw.check_source("198.51.100.7", T0 + i * 0.001) for i in range(60)]
    assert verdicts[:40] == [Verdict.ALLOW] * 40
    assert set(verdicts[40:]) == {Verdict.DROP}
    assert not fw.bans  # dropped, not banned
    assert fw.check_source("198.51.100.7", T0 + 10) is Verdict.ALLOW


def test_a_ban_from_another_node_is_adopted_without_an_event() -> None:
    fw = Firewall(FirewallSettings(allow=("10.0.0.0/8",)))
    made: list[Ban] = []
    fw.on_ban = made.append
    own = fw.ban("192.0.2.1", "flood", 100.0)
    assert made == [own]
    fw.drain_events()
    other = Ban("192.0.2.2", 700.0, "flood on node b", 1, 100.0)
    assert fw.adopt(other, 101.0)
    assert fw.check_source("192.0.2.2", 102.0) is Verdict.DROP
    assert not fw.adopt(other, 101.0)  # already in force
    assert not fw.adopt(Ban("192.0.2.2", 650.0, "shorter", 1, 101.0), 102.0)
    assert not fw.adopt(Ban("10.1.2.3", 700.0, "allow-listed", 1, 100.0), 101.0)
    assert not fw.adopt(Ban("192.0.2.3", 100.0, "ended", 1, 50.0), 101.0)
    assert fw.drain_events() == [] and made == [own]  # the making node announces it
    # Adopted bans count for escalation like our own.
    fw.unban("192.0.2.2")
    again = fw.ban("192.0.2.2", "flood", 200.0)
    assert again is not None and again.level == 2


def test_ban_changes_are_tracked_for_the_registrar_workers_only_when_asked() -> None:
    fw = Firewall(FirewallSettings(allow=("10.0.0.0/8",)))
    fw.ban("192.0.2.1", "manual", 100.0)
    assert fw.changed is None  # one process: nothing kept
    fw.changed = set()
    fw.ban("192.0.2.2", "flood", 100.0)
    fw.ban("10.0.0.1", "never", 100.0)  # allow-listed: no ban, no change
    fw.adopt(Ban("192.0.2.3", 50_000.0, "another node's", 1, 100.0), 100.0)
    fw.unban("192.0.2.1")
    assert fw.changed == {"192.0.2.1", "192.0.2.2", "192.0.2.3"}
    fw.changed = set()
    fw.check_source("192.0.2.2", 10_000.0)  # expired on sight
    assert fw.changed == {"192.0.2.2"}
    fw.changed = set()
    same = fw.bans["192.0.2.3"]
    fw.load([same, Ban("192.0.2.4", 20_000.0, "the CLI's", 1, 10_000.0)], 10_000.0)
    assert fw.changed == {"192.0.2.4"}  # the unchanged one is not sent again
