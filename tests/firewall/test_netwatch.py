"""Registration watch: trusted on first use, new networks flagged or held back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pbxwarden.firewall.netwatch import NetworkWatch, network_of
from pbxwarden.pbx.registration import NETWORK_MARGIN, refresh_networks
from pbxwarden.store.db import Store


def test_network_of() -> None:
    assert network_of("192.0.2.77") == "192.0.2.0/24"
    assert network_of("2001:db8:1:2::5") == "2001:db8:1::/48"
    assert network_of("not an address") is None


def test_first_network_is_trusted_later_ones_are_flagged() -> None:
    watch = NetworkWatch()
    [first] = watch.check(1, "192.0.2.10")
    assert (first.known, first.first, first.allowed) == (False, True, True)
    [again] = watch.check(1, "192.0.2.99")
    assert again.known
    [moved] = watch.check(1, "198.51.100.4")
    assert (moved.known, moved.first, moved.allowed) == (False, False, True)
    assert watch.networks(1) == {"192.0.2.0/24", "198.51.100.0/24"}


def test_approval_required_holds_new_networks_back() -> None:
    watch = NetworkWatch(require_approval=True)
    watch.check(1, "192.0.2.10")
    [held] = watch.check(1, "203.0.113.5")
    assert not held.allowed and not held.known
    [still] = watch.check(1, "203.0.113.5")
    assert not still.allowed  # not remembered until approved
    watch.load([(1, "203.0.113.0/24")])  # the admin approved it
    [ok] = watch.check(1, "203.0.113.5")
    assert ok.known and ok.allowed


def test_reloading_stored_networks_forgets_nothing_seen_since() -> None:
    """A network seen a moment ago may not be stored yet when the periodic reload reads
    the database: it must stay known, or the next registration from anywhere would be
    taken for the extension's first (trusted on first use)."""
    watch = NetworkWatch()
    watch.check(1, "192.0.2.10")  # first network, write still under way
    watch.load([(2, "198.51.100.0/24")])  # reload of what is stored: not extension 1's
    [elsewhere] = watch.check(1, "203.0.113.5")
    assert not elsewhere.first and not elsewhere.known  # flagged, not trusted as first
    assert watch.networks(2) == {"198.51.100.0/24"}


def test_countries_are_watched_beside_networks() -> None:
    watch = NetworkWatch(country_of=lambda ip: "DE" if ip.startswith("192.0.2.") else "LV")
    verdicts = watch.check(1, "192.0.2.10")
    assert [v.network for v in verdicts] == ["192.0.2.0/24", "country:DE"]
    assert all(v.first for v in verdicts)
    network, country = watch.check(1, "203.0.113.5")
    assert network.network == "203.0.113.0/24" and not network.first
    assert country.network == "country:LV" and not country.known and not country.first


def test_refresh_reads_only_what_changed(tmp_path: Path) -> None:
    """Each process adopts networks recorded or approved elsewhere: the first time all of
    them, then only the rows changed since (never every extension's networks again)."""
    store = Store(f"sqlite:///{tmp_path / 'pbx.db'}")
    store.migrate()
    store.ensure_tenant("default", "pbxwarden")
    store.add_extensions([("1000", "Very-Secret-Pass1"), ("1001", "Very-Secret-Pass2")])
    a, b = (store.extension_auth("pbxwarden", n) for n in ("1000", "1001"))
    assert a is not None and b is not None
    store.record_networks([(a.id, "192.0.2.0/24", time.time(), True)])
    watch = NetworkWatch()
    seen = asyncio.run(refresh_networks(store, watch, -1.0))
    assert watch.knows(a.id, "192.0.2.0/24") and seen > 0
    reads: list[float | None] = []
    original = store.approved_networks

    def counting(since: float | None = None) -> list[tuple[int, str]]:
        reads.append(since)
        return original(since)

    store.approved_networks = counting  # type: ignore[method-assign]
    assert asyncio.run(refresh_networks(store, watch, seen)) == seen
    assert reads == []  # nothing changed: nothing read
    store.record_networks([(b.id, "198.51.100.0/24", time.time(), True)])  # another process
    newer = asyncio.run(refresh_networks(store, watch, seen))
    assert newer > seen and watch.knows(b.id, "198.51.100.0/24")
    assert reads == [pytest.approx(seen - NETWORK_MARGIN)]  # only the recent rows
    store.close()
