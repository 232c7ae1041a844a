"""The simulator's clean traffic: what each kind of tenant does on an ordinary day.

Every rhythm here is one an outside evaluation found the guard refusing: call-centre
agents dialling abroad on late shifts, hotel guests phoning home at night, staff who
work late, forward to their mobile every evening and to a foreign mobile when they
travel, diaspora staff calling family abroad, foreign and withheld callers to every
tenant. Nothing here knows the guard's rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pbxwarden.guard.sim_world import Extension, Tenant

if TYPE_CHECKING:
    from pbxwarden.guard.simulate import Simulation

HOUR = 3600.0


def plan_tenant(sim: Simulation, tenant: Tenant) -> None:
    rng = sim.rng
    for day in range(sim.days):
        base = sim.local_midnight(tenant, day)
        weekday = (day + _weekday0(sim, tenant)) % 7
        holiday = day in tenant.holidays
        closed = (
            holiday
            or (tenant.weekend_closed and weekday >= 5)
            or (tenant.kind == "shop" and weekday == 6)
        )
        for ext in tenant.extensions:
            if ext.role == "room":
                continue  # guests: below
            n = ext.calls_per_day * (0.05 if closed else 1.0)
            start, end = ext.shift
            if ext.late and rng.random() < 0.3:
                end = 18.5  # not every evening
            for _ in range(sim.poisson(n)):
                hour = rng.uniform(start, end)
                if ext.role not in ("agent", "late") and rng.random() < 0.03:
                    hour = rng.uniform(6.5, 21.0)  # the odd early or late call
                target, minutes, answered = _ordinary(sim, tenant, ext)
                sim.at(base + hour * HOUR, sim.clean_call(ext, target, minutes, answered))
            if ext.family and not closed and rng.random() < 0.7:
                hour = rng.choice([rng.uniform(12.0, 14.0), rng.uniform(16.5, end)])
                minutes = min(rng.uniform(8.0, 40.0), 60.0)
                sim.at(base + hour * HOUR, sim.clean_call(ext, rng.choice(ext.family), minutes))
            if not closed and ext.did is not None:
                for _ in range(sim.poisson(1.2)):
                    _inbound(sim, tenant, ext, ext.did, base + rng.uniform(8.0, 18.5) * HOUR)
            _forwarding(sim, tenant, ext, base, day, closed)
        if tenant.kind == "hotel":
            _guests(sim, tenant, base, day)
        for _ in range(sim.poisson(15 * (0.1 if closed else 1.0))):
            _inbound(
                sim, tenant, tenant.extensions[0], tenant.did, base + rng.uniform(8.0, 18.5) * HOUR
            )


def _weekday0(sim: Simulation, tenant: Tenant) -> int:
    return int(tenant.policy.local(sim.start + 12 * HOUR).weekday())


def _ordinary(sim: Simulation, tenant: Tenant, ext: Extension) -> tuple[str, float, bool]:
    rng = sim.rng
    if ext.role == "agent":
        if rng.random() < 0.75:
            country = rng.choice(ext.countries)
            target = sim.make(country, "mobile" if rng.random() < 0.6 else "fixed")
        else:
            target = sim.make(tenant.home, rng.choice(["fixed", "mobile"]))
        return target, min(rng.lognormvariate(1.0, 0.8), 60.0), rng.random() < 0.6
    if ext.countries and rng.random() < (0.25 if ext.role in ("sales", "late") else 0.08):
        foreign = [c for c in ext.contacts if not c.startswith(_code(tenant.home))]
        target = (
            rng.choice(foreign)
            if foreign and rng.random() < 0.6
            else sim.make(rng.choice(ext.countries), rng.choice(["fixed", "mobile"]))
        )
    elif rng.random() < 0.7:
        target = rng.choice(ext.contacts)
    else:
        target = sim.make(tenant.home, rng.choice(["fixed", "mobile"]))
    return target, min(rng.lognormvariate(0.8, 1.0), 180.0), rng.random() < 0.85


def _code(home: str) -> str:
    return {"US": "+1", "GB": "+44", "ES": "+34", "DE": "+49"}.get(home, "+")


def _inbound(sim: Simulation, tenant: Tenant, ext: Extension, did: str, when: float) -> None:
    rng = sim.rng
    r = rng.random()
    if r < 0.02:
        caller = "anonymous"
    elif r < 0.6 and tenant.customers:
        caller = rng.choice(tenant.customers)
    elif rng.random() < tenant.foreign_inbound:
        country = rng.choice([*tenant.policy.allow_countries, "GB", "FR", "DE", "MX"])
        if country == tenant.home:
            country = "FR" if tenant.home != "FR" else "DE"
        caller = sim.make(country, "mobile")
    else:
        caller = sim.make(tenant.home, rng.choice(["fixed", "mobile"]))
    s = rng.random()
    talk = (
        None if s < 0.15 else rng.uniform(3, 50) if s < 0.3 else rng.lognormvariate(1.0, 1.0) * 60
    )
    sim.at(when, sim.inbound(tenant, ext, caller, did, talk))


def _forwarding(
    sim: Simulation, tenant: Tenant, ext: Extension, base: float, day: int, closed: bool
) -> None:
    rng = sim.rng
    if ext.travel_mobile is not None and day % 14 == (int(ext.number) % 14) and not closed:
        # a trip of 2-4 days: forward to the foreign mobile, calls follow it
        when = base + rng.uniform(7.0, 9.0) * HOUR
        sim.at(when, sim.forward_change(ext, ext.travel_mobile))
        for d in range(rng.randint(2, 4)):
            for _ in range(rng.randint(1, 4)):
                at = when + d * 24 * HOUR + rng.uniform(0.5, 9.0) * HOUR
                caller = rng.choice(tenant.customers) if tenant.customers else "anonymous"
                sim.at(
                    at,
                    sim.inbound(
                        tenant,
                        ext,
                        caller,
                        ext.did or tenant.did,
                        None,
                        forward_to=ext.travel_mobile,
                        minutes=rng.uniform(1.0, 10.0),
                    ),
                )
        return
    if ext.mobile is None or ext.did is None:
        return
    evening = ext.forwards_evenings and not closed and rng.random() < 0.85
    if evening or rng.random() < 0.004:  # everyone forwards to their mobile now and then
        when = base + (rng.uniform(17.0, 19.0) if evening else rng.uniform(8.0, 18.0)) * HOUR
        sim.at(when, sim.forward_change(ext, ext.mobile))
        for _ in range(rng.randint(0, 3)):
            at = when + rng.uniform(600, 4 * HOUR)
            caller = rng.choice(tenant.customers) if tenant.customers else "anonymous"
            sim.at(
                at,
                sim.inbound(
                    tenant,
                    ext,
                    caller,
                    ext.did,
                    None,
                    forward_to=ext.mobile,
                    minutes=rng.uniform(1.0, 8.0),
                ),
            )


def _guests(sim: Simulation, tenant: Tenant, base: float, day: int) -> None:
    """Hotel rooms: a guest stays a few nights and phones home in the evening."""
    rng = sim.rng
    stays = sim.stays
    for ext in tenant.extensions:
        if ext.role != "room":
            continue
        key = f"{tenant.name}/{ext.number}"
        until, home_number = stays.get(key, (-1, ""))
        if until < day and rng.random() < 0.75:
            country = (
                tenant.home
                if rng.random() < 0.3 or not tenant.guest_countries
                else rng.choice(tenant.guest_countries)
            )
            home_number = sim.make(country, rng.choice(["fixed", "mobile"]))
            until = day + rng.randint(0, 5)
            stays[key] = (until, home_number)
        if until < day:
            continue
        if rng.random() < 0.6:
            minutes = min(rng.lognormvariate(2.3, 0.7), 60.0)
            hour = rng.uniform(19.0, 23.5)
            sim.at(base + hour * HOUR, sim.clean_call(ext, home_number, minutes))
        if rng.random() < 0.15:
            hour = rng.uniform(8.0, 22.0)
            target = sim.make(tenant.home, "fixed")
            sim.at(base + hour * HOUR, sim.clean_call(ext, target, rng.uniform(1.0, 6.0)))
