"""The merge of several nodes' learned baselines (``guard/baseline_merge.py``).

Properties, on baselines built by random learning: ``merge`` is commutative, associative
while the rows fit the caps, independent of the order of its rows in any case; and a
history learned on two nodes, each storing its own share, merges into exactly what one
node learning every call would hold, so the drip rule's learned-runs answers (issue 13)
are the same. Then the guard itself: a guest room's calls split over two guards, each
judging with both shares, get the decisions one guard gets.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pbxwarden.guard import learn
from pbxwarden.guard.baseline import MAX_RUNS, Baseline
from pbxwarden.guard.baseline_merge import merge, untie
from pbxwarden.guard.engine import Guard
from pbxwarden.guard.state import Active, ExtState, TenantState
from tests.guard.test_learning import START, T, attempt, call, guard, guest_room

NUMBERS = [f"+6391755500{i:02d}" for i in range(8)]
DYADIC = st.integers(0, 400).map(lambda n: n / 4)  # exact in binary: sums in any order agree


def events(
    numbers: list[str], size: int = 60, least: int = 0
) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Learning as the guard does it, in order of days (days never go back)."""
    day = st.integers(0, 30)
    number = st.sampled_from(numbers)
    one = st.one_of(
        st.tuples(
            st.just("call"),
            day,
            st.integers(0, 167),
            st.sampled_from(["US", "DE", "PH"]),
            number,
            st.integers(0, 23),
        ),
        st.tuples(st.just("run"), day, number, DYADIC),
        st.tuples(st.just("spend"), day, st.integers(0, 6), DYADIC),
        st.tuples(st.just("length"), day, DYADIC),
        st.tuples(st.just("forward"), day, number),
        st.tuples(st.just("network"), day, st.sampled_from(["192.0.2.0/24", "198.51.100.0/24"])),
        st.tuples(st.just("range"), day, st.sampled_from(["+639175", "+882123"])),
        st.tuples(st.just("peak"), day, DYADIC, DYADIC),
        st.tuples(st.just("ledger"), day, number, DYADIC, DYADIC, st.booleans()),
    )
    return st.lists(one, min_size=least, max_size=size).map(
        lambda es: sorted(es, key=lambda e: e[1])
    )


def apply(ext: ExtState, tenant: TenantState, event: tuple[Any, ...]) -> None:
    base = ext.baseline
    kind, day = event[0], event[1]
    if kind == "call":
        _, _, how, country, e164, hour = event
        base.learn_call(how, country, e164, day, hour)
    elif kind == "run":
        base.learn_run(event[2], day, event[3])
    elif kind == "spend":
        base.learn_spend(event[2], event[3])
    elif kind == "length":
        base.learn_length(event[2])
    elif kind == "forward":
        base.learn_forward(event[2])
    elif kind == "network":
        base.learn_network(event[2])
    elif kind == "range":
        base.learn_range(event[2], day)
    elif kind == "peak":
        base.learn_peak(day, event[2], event[3])
    else:
        _, _, e164, minutes, cost, answered = event
        at = day * 86400.0 + 3600.0
        active = Active("acme", "1000", 1.0, 0, 3600.0, e164=e164, day=day)
        active.answered = at if answered else None
        learn.ledger(ext, tenant, active, at, minutes * 60, cost)


def learned(history: list[tuple[Any, ...]]) -> Baseline:
    ext, tenant = ExtState(Baseline(0.0)), TenantState(Baseline(0.0))
    for event in history:
        apply(ext, tenant, event)
    return ext.baseline


def same(a: Baseline, b: Baseline) -> bool:
    return a.to_json() == b.to_json() and a.network_calls == b.network_calls


def histories(size: int = 60) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Broad histories, and long ones on three numbers: numbers called back, credited
    (``learn.ledger``), runs over several days."""
    return st.one_of(events(NUMBERS, size), events(NUMBERS[:3], size, size // 2))


@settings(max_examples=100, deadline=None)
@given(histories(), histories(), histories())
def test_merge_is_commutative_and_associative(
    x: list[tuple[Any, ...]], y: list[tuple[Any, ...]], z: list[tuple[Any, ...]]
) -> None:
    a, b, c = learned(x), learned(y), learned(z)
    assert same(merge(a, b), merge(b, a))
    assert same(merge(merge(a, b), c), merge(a, merge(b, c)))
    assert same(merge(merge(a, b), c), merge(a, b, c))
    assert same(merge(a), a)  # one node: its own row, as it is
    copy = merge(a)
    for entry in copy.ledger.values():  # new objects: learning into one leaves the other
        entry.days += 1
    assert all(copy.ledger[k].days == v.days + 1 for k, v in a.ledger.items())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(events([f"+1312555{i:04d}" for i in range(100)], 120), min_size=2, max_size=4),
    st.randoms(use_true_random=False),
)
def test_over_the_caps_the_order_of_rows_does_not_matter(
    histories: list[list[tuple[Any, ...]]], rnd: Any
) -> None:
    parts = [learned(h) for h in histories]
    whole = merge(*parts)
    shuffled = list(parts)
    rnd.shuffle(shuffled)
    assert same(whole, merge(*shuffled))
    assert same(merge(parts[0], parts[1]), merge(parts[1], parts[0]))
    assert len(whole.runs) <= MAX_RUNS


def test_over_the_cap_one_offs_go_first_then_the_stalest() -> None:
    a, b = Baseline(0.0), Baseline(0.0)
    for i in range(MAX_RUNS):
        a.learn_run(f"+1312555{i:04d}", 10, 5.0)  # one-offs, day 10
    b.learn_run("+13125559999", 1, 5.0)  # a lasting number, stale
    b.learn_run("+13125559999", 3, 5.0)
    b.learn_run("+13125558888", 20, 5.0)  # a one-off, fresh
    both = merge(a, b)
    assert len(both.runs) == MAX_RUNS
    assert "+13125559999" in both.runs and "+13125558888" in both.runs
    assert both.runs["+13125559999"][2] == 2


@settings(max_examples=120, deadline=None)
@given(histories(80), st.lists(st.booleans(), min_size=80, max_size=80))
def test_learning_split_over_two_nodes_merges_into_one_places(
    history: list[tuple[Any, ...]], on_a: list[bool]
) -> None:
    """Each node learns into its merged view (refreshed after every event here: no lag)
    and keeps its own share; the shares merged are what one place learned."""
    own = {n: (Baseline(0.0), Baseline(0.0)) for n in "AB"}  # ext, tenant
    states = {n: (ExtState(Baseline(0.0)), TenantState(Baseline(0.0))) for n in "AB"}

    def refresh() -> None:
        for n, other in (("A", "B"), ("B", "A")):
            ext, tenant = states[n]
            for i, state in enumerate((ext, tenant)):
                view = merge(own[n][i], own[other][i])
                view.own = own[n][i]
                state.baseline = view

    refresh()
    for event, a in zip(history, on_a, strict=False):
        day = event[1]
        node = "A" if (day % 2 == 0 if event[0] == "peak" else a) else "B"  # a day's peaks:
        apply(*states[node], event)  # one node's (each node prices its own calls)
        refresh()
    one = ExtState(Baseline(0.0)), TenantState(Baseline(0.0))
    for event in history:
        apply(*one, event)
    for i in (0, 1):
        merged, single = merge(own["A"][i], own["B"][i]), (one[0], one[1])[i].baseline
        assert same(merged, single)
    merged, single = merge(own["A"][0], own["B"][0]), one[0].baseline
    for day, other in itertools.product(range(0, 40, 3), ["", *NUMBERS[:2]]):
        assert merged.ended_runs(day, other) == single.ended_runs(day, other)
    assert merged.talks_long() == single.talks_long()


def test_a_day_two_nodes_counted_before_they_met_is_counted_once() -> None:
    """Both nodes learned a call at 09:00 to DE on day 5 before either read the other's
    row: the later name takes its count back, once, and both views agree."""
    one = Baseline(0.0)
    shares = {n: Baseline(0.0) for n in "ab"}
    for n in "ab":
        view = merge(shares[n])
        view.own = shares[n]
        view.learn_call(9, "DE", "+493012345678", 5, 9)
        view.learn_range("+493012", 5)
        one.learn_call(9, "DE", "+493012345678", 5, 9)
        one.learn_range("+493012", 5)
    a, b = shares["a"], shares["b"]
    assert merge(a, b).hour_days[9] == 2  # counted twice: each node's view was alone
    assert not untie(a, [("b", merge(b))], "a")  # the earlier name keeps its count
    assert untie(b, [("a", merge(a))], "b")
    assert not untie(b, [("a", merge(a))], "b")  # once: the next refresh finds no tie
    both = merge(a, b)
    assert both.hour_days == one.hour_days and both.hour_last == one.hour_last
    assert both.country_days == one.country_days == {"DE": [1, 5]}
    assert both.ranges == one.ranges
    assert both.calls == 2 and both.countries == {"DE": 2}  # calls are not days: both count
    # the day after, b's share counts again as usual
    view = merge(b, a)
    view.own = b
    view.learn_call(9, "DE", "+493012345678", 6, 9)
    assert b.hour_days[9] == 1 and b.hour_last[9] == 6
    assert merge(a, b).hour_days[9] == 2 and merge(a, b).country_days["DE"] == [2, 6]


def exchange(source: Guard, target: Guard, names: tuple[str, str] = ("a", "b")) -> None:
    """What a refresh does, without the database: ``target`` (node ``names[1]``) merges
    the rows of ``source`` (node ``names[0]``)."""
    rows: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for tenant, number, data in source.export_baselines(everything=True):
        rows.setdefault((tenant, number), []).append((names[0], data))
    target.adopt_baselines(rows, names[1])


def merging(**policy: object) -> Guard:
    g = guard(**policy)
    g.merging = True
    return g


def guest_stay(g: Guard) -> list[bool]:
    guest = "+639175550202"
    return [call(g, attempt(guest, T + day * DAY, ext="3000"), 38).allow for day in range(4)]


DAY = 86400.0


def test_a_guest_room_learned_on_two_nodes_is_judged_as_on_one() -> None:
    """Guests 0-1 phoned home through node A, guests 2-3 through node B: on B, which has
    A's share, the line is a guest room (the higher bar, refused at the fourth night),
    as on one node; without A's share, B's line looks new (six days of history): the
    drip is not even followed, and the stay's four long calls all go through."""
    alone = guard(allow_countries=["PH"])
    guest_room(alone, "3000")
    expected = guest_stay(alone)
    assert expected == [True, True, True, False]

    a, b = merging(allow_countries=["PH"]), merging(allow_countries=["PH"])
    for k in range(4):
        g = a if k < 2 else b
        for night in range(3):
            t = START + (3 * k + night) * DAY + 3600
            assert call(g, attempt(f"+63917555{k:04d}", t, ext="3000"), 15).allow
    unmerged = merging(allow_countries=["PH"])
    exchange(b, unmerged)  # B's share only
    exchange(a, b)
    runs = b.baseline("acme", "3000")
    assert runs is not None and runs.own is not None and len(runs.runs) == 4
    assert len(runs.own.runs) == 2  # B stores only its own share
    assert guest_stay(b) == expected
    assert guest_stay(unmerged) == [True, True, True, True]


def test_a_lasting_number_split_over_two_nodes_still_counts() -> None:
    """A number called on day 0 through A and on day 12 through B lasts (its run spans
    12 days): no guest room, the desk's bar, as on one node."""
    alone = guard(allow_countries=["PH"])
    guest_room(alone, "3000", lasting="+13125550188")
    expected = guest_stay(alone)
    assert expected[:2] == [True, False]

    a, b = merging(allow_countries=["PH"]), merging(allow_countries=["PH"])
    for k in range(4):
        for night in range(3):
            t = START + (3 * k + night) * DAY + 3600
            assert call(a if k % 2 else b, attempt(f"+63917555{k:04d}", t, ext="3000"), 15).allow
    assert call(a, attempt("+13125550188", START + 2 * 3600, ext="3000"), 3).allow
    assert call(b, attempt("+13125550188", START + 12 * DAY + 2 * 3600, ext="3000"), 3).allow
    exchange(a, b)
    assert guest_stay(b) == expected


def test_one_node_keeps_no_share() -> None:
    g = guard()
    call(g, attempt("+12025550143", T), 3)
    base = g.baseline("acme", "1000")
    assert base is not None and base.own is None
