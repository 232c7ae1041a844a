"""The simulator's world: tenants of several kinds, their people and their numbers.

The guard was once tuned on traffic that only knew office workers calling from the US
between 08:00 and 18:30; an outside evaluation with call centres, hotels and people who
forward their phone abroad found it crying wolf. So the world is made of *kinds* of
tenant, each with its own rhythm, and a *mix* (how many of each, in which home
countries, calling which countries) is a parameter: the tuning mix lives here, the
hold-out mix lives in :mod:`pbxwarden.guard.holdout`, which tuning never reads.

Numbers are made from ``phonenumbers``' example number of each country and type with
random last digits, kept only when valid, so every country the library knows works.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import phonenumbers
from phonenumbers import PhoneNumberType

from pbxwarden.guard.policy import TenantPolicy

KINDS = ("sme", "law", "callcentre", "hotel", "forwarders", "diaspora", "shop")
ZONES = {
    "US": ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"),
    "GB": ("Europe/London",),
    "ES": ("Europe/Madrid",),
    "DE": ("Europe/Berlin",),
}
US_AREAS = ("202", "212", "305", "312", "415", "512", "617", "713", "206", "303", "404")
SIZES = {  # extensions per tenant (before scaling to the requested total)
    "sme": (5, 25),
    "law": (4, 12),
    "callcentre": (15, 40),
    "hotel": (25, 60),
    "forwarders": (8, 20),
    "diaspora": (5, 15),
    "shop": (2, 6),
}


@dataclass(frozen=True)
class Mix:
    """What a simulated provider's customer base looks like."""

    name: str
    kinds: dict[str, float]  # kind -> weight
    homes: dict[str, float]  # home country -> weight
    partners: tuple[str, ...]  # countries offices do business with
    call_centre_targets: tuple[str, ...]  # where call centres dial all day
    hotel_guests: tuple[str, ...]  # where hotel guests come from
    diaspora: tuple[str, ...]  # countries a diaspora tenant calls home to (some high-risk)
    travel: tuple[str, ...]  # where travelling staff roam


TUNING_MIX = Mix(
    "tuning",
    kinds={
        "sme": 4,
        "law": 2,
        "callcentre": 1.5,
        "hotel": 1,
        "forwarders": 1.5,
        "diaspora": 1,
        "shop": 2,
    },
    homes={"US": 5, "GB": 2, "DE": 2, "ES": 1},
    partners=("DE", "FR", "GB", "MX", "ES", "CA", "IT", "NL"),
    call_centre_targets=("PH", "MX", "GB", "IN"),
    # guests from dear countries too (PH, EG, RU at 0.50): added after hold-out run 1
    hotel_guests=("US", "GB", "DE", "FR", "ES", "IT", "JP", "CN", "BR", "MX", "PH", "EG", "RU"),
    diaspora=("PH", "CU", "IN", "PL"),
    travel=("GB", "FR", "DE", "ES", "IT", "US"),
)


@dataclass
class Extension:
    tenant: str
    number: str
    role: str  # office, sales, reception, lobby, agent, room, late
    calls_per_day: float
    countries: tuple[str, ...]  # international destinations this person calls
    contacts: list[str] = field(default_factory=list)  # numbers called again and again
    did: str | None = None  # own direct number
    shift: tuple[float, float] = (8.0, 18.5)  # local hours of work
    late: bool = False  # works late most evenings
    mobile: str | None = None  # own national mobile (forwarding)
    forwards_evenings: bool = False
    travel_mobile: str | None = None  # foreign mobile when travelling
    family: list[str] = field(default_factory=list)  # diaspora: numbers at home abroad
    source: str = ""  # the network the phone registers from


@dataclass
class Tenant:
    name: str
    kind: str
    home: str
    zone: str
    policy: TenantPolicy
    extensions: list[Extension]
    did: str
    holidays: set[int]  # day indexes
    weekend_closed: bool = True
    customers: list[str] = field(default_factory=list)  # inbound callers who call again
    foreign_inbound: float = 0.03  # share of inbound callers from abroad
    guest_countries: tuple[str, ...] = ()


class NumberMaker:
    """Valid random numbers of a country and type (example number, random tail)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._examples: dict[tuple[str, str], str] = {}

    def __call__(self, country: str, kind: str = "fixed", tail: int = 4) -> str:
        if country == "US" and kind != "premium":  # +1 is shared: keep to US area codes
            exchange = self.rng.randint(200, 999)
            while exchange % 100 == 11 or exchange in (555, 950, 958, 959, 976):
                exchange = self.rng.randint(200, 999)
            area = self.rng.choice(US_AREAS)
            return f"+1{area}{exchange}{self.rng.randint(0, 9999):04d}"
        key = (country, kind)
        example = self._examples.get(key)
        if example is None:
            types = {
                "fixed": PhoneNumberType.FIXED_LINE,
                "mobile": PhoneNumberType.MOBILE,
                "premium": PhoneNumberType.PREMIUM_RATE,
            }
            ex = phonenumbers.example_number_for_type(country, types[kind])
            if ex is None:
                ex = phonenumbers.example_number_for_type(country, PhoneNumberType.FIXED_LINE)
            assert ex is not None, country
            example = self._examples[key] = phonenumbers.format_number(
                ex, phonenumbers.PhoneNumberFormat.E164
            )
        # as many random digits as keep the number valid often enough: ranges spread
        code = len(str(phonenumbers.country_code_for_region(country))) + 1
        spread = (len(example) - code - 2, len(example) - code - 3) if kind != "premium" else ()
        for digits in (*spread, tail):
            for _ in range(40):
                rest = "".join(str(self.rng.randint(0, 9)) for _ in range(digits))
                number = example[: len(example) - digits] + rest
                parsed = phonenumbers.parse(number)
                if phonenumbers.is_valid_number(parsed) and (
                    phonenumbers.region_code_for_number(parsed) == country
                ):
                    return number
        return example

    def in_range(self, prefix: str, length: int) -> str:
        """A valid number starting with ``prefix`` (``length`` digits after the +)."""
        for _ in range(200):
            rest = length - (len(prefix) - 1)
            number = prefix + "".join(str(self.rng.randint(0, 9)) for _ in range(rest))
            if phonenumbers.is_valid_number(phonenumbers.parse(number)):
                return number
        raise ValueError(f"no valid number of {length} digits in {prefix}")


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    names = list(weights)
    return rng.choices(names, [weights[n] for n in names])[0]


def make_tenants(
    rng: random.Random, mix: Mix, count: int, extensions: int, days: int
) -> list[Tenant]:
    """``count`` tenants of the mix's kinds, about ``extensions`` extensions in all."""
    numbers = NumberMaker(rng)
    kinds = [_pick(rng, mix.kinds) for _ in range(count)]
    if count >= len(KINDS):  # every kind at least once in a run big enough for it
        for i, kind in enumerate(KINDS):
            if kind not in kinds:
                kinds[i * (count // len(KINDS))] = kind
    sizes = [rng.randint(*SIZES[k]) for k in kinds]
    scale = extensions / max(1, sum(sizes))
    sizes = [max(2, round(s * scale)) for s in sizes]
    out = []
    for i, (kind, size) in enumerate(zip(kinds, sizes, strict=True)):
        home = _pick(rng, mix.homes)
        out.append(_tenant(rng, numbers, mix, f"t{i:03d}", kind, home, size, days))
    return out


def _tenant(
    rng: random.Random,
    numbers: NumberMaker,
    mix: Mix,
    name: str,
    kind: str,
    home: str,
    size: int,
    days: int,
) -> Tenant:
    zone = rng.choice(ZONES[home])
    foreign = [c for c in mix.partners if c != home]
    countries: list[str] = rng.sample(foreign, rng.choice([0, 1, 1, 2, 3]))
    high_risk = False
    forwarding_abroad = False
    foreign_inbound = 0.03
    guests: tuple[str, ...] = ()
    if kind == "callcentre":
        countries = [c for c in rng.sample(mix.call_centre_targets, 2) if c != home] or ["PH"]
        foreign_inbound = 0.3
    elif kind == "hotel":
        guests = tuple(c for c in mix.hotel_guests if c != home)
        countries = list(guests)
        foreign_inbound = 0.15
    elif kind == "forwarders":
        travel = [c for c in mix.travel if c != home]
        countries = sorted({*countries, *rng.sample(travel, 3)})
        forwarding_abroad = True
        foreign_inbound = 0.08
    elif kind == "diaspora":
        home_abroad = rng.choice([c for c in mix.diaspora if c != home])
        countries = sorted({*countries, home_abroad})
        high_risk = True  # the diaspora country may be on the high-risk list (CU, LV...)
        forwarding_abroad = rng.random() < 0.5  # staff forward to family when they go home
        foreign_inbound = 0.2
    elif kind == "shop":
        countries = []
    extensions = [
        _extension(rng, numbers, name, kind, home, j, tuple(countries), forwarding_abroad)
        for j in range(size)
    ]
    business = ["mon-sat 09:00-19:00"] if kind == "shop" else ["mon-fri 08:00-18:00"]
    daily = sum(_daily_spend(e) for e in extensions)
    busy = kind in ("callcentre", "hotel")
    policy = TenantPolicy(
        allow_countries=sorted(set(countries)),
        allow_high_risk=high_risk,
        allow_international_forwarding=forwarding_abroad,
        timezone=zone,
        business_hours=business,
        max_concurrent_calls=max(10, math.ceil(size * (1.0 if busy else 0.4))),
        tenant_spend_per_day=max(500.0, round(3 * daily, -1)),
    )
    did = numbers(home, "fixed")
    customers = [numbers(home, rng.choice(["fixed", "mobile"])) for _ in range(40)]
    customers += [numbers(c, "mobile") for c in countries for _ in range(3)]
    holidays = {d for d in range(days) if rng.random() < 0.03}
    return Tenant(
        name,
        kind,
        home,
        zone,
        policy,
        extensions,
        did,
        holidays,
        weekend_closed=kind not in ("hotel", "shop"),
        customers=customers,
        foreign_inbound=foreign_inbound,
        guest_countries=guests,
    )


def _extension(
    rng: random.Random,
    numbers: NumberMaker,
    tenant: str,
    kind: str,
    home: str,
    j: int,
    countries: tuple[str, ...],
    forwarding_abroad: bool,
) -> Extension:
    number = str(1000 + j)
    source = f"udp:192.0.2.{rng.randint(1, 254)}:5060"
    if j == 0:
        role = "reception"
    elif kind == "callcentre":
        role = "agent"
    elif kind == "hotel":
        role = "room"
    elif kind == "law":
        role = rng.choices(["office", "late"], [0.75, 0.25])[0]
    elif kind == "shop":
        role = "office"
    else:
        role = rng.choices(["office", "sales", "late", "lobby"], [0.6, 0.2, 0.12, 0.08])[0]
    rate = {
        "reception": 6.0,
        "office": 4.0,
        "sales": 12.0,
        "late": 5.0,
        "lobby": 0.3,
        "agent": 45.0,
        "room": 0.4,
    }[role]
    share = {"sales": 0.8, "agent": 1.0, "room": 0.0, "late": 0.6}.get(role, 0.3)
    mine = tuple(c for c in countries if rng.random() < share)
    if role == "agent":
        mine = countries
    ext = Extension(tenant, number, role, rate * rng.uniform(0.6, 1.4), mine, source=source)
    if role == "agent":
        ext.shift = rng.choice([(8.0, 16.0), (12.0, 20.0), (14.0, 22.0)])
    elif role == "late":
        ext.shift = (9.0, rng.uniform(20.5, 22.5))
        ext.late = True
    elif role == "room":
        ext.shift = (7.0, 23.5)
    ext.contacts = [
        numbers(home, rng.choice(["fixed", "mobile"])) for _ in range(rng.randint(5, 25))
    ]
    ext.contacts += [numbers(c, rng.choice(["fixed", "mobile"])) for c in mine for _ in range(3)]
    if kind != "hotel" and role != "lobby":
        ext.did = numbers(home, "fixed")
        ext.mobile = numbers(home, "mobile")
    if kind == "forwarders" and role != "reception":
        ext.forwards_evenings = rng.random() < 0.7
        if forwarding_abroad and rng.random() < 0.5:
            ext.travel_mobile = numbers(rng.choice([c for c in countries if c != home]), "mobile")
    if kind == "diaspora" and role != "reception" and countries and rng.random() < 0.6:
        home_abroad = countries[-1] if len(countries) == 1 else rng.choice(countries)
        ext.family = [numbers(home_abroad, "mobile") for _ in range(rng.randint(1, 3))]
    return ext


def _daily_spend(ext: Extension) -> float:
    """A rough daily spend, for the tenant cap a careful admin would set."""
    if ext.role == "agent":
        return ext.calls_per_day * 3.0 * 0.5
    if ext.role == "room":
        return 10.0
    return ext.calls_per_day * 0.2 + (5.0 if ext.family else 0.0)
