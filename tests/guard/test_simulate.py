"""The simulator runs the real guard on simulated weeks, and its verdicts can fail."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from pbxwarden.guard import sim_attacks, sim_traffic, sim_world, simulate
from pbxwarden.guard.engine import GuardConfig, TenantPolicy
from pbxwarden.guard.simulate import ATTACKS, Simulation, run_set
from tests.helpers import cli


def test_every_attack_is_stopped_within_budget_without_crying_wolf() -> None:
    report = Simulation(tenants=20, extensions=250, days=30, seed=2).run()
    assert [a.scenario for a in report.attacks] == list(ATTACKS)
    assert set(report.kinds) == set(sim_world.KINDS)  # every kind of tenant took part
    budget = report.budget
    for attack in report.attacks:
        assert attack.blocked or attack.without_guard < budget, attack
        assert attack.lost < budget, attack
    worth = [a for a in report.attacks if a.without_guard > 5 * budget]
    assert len(worth) >= 6  # most attacks are worth stopping
    assert report.clean_calls > 20_000
    assert report.suspended_clean == 0
    assert report.per_1000(report.clean_refused) < 5.0
    assert report.per_1000(report.false_alerts) < 5.0
    assert "Aims:" in report.markdown()


def test_a_guard_that_allows_everything_loses_the_money() -> None:
    wide_open = TenantPolicy(
        allow_countries=["LV", "CU", "CK", "SO", "001", "GB", "DE", "PH", "MX", "IN", "PL"],
        allow_special=["premium-rate", "voip"],
        allow_high_risk=True,
        allow_prefixes=["+"],  # every destination
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
        report_only=["anomaly", "drip", "wangiri", "range", "recon"],
    )
    report = Simulation(
        tenants=10,
        extensions=100,
        days=14,
        seed=1,
        attacks=("diversion-premium", "direct-irsf", "spread"),
        config=GuardConfig(default=wide_open),
    ).run()
    for attack in report.attacks:
        assert attack.lost > report.budget, attack
    assert "NO" in report.markdown() and "NOT met" in report.markdown()


def test_the_holdout_set_is_apart_from_tuning() -> None:
    """Nothing on the tuning path imports the hold-out module; only run_set reads it."""
    for module in (simulate, sim_world, sim_traffic, sim_attacks):
        tree = ast.parse(Path(str(module.__file__)).read_text())
        imports = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "pbxwarden.guard.holdout"
        ]
        where = {getattr(n, "lineno", 0) for n in imports}
        if module is simulate:
            assert len(where) == 2  # inside run_set, when asked for the hold-out or spent set
        else:
            assert not where, module
    from pbxwarden.guard.holdout import HOLDOUT_MIX, HOLDOUT_SEEDS, SPENT_MIX, SPENT_SEEDS

    assert not set(HOLDOUT_SEEDS) & set(simulate.TUNING_SEEDS)
    assert not set(HOLDOUT_SEEDS) & set(SPENT_SEEDS)  # a seed looked at is never hold-out
    assert HOLDOUT_MIX != sim_world.TUNING_MIX
    assert HOLDOUT_MIX.kinds != SPENT_MIX.kinds  # a mix looked at is never hold-out either
    assert not set(HOLDOUT_MIX.diaspora) & set(SPENT_MIX.diaspora)
    reports = run_set("holdout", tenants=3, extensions=20, days=9, attacks=("direct-irsf",))
    assert [(r.set_name, r.seed) for r in reports] == [("holdout", s) for s in HOLDOUT_SEEDS]
    spent = run_set("spent", tenants=3, extensions=20, days=9, attacks=("direct-irsf",))
    assert [r.seed for r in spent] == list(SPENT_SEEDS)


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
    assert data["days"] == 14 and data["set"] == "tuning"
    assert 30 <= data["extensions"] <= 50
    bad = cli(tmp_path / "none", "simulate", "--attack", "teleport", check=False)
    assert bad.returncode != 0 and "unknown attack 'teleport'" in bad.stderr
    bad = cli(tmp_path / "none", "simulate", "--set", "secret", check=False)
    assert bad.returncode != 0 and "unknown set 'secret'" in bad.stderr
