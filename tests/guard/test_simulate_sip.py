"""`pbxwarden simulate --sip`: the attacks played through the real server and SIPp."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import cli


@pytest.mark.timeout(330)
@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp (sip-tester) not installed")
def test_sip_simulation_stops_the_attacks_and_lets_legit_calls_through(tmp_path: Path) -> None:
    proc = cli(tmp_path, "simulate", "--sip", "--json", timeout=300)  # a slow, loaded host
    report = json.loads(proc.stdout)
    scenarios = {s["name"]: s for s in report["scenarios"]}
    for attack in ("diversion-premium", "direct-irsf"):
        result = scenarios[attack]
        assert result["attempts"] > 0, result
        assert result["reached_carrier"] == 0, result  # not one call cost money
        assert result["refused"] == result["attempts"], result
        assert result["alerts"] >= 1, result
    assert scenarios["diversion-premium"]["suspended"] is True
    legit = scenarios["legit-national"]
    assert legit["completed"] == legit["attempts"] == report["legit_completed"] > 0, legit
    assert legit["reached_carrier"] == legit["attempts"], legit  # the carrier does count


def test_sip_simulation_without_sipp_fails_cleanly(tmp_path: Path) -> None:
    proc = cli(tmp_path, "simulate", "--sip", env={"PATH": "/nonexistent"}, check=False)
    assert proc.returncode == 1
    assert "SIPp not found: apt-get install sip-tester" in proc.stderr
