"""Price per minute by destination, to estimate what a call costs while it runs.

Spend caps and the simulator's "money lost" need a price before the carrier's
invoice exists. The table is small and looked up by longest prefix through a dict
per prefix length, which is faster than any trie library for a few hundred entries.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pbxwarden.pbx.numbers import Destination

ORDINARY = frozenset(("fixed", "mobile", "fixed-or-mobile"))


class RateError(ValueError):
    pass


class RateTable:
    def __init__(self, data: dict[str, Any]) -> None:
        try:
            self.currency = str(data.get("currency", "USD"))
            self.default = float(data.get("default", 0.5))
            self.types = {str(k): float(v) for k, v in data.get("types", {}).items()}
            prefixes = {str(k): float(v) for k, v in data.get("prefixes", {}).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise RateError(f"rate table: {exc}") from None
        for prefix, price in [*prefixes.items(), *self.types.items()]:
            if price < 0:
                raise RateError(f"rate table: negative price for {prefix}")
        for prefix in prefixes:
            if not (prefix.startswith("+") and prefix[1:].isdigit()):
                raise RateError(f"rate table: prefix {prefix!r} is not like +44")
        self._by_len: dict[int, dict[str, float]] = {}
        for prefix, price in prefixes.items():
            self._by_len.setdefault(len(prefix), {})[prefix] = price
        self._lengths = sorted(self._by_len, reverse=True)

    @classmethod
    def bundled(cls) -> RateTable:
        text = resources.files("pbxwarden.guard").joinpath("data/rates.toml").read_text()
        return cls(tomllib.loads(text))

    @classmethod
    def from_file(cls, path: str | Path) -> RateTable:
        try:
            return cls(tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise RateError(f"rate table {path}: {exc}") from None

    def per_minute(self, dest: Destination) -> float:
        """The price of a minute to ``dest``: its prefix's, or its type's if dearer."""
        by_prefix: float | None = None
        for length in self._lengths:
            by_prefix = self._by_len[length].get(dest.e164[:length])
            if by_prefix is not None:
                break
        by_type = self.types.get(dest.number_type)
        if dest.number_type in ORDINARY or (dest.number_type == "toll-free" and dest.national):
            if dest.number_type == "toll-free" and by_type is not None:
                return by_type
            if by_prefix is not None:
                return by_prefix
            return by_type if by_type is not None and dest.national else self.default
        base = self.default if by_prefix is None else by_prefix
        return max(base, by_type) if by_type is not None else base
