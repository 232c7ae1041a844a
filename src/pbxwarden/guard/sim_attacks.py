"""The attacks the simulator injects: what toll fraud does, not what the guard expects.

Each attack picks a victim its shape needs (a tenant that allows the country it
pumps, an extension with its own number to divert), starts on a random day after
the first week, and is scored by the money it made (answered minutes x the rate
table's price) against what it would have made with no guard at all. An attack may
be stopped at any point: the loss up to then is what counts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from pbxwarden.guard.sim_world import Extension, Tenant

if TYPE_CHECKING:
    from pbxwarden.guard.simulate import AttackResult, Simulation

HOUR = 3600.0
DAY = 86400.0
IRSF = (("+88216", 12), ("+537", 10), ("+3712", 11), ("+682", 8), ("+252", 11))


def plan(sim: Simulation, rng: random.Random) -> None:
    for name in sim.attack_names:
        ATTACKS[name](sim, rng, name)


def _rate(sim: Simulation, tenant: Tenant, country: str) -> float:
    dest = sim.numbers(sim.make(country, "mobile"), tenant.home)
    return sim.guard.rates.per_minute(dest) if dest is not None else 0.0


def _dearest(sim: Simulation, tenant: Tenant, below: float = 1e9) -> tuple[str, float]:
    best, rate = "", -1.0
    for country in tenant.policy.allow_countries:
        r = _rate(sim, tenant, country)
        if rate < r <= below:
            best, rate = country, r
    return best, rate


def _victim(
    sim: Simulation,
    rng: random.Random,
    name: str,
    tenant_ok: Callable[[Tenant], float],
    ext_ok: Callable[[Extension], bool] = lambda e: True,
) -> tuple[Tenant, Extension, AttackResult]:
    """The tenant scoring highest on ``tenant_ok`` (ties at random), one of its
    extensions not attacked yet; one attack per extension, so each alert has one owner."""
    from pbxwarden.guard.simulate import AttackResult

    ranked = sorted(sim.tenants, key=lambda t: (tenant_ok(t), rng.random()), reverse=True)
    for tenant in ranked:
        exts = [
            e
            for e in tenant.extensions[1:]
            if ext_ok(e) and (tenant.name, e.number) not in sim.attack_owner
        ]
        if exts:
            ext = rng.choice(exts)
            break
    else:
        tenant = ranked[0]
        ext = tenant.extensions[-1]
    result = AttackResult(name, tenant.name, ext.number)
    sim.results.append(result)
    _own(sim, result, tenant, ext)
    return tenant, ext, result


def _own(sim: Simulation, result: AttackResult, tenant: Tenant, ext: Extension) -> None:
    sim.attack_owner[(tenant.name, ext.number)] = result
    result.extensions.add(ext.number)


def _day(
    sim: Simulation, rng: random.Random, tenant: Tenant, hour: float, weekday: int | None = None
) -> float:
    """A random day after the first week (a given weekday if asked), ``hour`` local."""
    last = max(8, sim.days - 5)
    days = [d for d in range(8, last + 1)]
    if weekday is not None:
        days = [
            d
            for d in days
            if tenant.policy.local(sim.local_midnight(tenant, d) + 12 * HOUR).weekday() == weekday
        ] or days
    day = rng.choice(days)
    return sim.local_midnight(tenant, day) + hour * HOUR


def _attacker(n: int) -> str:
    return f"udp:203.0.113.{n % 250 + 1}:5060"


def _calls(
    sim: Simulation,
    tenant: Tenant,
    ext: Extension,
    number: str,
    result: AttackResult,
    minutes: float,
    source: str,
) -> Callable[[float], None]:
    def fire(now: float) -> None:
        sim.call(
            tenant.name,
            ext.number,
            ext.number,
            number,
            "external",
            now,
            minutes,
            result,
            source=source,
        )

    return fire


# -- diversions -----------------------------------------------------------------------


def _diversion(
    sim: Simulation,
    rng: random.Random,
    name: str,
    target: Callable[[Tenant], str],
    tenant_ok: Callable[[Tenant], float],
    probe_from: Callable[[Tenant], str],
) -> None:
    tenant, ext, result = _victim(sim, rng, name, tenant_ok, lambda e: e.did is not None)
    did = ext.did or tenant.did
    t0 = _day(sim, rng, tenant, rng.uniform(19.0, 23.0))
    result.started = t0 - 20 * HOUR
    # "I think I dialled the wrong number, what number did I call?": to the victim's number
    for _ in range(rng.randint(2, 3)):
        when = t0 - rng.uniform(2.0, 20.0) * HOUR
        sim.at(when, sim.inbound(tenant, ext, probe_from(tenant), did, rng.uniform(15, 40)))
    number = target(tenant)
    sim.at(t0, sim.forward_change(ext, number, result))
    # the phone's own web page also diverts (a 3xx): the calls come whatever the PBX said
    for k in range(40):
        caller = sim.make(tenant.home, "mobile")
        sim.at(
            t0 + 600 + k * 900,
            sim.inbound(
                tenant, ext, caller, did, None, forward_to=number, result=result, minutes=10.0
            ),
        )


def _premium(sim: Simulation, rng: random.Random, name: str) -> None:
    _diversion(
        sim,
        rng,
        name,
        lambda t: sim.make(t.home, "premium"),
        lambda t: 1.0,
        lambda t: rng.choice(["anonymous", sim.make("GB" if t.home != "GB" else "FR", "mobile")]),
    )


def _abroad(sim: Simulation, rng: random.Random, name: str) -> None:
    def ok(t: Tenant) -> float:
        return _dearest(sim, t)[1] if t.policy.allow_international_forwarding else -1.0

    _diversion(
        sim,
        rng,
        name,
        lambda t: sim.make(_dearest(sim, t)[0] or "LV", "mobile"),
        ok,
        lambda t: rng.choice(["anonymous", sim.make(_dearest(sim, t)[0] or "GB", "mobile")]),
    )


def _quiet(sim: Simulation, rng: random.Random, name: str) -> None:
    def ok(t: Tenant) -> float:
        return _dearest(sim, t)[1] if t.policy.allow_international_forwarding else -1.0

    _diversion(
        sim,
        rng,
        name,
        lambda t: sim.make(_dearest(sim, t)[0] or "LV", "mobile"),
        ok,
        lambda t: sim.make(t.home, "mobile"),  # probes from national mobiles never seen
    )


def _hairpin(sim: Simulation, rng: random.Random, name: str) -> None:
    tenant, ext, result = _victim(sim, rng, name, lambda t: 1.0, lambda e: e.did is not None)
    t0 = _day(sim, rng, tenant, rng.uniform(20.0, 23.0))
    result.started = t0
    target = sim.make.in_range("+88216", 12)
    for k in range(30):
        caller = sim.make(tenant.home, "mobile")
        sim.at(
            t0 + k * 300,
            sim.inbound(
                tenant,
                ext,
                caller,
                ext.did or tenant.did,
                None,
                forward_to=target,
                result=result,
                minutes=15.0,
            ),
        )


# -- a stolen password ------------------------------------------------------------------


def _irsf(sim: Simulation, rng: random.Random, name: str) -> None:
    tenant, ext, result = _victim(sim, rng, name, lambda t: 1.0)
    t0 = _day(sim, rng, tenant, rng.uniform(0.5, 4.0))
    result.started = t0
    for k in range(60):
        number = sim.make.in_range(*IRSF[k % len(IRSF)])
        sim.at(t0 + k * 20, _calls(sim, tenant, ext, number, result, 30.0, _attacker(k)))


def _burst(sim: Simulation, rng: random.Random, name: str) -> None:
    tenant, ext, result = _victim(sim, rng, name, lambda t: _dearest(sim, t)[1])
    country = _dearest(sim, tenant)[0] or "LV"
    t0 = _day(sim, rng, tenant, rng.uniform(9.0, 14.0), weekday=5)
    result.started = t0
    first = sim.make(country, "mobile")
    for k in range(120):
        number = sim.make.in_range(first[:-4], len(first) - 1)
        sim.at(t0 + k * 120, _calls(sim, tenant, ext, number, result, 45.0, _attacker(7)))


def _drip(sim: Simulation, rng: random.Random, name: str) -> None:
    """One long call a day, in office hours, to a country the extension already calls."""

    def ext_ok(e: Extension) -> bool:  # a country of 0.30-0.52 a minute, like PH
        return e.role != "agent" and any(
            0.3 <= _rate(sim, tenant_of(e), c) <= 0.52 for c in e.countries
        )

    def tenant_of(e: Extension) -> Tenant:
        return sim.by_name[e.tenant]

    def ok(t: Tenant) -> float:
        return _dearest(sim, t, below=0.55)[1] if any(ext_ok(e) for e in t.extensions) else -1

    tenant, ext, result = _victim(sim, rng, name, ok, ext_ok)
    # the dearest country it calls at which one 38-minute call stays under the budget
    country = max(
        ext.countries or ("LV",),
        key=lambda c: (_rate(sim, tenant, c) <= 0.52, _rate(sim, tenant, c)),
    )
    number = sim.make(country, "mobile")
    t0 = _day(sim, rng, tenant, 10.0, weekday=0)
    result.started = t0
    for day in range(14):
        when = t0 + day * DAY + rng.uniform(0.0, 5.0) * HOUR
        if tenant.policy.local(when).weekday() < 5:
            sim.at(when, _calls(sim, tenant, ext, number, result, 38.0, ext.source))


def _wangiri(sim: Simulation, rng: random.Random, name: str) -> None:
    """One ring from a foreign number to many extensions; some call back."""

    def ok(t: Tenant) -> float:
        dialled = sum(1 for e in t.extensions if e.did is not None)
        return _dearest(sim, t)[1] if dialled >= 12 else -1.0

    tenant, _, result = _victim(sim, rng, name, ok, lambda e: e.did is not None)
    country = _dearest(sim, tenant)[0] or "GB"
    number = sim.make(country, "mobile")
    t0 = _day(sim, rng, tenant, rng.uniform(10.0, 14.0))
    result.started = t0
    rung = [e for e in tenant.extensions if e.did is not None]
    rng.shuffle(rung)
    rung = rung[: rng.randint(min(10, len(rung)), min(25, len(rung)))]
    for k, e in enumerate(rung):
        sim.at(t0 + k * 40, sim.inbound(tenant, e, number, e.did or tenant.did, None))
    for e in rung[: rng.randint(3, 8)]:
        _own(sim, result, tenant, e)
        when = t0 + rng.uniform(0.3, 5.0) * HOUR
        sim.at(when, _calls(sim, tenant, e, number, result, rng.uniform(5.0, 10.0), e.source))


def _pump(sim: Simulation, rng: random.Random, name: str) -> None:
    """A 30-second test call into a new dear range, then a burst hours later."""
    tenant, ext, result = _victim(sim, rng, name, lambda t: _dearest(sim, t)[1])
    country = _dearest(sim, tenant)[0] or "LV"
    t0 = _day(sim, rng, tenant, rng.uniform(9.0, 12.0))
    result.started = t0
    test = sim.make(country, "mobile")
    sim.at(t0, _calls(sim, tenant, ext, test, result, 0.5, _attacker(11)))
    burst = t0 + rng.uniform(3.0, 8.0) * HOUR
    for k in range(30):
        number = sim.make.in_range(test[:-4], len(test) - 1)
        sim.at(burst + k * 120, _calls(sim, tenant, ext, number, result, 20.0, _attacker(11)))


def _spread(sim: Simulation, rng: random.Random, name: str) -> None:
    """Ten extensions, each under every per-extension cap, pumping one range."""

    def ok(t: Tenant) -> float:
        return _dearest(sim, t)[1] + (1.0 if len(t.extensions) > 10 else 0.0)

    tenant, first, result = _victim(sim, rng, name, ok)
    country = _dearest(sim, tenant)[0] or "LV"
    free = [
        e
        for e in tenant.extensions[1:]
        if (tenant.name, e.number) not in sim.attack_owner or e is first
    ]
    rng.shuffle(free)
    exts = [first, *[e for e in free if e is not first][:9]]
    t0 = _day(sim, rng, tenant, rng.uniform(9.0, 11.0))
    result.started = t0
    test = sim.make(country, "mobile")
    for i, ext in enumerate(exts):
        _own(sim, result, tenant, ext)
        for k in range(6):
            number = sim.make.in_range(test[:-4], len(test) - 1)
            when = t0 + i * 150 + k * 2400
            sim.at(when, _calls(sim, tenant, ext, number, result, 12.0, _attacker(40 + i)))


ATTACKS: dict[str, Callable[[Simulation, random.Random, str], None]] = {
    "diversion-premium": _premium,
    "diversion-abroad": _abroad,
    "quiet-diversion": _quiet,
    "direct-irsf": _irsf,
    "slow-drip": _drip,
    "weekend-burst": _burst,
    "trunk-hairpin": _hairpin,
    "wangiri-callback": _wangiri,
    "test-call-pump": _pump,
    "spread": _spread,
}
