"""The simulator runs the real guard on simulated weeks, and its verdicts can fail."""

from __future__ import annotations

import json
from pathlib import Path

from pbxwarden.guard.engine import GuardConfig, TenantPolicy
from pbxwarden.guard.simulate import ATTACKS, Simulation
from tests.helpers import cli


def test_every_attack_is_stopped_within_budget_without_crying_wolf() -> None:
    report = Simulation(tenants=20, extensions=200, days=21, seed=2).run()
    assert [a.scenario for a in report.attacks] == list(ATTACKS)
    budget = 10 * report.premium_rate
    for attack in report.attacks:
        assert attack.blocked and attack.alerted, attack
        assert attack.lost < budget, attack
        assert attack.without_guard > 5 * budget, attack  # the attacks are worth stopping
    assert report.clean_calls > 10_000
    assert report.clean_refused < 0.01 * report.clean_calls
    assert report.false_alerts_per_1000_extension_days < 1.0


def test_a_guard_that_allows_everything_loses_the_money() -> None:
    wide_open = TenantPolicy(
        allow_countries=["LV", "CU", "CK", "SO", "001", "GB", "DE"],
        allow_special=["premium-rate", "voip"],
        allow_high_risk=True,
        allow_international_forwarding=True,
        max_concurrent_calls=1000,
        max_concurrent_per_extension=1000,
        calls_per_minute=1000,
        calls_per_hour=10_000,
        same_prefix_calls=10_000,
        spend_per_hour=1e9,
        spend_per_day=1e9,
        tenant_spend_per_day=1e9,
        alert_score=100,
        block_score=100,
    )
    report = Simulation(
        tenants=10,
        extensions=100,
        days=14,
        seed=1,
        attacks=("diversion-premium", "direct-irsf"),
        config=GuardConfig(default=wide_open),
    ).run()
    for attack in report.attacks:
        assert attack.lost > 10 * report.premium_rate, attack
    assert "NO" in report.markdown()


def test_cli_simulate(tmp_path: Path) -> None:
    out = cli(
        tmp_path / "none",
        "simulate",
        "--tenants",
        "5",
        "--extensions",
        "40",
        "--days",
        "14",
        "--attack",
        "slow-drip",
        "--json",
    )
    data = json.loads(out.stdout)
    assert [a["scenario"] for a in data["attacks"]] == ["slow-drip"]
    assert data["extensions"] == 40 and data["days"] == 14
    bad = cli(tmp_path / "none", "simulate", "--attack", "teleport", check=False)
    assert bad.returncode != 0 and "unknown attack 'teleport'" in bad.stderr
