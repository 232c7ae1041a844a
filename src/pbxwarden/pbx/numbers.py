"""What a dialled number is: E.164 form, country, and kind (fixed, mobile, premium...).

Uses Google's libphonenumber metadata (``phonenumbers``), which knows every
country's numbering plan, international prefixes (00, 011, ...), which ranges are
premium rate, shared cost or international networks, and each country's emergency
and other short numbers with their expected cost (``shortnumberinfo``).

Two things libphonenumber does not say, added here:

* ranges that cost the caller like premium rate but are typed as ordinary numbers
  (US NXX-976 pay-per-call exchanges): the bundled ``data/costly_ranges.toml``,
  written in dialplan pattern syntax (X, Z, N, [2-5]), which a tenant can extend;
* an outside-line prefix before an emergency number (``9`` then ``911``): Kari's Law
  requires a US business phone system to connect 911 with and without it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, shortnumberinfo
from phonenumbers.shortnumberinfo import ShortNumberCost

_TYPE_NAMES = {
    PhoneNumberType.FIXED_LINE: "fixed",
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed-or-mobile",
    PhoneNumberType.TOLL_FREE: "toll-free",
    PhoneNumberType.PREMIUM_RATE: "premium-rate",
    PhoneNumberType.SHARED_COST: "shared-cost",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.PERSONAL_NUMBER: "personal",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
    PhoneNumberType.UNKNOWN: "unknown",
}
# A short code's number type, from libphonenumber's expected cost for the caller.
_SHORT_COST_TYPES = {
    ShortNumberCost.TOLL_FREE: "toll-free",
    ShortNumberCost.STANDARD_RATE: "standard-rate",
    ShortNumberCost.PREMIUM_RATE: "premium-rate",
    ShortNumberCost.UNKNOWN_COST: "short-code",  # unknown cost: closed by default
}
MAX_SHORT_CODE = 6  # digits; longer strings are never short codes (118118 is six)
DIALABLE = frozenset("+0123456789-(). ")
# Outside-line prefixes accepted before an emergency number (Kari's Law: 9, then 911).
OUTSIDE_LINE_PREFIXES = ("9", "0")


@dataclass(frozen=True, slots=True)
class Destination:
    dialed: str
    # E.164; for a short code (which has none) the digits as dialled, without "+"
    e164: str
    country: str  # ISO region, or "001" for international networks such as +882
    number_type: str
    national: bool  # same country as the tenant
    valid: bool
    short: bool = False  # a short code of the home country (11811, 3615, 611)
    costly_range: str | None = None  # why a seemingly ordinary number is premium rate

    @property
    def route_key(self) -> str:
        """What trunk prefixes match: the E.164 number, or for a short code the home
        country's calling code (it is dialled through that country's carrier)."""
        if not self.short:
            return self.e164
        code = phonenumbers.country_code_for_region(self.country)
        return f"+{code}" if code else "+"


@dataclass(frozen=True, slots=True)
class CostlyRange:
    country: str
    pattern: str  # dialplan syntax, e.g. +1NXX976XXXX
    name: str
    regex: re.Pattern[str]


_PATTERN_TOKEN = re.compile(r"\[[0-9-]+\]|[0-9XZN]")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``+1NXX976XXXX`` -> a regex matching the whole E.164 number. Raises ValueError
    naming what is wrong, for data files and tenant policies alike."""
    text = pattern.strip().upper()
    if not text.startswith("+") or len(text) < 3:
        raise ValueError(f"range {pattern!r}: write it as E.164 with wildcards, e.g. +1NXX976XXXX")
    out, pos = [], 1
    for m in _PATTERN_TOKEN.finditer(text, 1):
        if m.start() != pos:
            break
        token = m.group()
        pos = m.end()
        if token == "X":
            out.append("[0-9]")
        elif token == "Z":
            out.append("[1-9]")
        elif token == "N":
            out.append("[2-9]")
        elif token.startswith("["):
            body = token[1:-1]
            if not body or body.startswith("-") or body.endswith("-"):
                raise ValueError(f"range {pattern!r}: bad digit set {token}")
            out.append(token)
        else:
            out.append(token)
    if pos != len(text):
        raise ValueError(
            f"range {pattern!r}: only digits, X (0-9), Z (1-9), N (2-9) and [..] sets after +"
        )
    return re.compile(r"\+" + "".join(out))


@lru_cache(maxsize=1)
def bundled_costly_ranges() -> tuple[CostlyRange, ...]:
    text = resources.files("pbxwarden.pbx").joinpath("data/costly_ranges.toml").read_text()
    return tuple(
        CostlyRange(r["country"], r["pattern"], r["name"], compile_pattern(r["pattern"]))
        for r in tomllib.loads(text)["range"]
    )


def costly_range(e164: str, country: str) -> CostlyRange | None:
    """The bundled costly range ``e164`` falls in, if any."""
    for entry in bundled_costly_ranges():
        if entry.country == country and entry.regex.fullmatch(e164):
            return entry
    return None


def _digits(dialed: str) -> str | None:
    text = dialed.strip()
    if not text or len(text) > 32 or any(c not in DIALABLE for c in text):
        return None
    return text


@lru_cache(maxsize=4096)  # on every call's dialled string: bounded, whatever is dialled
def emergency_number(dialed: str, home_country: str) -> str | None:
    """The emergency number of ``home_country`` that ``dialed`` calls, else None.

    Exactly the number (911, 112, 999, 110, 15), or one of the outside-line prefixes
    before it (9911): a person in an emergency dials what they are used to.
    """
    text = _digits(dialed)
    if text is None or len(text) > MAX_SHORT_CODE or not text.isdigit():
        return None
    if shortnumberinfo.is_emergency_number(text, home_country):
        return text
    for prefix in OUTSIDE_LINE_PREFIXES:
        rest = text[len(prefix) :]
        if (
            text.startswith(prefix)
            and rest
            and shortnumberinfo.is_emergency_number(rest, home_country)
        ):
            return rest
    return None


def _short_code(digits: str, home_country: str) -> Destination | None:
    if len(digits) > MAX_SHORT_CODE or not digits.isdigit():
        return None
    try:
        number = phonenumbers.parse(digits, home_country)
    except NumberParseException:
        return None
    if not shortnumberinfo.is_valid_short_number_for_region(number, home_country):
        return None
    cost = shortnumberinfo.expected_cost_for_region(number, home_country)
    return Destination(
        dialed=digits,
        e164=digits,
        country=home_country,
        number_type=_SHORT_COST_TYPES.get(cost, "short-code"),
        national=True,
        valid=True,
        short=True,
    )


def classify(dialed: str, home_country: str) -> Destination | None:
    """None when ``dialed`` is not a telephone number at all.

    A short code of the home country (one that is not also a full number) is valid,
    national, typed by its expected cost. Emergency numbers are classified like any
    short code here (toll-free); :func:`emergency_number` is what singles them out.
    """
    digits = _digits(dialed)
    if digits is None:
        return None
    try:
        number = phonenumbers.parse(digits, home_country)
    except NumberParseException:
        return _short_code(digits, home_country)
    valid = phonenumbers.is_valid_number(number)
    if not valid:
        short = _short_code(digits, home_country)
        if short is not None:
            return short
    region = phonenumbers.region_code_for_number(number) or "ZZ"
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    number_type = _TYPE_NAMES.get(phonenumbers.number_type(number), "unknown")
    extra = costly_range(e164, region) if valid else None
    if extra is not None:
        number_type = "premium-rate"
    return Destination(
        dialed=dialed,
        e164=e164,
        country=region,
        number_type=number_type,
        national=region == home_country,
        valid=valid,
        costly_range=extra.name if extra is not None else None,
    )
