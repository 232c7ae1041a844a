"""Attempt rates for the whole PBX against a real redis-server: two nodes' attempts
together never pass an extension's calls per minute, per hour, or to one prefix in 10
minutes; a refused attempt counts nowhere; the windows slide; Redis down refuses at
once (or judges locally). Then two nodes' guards: the limit the guard applies on one
node holds for both, with the reason."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pbxwarden.cluster.calls import DOWN
from pbxwarden.guard.engine import Guard, GuardConfig, TenantPolicy
from pbxwarden.guard.rates import RateTable
from pbxwarden.guard.shared import Admission, Ask
from pbxwarden.pbx.numbers import classify
from pbxwarden.pbx.policy import CallAttempt
from tests.helpers import free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis
pytest.importorskip("redis")

from pbxwarden.cluster.rates import SharedAttempts  # noqa: E402

TOGETHER = "on the PBX's nodes together"


def ask(
    per_minute: int = 100, per_hour: int = 1000, prefix: str = "", same: int = 100, calls: int = 100
) -> Ask:
    return Ask(calls, 1000, per_minute, per_hour, prefix, same)


def nodes(url: str) -> tuple[SharedAttempts, SharedAttempts]:
    return SharedAttempts(url, 0.5, "t:", "a"), SharedAttempts(url, 0.5, "t:", "b")


def test_two_nodes_together_make_exactly_the_calls_per_minute(redis_server: RedisServer) -> None:
    a, b = nodes(redis_server.url)
    now = time.time()
    answers = [(a, b)[i % 2].admit("acme", "1000", ask(per_minute=3), now + i) for i in range(8)]
    assert answers[:3] == [None, None, None], answers
    assert all(x is not None for x in answers[3:]), answers
    refused = answers[3] or Admission()
    assert refused.status == 403 and refused.rule == "limit"
    assert refused.refused == (
        f"extension 1000 made 3 costly calls in the last minute {TOGETHER} (limit 3)"
    ), refused
    assert a.admit("acme", "1001", ask(per_minute=3), now + 8) is None  # its own count
    # the first attempt (at now) leaves the minute at now + 60: one more, on either node
    assert b.admit("acme", "1000", ask(per_minute=3), now + 60) is None
    assert a.admit("acme", "1000", ask(per_minute=3), now + 60.5) is not None
    assert a.rate_refused + b.rate_refused == 6
    a.close()
    b.close()


def test_the_hour_and_the_same_prefix_limits_hold_for_both_nodes(
    redis_server: RedisServer,
) -> None:
    a, b = nodes(redis_server.url)
    now = time.time()
    hourly = ask(per_minute=2, per_hour=5)
    for i in range(5):  # one attempt a minute: never the minute's limit
        assert (a, b)[i % 2].admit("acme", "1000", hourly, now + 61 * i) is None
    refused = b.admit("acme", "1000", hourly, now + 61 * 5)
    assert refused == Admission(
        f"extension 1000 made 5 costly calls in the last hour {TOGETHER} (limit 5)", 403
    ), refused
    assert a.admit("acme", "1000", hourly, now + 3600.5) is None

    dear = ask(prefix="+44909", same=2)
    assert a.admit("acme", "2000", dear, now) is None
    assert b.admit("acme", "2000", dear, now + 1) is None
    refused = a.admit("acme", "2000", dear, now + 2)
    assert refused == Admission(
        f"extension 2000 called the +44909 prefix 2 times in 10 minutes {TOGETHER} (limit 2)", 403
    ), refused
    assert b.admit("acme", "2000", ask(prefix="+44908", same=2), now + 3) is None
    assert b.admit("acme", "2000", ask(same=0), now + 4) is None  # not costly: not counted
    assert b.admit("acme", "2001", dear, now + 5) is None  # another extension's own
    assert a.admit("acme", "2000", dear, now + 600.5) is None  # the first left the window
    a.close()
    b.close()


def test_a_refused_attempt_counts_nowhere_and_call_limits_still_hold(
    redis_server: RedisServer,
) -> None:
    a, b = nodes(redis_server.url)
    now = time.time()
    limits = {"per_minute": 3, "same": 1}
    assert a.admit("acme", "1000", ask(prefix="+44909", **limits), now) is None
    for _ in range(5):  # refused by the prefix: not counted in the minute
        assert b.admit("acme", "1000", ask(prefix="+44909", **limits), now + 1) is not None
    assert b.admit("acme", "1000", ask(prefix="+44908", **limits), now + 2) is None
    assert a.admit("acme", "1000", ask(**limits), now + 3) is None
    assert b.admit("acme", "1000", ask(**limits), now + 4) is not None  # 3 in the minute

    # concurrency, as RESERVE_CALL: one call at a time, the second refused busy (486)
    assert a.admit("acme", "3000", ask(calls=1), now) is None
    busy = b.admit("acme", "3000", ask(calls=1), now)
    assert busy == Admission(
        f"extension 3000 has 1 costly calls in progress {TOGETHER} (limit 1)", 486
    )
    a.started("acme", "3000", 1, now)
    a.ended(1)
    assert b.admit("acme", "3000", ask(calls=1), now + 1) is None
    a.close()
    b.close()


def test_redis_down_refuses_attempts_at_once_or_judges_them_locally() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    closed = SharedAttempts(url, 0.3, "t:", "a")
    started = time.monotonic()
    assert closed.admit("acme", "1000", ask(), time.time()) == Admission(DOWN, 503)
    assert closed.admit("acme", "1000", ask(), time.time()) == Admission(
        DOWN, 503
    )  # no 2nd timeout
    assert time.monotonic() - started < 1.0
    local = SharedAttempts(url, 0.3, "t:", "b", fail_closed=False)
    assert local.admit("acme", "1000", ask(), time.time()) is None
    closed.close()
    local.close()


# -- two nodes' guards ------------------------------------------------------------------

RATES = RateTable({"currency": "USD", "prefixes": {"+1202555": 0.01}})


def guard(shared: SharedAttempts, **policy: Any) -> Guard:
    g = Guard(GuardConfig(tenants={"acme": TenantPolicy(**policy)}), rates=RATES)
    g.shared, g.shared_attempts = shared, shared
    return g


def attempt(at: float, dialed: str = "2025550143", ext: str = "1000") -> CallAttempt:
    return CallAttempt(
        "acme", ext, ext, dialed, "external", "udp:192.0.2.1:5060", at, classify(dialed, "US")
    )


def test_two_guards_calls_per_minute_hold_for_both_nodes_with_the_reason(
    redis_server: RedisServer,
) -> None:
    a, b = nodes(redis_server.url)
    guards = guard(a, calls_per_minute=4), guard(b, calls_per_minute=4)
    now = time.time()
    allowed = []
    for i in range(10):  # alternately through each node; each alone would allow 4 (8)
        g, call = guards[i % 2], attempt(now + i)
        decision = g.authorize(call)
        if decision.allow:
            allowed.append(i)
            g.on_call_start(call, i)
            g.on_call_end(i, now + i + 0.5)
        else:
            last = decision
    assert allowed == [0, 1, 2, 3], allowed
    assert last.status == 403 and last.rule == "limit"
    assert f"made 4 costly calls in the last minute {TOGETHER} (limit 4)" in last.reasons[0]
    alert = guards[1].outbox[-1]
    assert alert.rule == "limit" and TOGETHER in alert.reasons[0]
    assert guards[0].authorize(attempt(now + 10, ext="2000")).allow  # another extension
    a.close()
    b.close()


# -- dear ranges: the spread and test-call patterns over two nodes ----------------------

T = 1_840_874_400.0  # a Monday 10:00 in the tenant's zone (simulated time)
CUBA = {"allow_countries": ["CU"], "allow_high_risk": True, "learning_days": 0}


def range_guard(shared: SharedAttempts | None) -> Guard:
    policy = TenantPolicy(business_hours=["mon-fri 08:00-18:00"], **CUBA)  # type: ignore[arg-type]
    g = Guard(GuardConfig(tenants={"acme": policy}))
    g.shared = g.shared_attempts = shared
    return g


def cuba(number: str, at: float, ext: str) -> CallAttempt:
    return CallAttempt(
        "acme", ext, ext, number, "external", "udp:192.0.2.10:5060", at, classify(number, "US")
    )


def spread_over(guards: tuple[Guard, Guard], count: int) -> list[bool]:
    """Extensions 3000... each calling a new number of +535123, 150 s apart, through
    the two nodes in turn; answered calls stay up."""
    allowed = []
    for k in range(count):
        g, call = guards[k % 2], cuba(f"+535123{k:04d}", T + k * 150, str(3000 + k))
        decision = g.authorize(call)
        allowed.append(decision.allow)
        if decision.allow:
            g.on_call_start(call, 100 + k)
            g.on_call_answer(100 + k, call.at)
    return allowed


def test_a_spread_into_one_range_over_both_nodes_is_found_and_refused_on_both(
    redis_server: RedisServer,
) -> None:
    alone = range_guard(None), range_guard(None)
    assert spread_over(alone, 5) == [True] * 5  # each node alone sees 2 or 3 extensions
    a, b = nodes(redis_server.url)
    guards = range_guard(a), range_guard(b)
    assert spread_over(guards, 5) == [True, True, True, True, False]
    refused = guards[0].outbox[-1]
    assert refused.rule == "range", refused
    assert (
        f"5 extensions of tenant acme called 5 numbers in the range +535123 in the last hour "
        f"{TOGETHER}" in refused.reasons[0]
    ), refused.reasons
    assert {r for r, _ in guards[0].police(T + 700)} == {100, 102}  # its own calls cut
    # node b, which saw 2 of them, finds it with what Redis told it of a's
    later = guards[1].authorize(cuba("+5351239998", T + 800, "3008"))
    assert not later.allow and later.rule == "range"
    assert f"in the last hour {TOGETHER}" in later.reasons[0], later.reasons
    # and a node that saw none of it refuses the range found pumped
    c = SharedAttempts(redis_server.url, 0.5, "t:", "c")
    fresh = range_guard(c).authorize(cuba("+5351239999", T + 900, "3009"))
    assert not fresh.allow and fresh.rule == "range"
    assert "the range +535123 was found pumped (" in fresh.reasons[0], fresh.reasons
    assert f"{TOGETHER}; its calls are refused for 24 hours" in fresh.reasons[0]
    c.close()
    # the attempt refused after all counts nowhere: not in its extension's rates
    client = a.client
    assert client.zcard("t:attempts:acme/3004") == 0
    assert client.zcard("t:range:acme/+535123") == 4
    a.close()
    b.close()


def test_a_test_call_on_one_node_then_a_pump_on_the_other_is_refused(
    redis_server: RedisServer,
) -> None:
    a, b = nodes(redis_server.url)
    guards = range_guard(a), range_guard(b)
    test = cuba("+5351234567", T, "1000")
    assert guards[0].authorize(test).allow
    guards[0].on_call_start(test, 1)
    guards[0].on_call_answer(1, T)
    guards[0].on_call_end(1, T + 30)  # a short answered call: the test
    pump = guards[1].authorize(cuba("+5351230001", T + 5 * 3600, "1001"))
    assert not pump.allow and pump.rule == "range", pump
    assert "a short test call to +5351234567 from extension 1000" in pump.reasons[0]
    assert "test-call-then-pump" in pump.reasons[0]
    a.close()
    b.close()
