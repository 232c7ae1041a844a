"""Country of an address, from a MaxMind GeoLite2/GeoIP2 Country database (optional).

With a database configured, the registration watch also notices an extension
registering from a new country, not only from a new network.
"""

from __future__ import annotations

from pathlib import Path

import structlog

log = structlog.get_logger("pbxwarden.firewall")


class GeoLookup:
    def __init__(self, path: Path) -> None:
        import geoip2.database  # optional dependency: pip install 'pbxwarden[geo]'

        self._reader = geoip2.database.Reader(str(path))

    def country(self, address: str) -> str | None:
        """ISO code, or None for an address the database does not know."""
        import geoip2.errors

        try:
            code = self._reader.country(address).country.iso_code
        except (geoip2.errors.AddressNotFoundError, ValueError):
            return None
        return str(code) if code else None

    def close(self) -> None:
        self._reader.close()


def open_geo(path: Path | None) -> GeoLookup | None:
    if path is None:
        return None
    try:
        return GeoLookup(path)
    except ImportError:
        log.warning(
            "firewall.geoip_database is set but geoip2 is not installed "
            "(pip install 'pbxwarden[geo]'): country watch off"
        )
    except (OSError, ValueError) as exc:
        log.warning("cannot open the GeoIP database: country watch off", error=str(exc))
    return None
