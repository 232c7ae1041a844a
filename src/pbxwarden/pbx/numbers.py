"""What a dialled number is: E.164 form, country, and kind (fixed, mobile, premium...).

Uses Google's libphonenumber metadata (``phonenumbers``), which knows every
country's numbering plan, international prefixes (00, 011, ...) and which ranges
are premium rate, shared cost or international networks.
"""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

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


@dataclass(frozen=True, slots=True)
class Destination:
    dialed: str
    e164: str
    country: str  # ISO region, or "001" for international networks such as +882
    number_type: str
    national: bool  # same country as the tenant
    valid: bool


def classify(dialed: str, home_country: str) -> Destination | None:
    """None when ``dialed`` is not a telephone number at all."""
    digits = dialed.strip()
    if not digits or len(digits) > 32 or any(c not in "+0123456789-(). " for c in digits):
        return None
    try:
        number = phonenumbers.parse(digits, home_country)
    except NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(number) or "ZZ"
    return Destination(
        dialed=dialed,
        e164=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
        country=region,
        number_type=_TYPE_NAMES.get(phonenumbers.number_type(number), "unknown"),
        national=region == home_country,
        valid=phonenumbers.is_valid_number(number),
    )
