"""The guard's spend caps and suspensions for two pbxwarden nodes as one PBX: real
servers sharing a real redis-server, SIPp as the phones and as the carrier.

Each node has its own data directory (its own SQLite database), so Redis is the only
path between them. Node A listens on 127.0.10.1, node B on 127.0.10.2, the carrier on
127.0.10.9; the phones call from other 127.0.10.x addresses. (Node start-up as in
tests/integration/test_cluster.py.)
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pbxwarden.control import ControlError, ask
from tests.cluster_nodes import start_node
from tests.helpers import (
    PbxProcess,
    cli,
    finish_sipp_uac,
    finish_sipp_uas,
    free_port,
    run_sipp,
    sipp_available,
    start_sipp_uac,
    start_sipp_uas,
    wait_for,
)
from tests.integration.test_calls import refused_scenario
from tests.redis_server import RedisServer

# Two servers, Redis, SIPp and many CLI runs each: minutes on a loaded host.
pytestmark = [
    pytest.mark.redis,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
]

PASSWORD = "Lantern-Harbor-7731"
CALLEE = ("2000", "Meadow-Cobalt-5590")
DEAR = "2025550143"  # priced at 60 a minute by the rate table below: 1.00 a second
CAP = 8.0  # the extension's hourly spend cap, set by the administrator
CARRIER = "127.0.10.9"
PROPAGATION_BOUND = 1.0  # seconds: a suspension on one node in force on every node


def node(
    root: Path,
    name: str,
    host: str,
    redis: RedisServer,
    prepare: Callable[[Path], None] | None = None,
    **env: str,
) -> PbxProcess:
    users = {"1000": PASSWORD, CALLEE[0]: CALLEE[1]}
    return start_node(root, name, host, redis, users, prepare, **env)


@pytest.fixture
def carrier_port() -> int:
    return free_port(CARRIER)


@pytest.fixture
def nodes(
    tmp_path: Path, redis_server: RedisServer, carrier_port: int
) -> Iterator[tuple[PbxProcess, PbxProcess]]:
    rates = tmp_path / "rates.toml"
    rates.write_text('currency = "USD"\n[prefixes]\n"+1202555" = 60.0\n')

    def prepare(data: Path) -> None:
        cli(data, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port))
        cli(data, "tenant", "policy", "default", "--set", f"spend_per_hour={CAP}")

    started: list[PbxProcess] = []
    try:
        for name, host in (("a", "127.0.10.1"), ("b", "127.0.10.2")):
            started.append(
                node(
                    tmp_path,
                    name,
                    host,
                    redis_server,
                    prepare,
                    PBXWARDEN_GUARD__RATES_FILE=str(rates),
                )
            )
        yield started[0], started[1]
    finally:
        for pbx in started:
            pbx.stop()


def stats(pbx: PbxProcess) -> dict[str, object]:
    try:
        return ask(pbx.data_dir, {"cmd": "stats"}, timeout=5.0)
    except ControlError:
        return {}


def both_up(a: PbxProcess, b: PbxProcess) -> bool:
    return all(stats(p).get("redis") == "up" for p in (a, b))


def cdrs(pbx: PbxProcess) -> list[dict[str, object]]:
    """The node's closed call records (its own database, faster than a CLI process)."""
    with contextlib.closing(sqlite3.connect(pbx.data_dir / "pbxwarden.db", timeout=10)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM cdrs WHERE end_ts IS NOT NULL ORDER BY id").fetchall()
        return [dict(r) for r in rows]


def logged_at(pbx: PbxProcess, text: str, number: str = "1000") -> float | None:
    """When the node's log first says ``text`` about the extension."""
    for line in pbx.log().splitlines():
        if text in line and f"extension={number} " in line + " ":
            stamp = line.split()[0].rstrip("Z")
            return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
    return None


def suspended(pbx: PbxProcess, number: str = "1000") -> object:
    """The extension's stored suspension on the node (None when not suspended)."""
    listed = json.loads(cli(pbx.data_dir, "extension", "list", "--json").stdout)
    return {e["number"]: e["suspended"] for e in listed}[number]


def caller(
    pbx: PbxProcess,
    work: Path,
    source: str,
    scenario: str,
    *extra: str,
    user: tuple[str, str] = ("1000", PASSWORD),
) -> tuple[Path, subprocess.Popen[bytes]]:
    work.mkdir()
    proc = start_sipp_uac(
        scenario,
        f"{pbx.host}:{pbx.port}",
        users={user[0]: user[1]},
        calls=1,
        local_ip=source,
        extra=["-s", DEAR, *extra],
        workdir=work,
        timeout=45,
    )
    return work, proc


def call_once(
    pbx: PbxProcess, work: Path, source: str, user: tuple[str, str] = ("1000", PASSWORD)
) -> int:
    """One costly call of the extension (held 0.5 s if answered); the successful
    count: 1 whether answered or refused, as the scenario takes both."""
    path, proc = caller(pbx, work, source, "call_uac_hold_or_refused.xml", "-d", "500", user=user)
    return finish_sipp_uac(proc, path, timeout=60).successful


def test_a_spend_cap_reached_by_two_nodes_together_cuts_the_calls(
    nodes: tuple[PbxProcess, PbxProcess], tmp_path: Path, carrier_port: int
) -> None:
    """Extension 1000 calls a number priced at 1.00 a second through each node at once;
    its hourly cap is 8.00. Each node alone would let its call run for 8 s; together they
    pass the cap after about 4 s, and each node cuts its own call with the reason, its
    own share under the cap. The next attempt, on either node, is refused."""
    a, b = nodes
    assert wait_for(lambda: both_up(a, b))
    carrier = start_sipp_uas(
        "call_uas.xml", carrier_port, tmp_path, local_ip=CARRIER, calls=2, timeout=60
    )
    try:
        callers = [
            caller(pbx, tmp_path / f"caller-{pbx.host}", source, "call_uac_wait_bye.xml")
            for pbx, source in ((a, "127.0.10.21"), (b, "127.0.10.22"))
        ]
        for work, proc in callers:  # each ends with the PBX's BYE
            result = finish_sipp_uac(proc, work, timeout=90)
            assert result.successful == 1, result.output + a.log()[-3000:] + b.log()[-3000:]
        assert finish_sipp_uas(carrier, tmp_path, timeout=30).successful == 2
        assert wait_for(lambda: len(cdrs(a)) == 1 and len(cdrs(b)) == 1)
        [row_a], [row_b] = cdrs(a), cdrs(b)
        for row in (row_a, row_b):
            assert row["disposition"] == "answered", row
            reasons = str(row["reasons"])
            assert "spend cap: extension 1000 spent an estimated" in reasons, reasons
            assert "on the PBX's nodes together" in reasons, reasons
        costs = [float(str(row_a["cost"])), float(str(row_b["cost"]))]
        print(f"cut with {costs[0]:.2f} on node A and {costs[1]:.2f} on node B (cap {CAP:g})")
        assert max(costs) < CAP, costs  # each alone under the cap: not cut by it
        assert sum(costs) >= CAP, costs
        # The next attempt, on either node: refused by the cap, with the reason.
        for pbx, source in ((b, "127.0.10.23"), (a, "127.0.10.24")):
            assert call_once(pbx, tmp_path / f"again-{pbx.host}", source) == 1
            assert wait_for(lambda pbx=pbx: len(cdrs(pbx)) == 2)
            refused = cdrs(pbx)[-1]
            assert refused["disposition"] == "blocked", refused
            reasons = str(refused["reasons"])
            assert "spent an estimated" in reasons and "nodes together" in reasons, reasons
        assert stats(a).get("cluster_spend_redis") == "up"
    finally:
        finish_sipp_uas(carrier, tmp_path, timeout=1)


def test_a_suspension_on_one_node_refuses_on_the_other_within_a_second_and_a_lift_there_lifts_it(
    nodes: tuple[PbxProcess, PbxProcess], tmp_path: Path, carrier_port: int
) -> None:
    a, b = nodes
    assert wait_for(lambda: both_up(a, b))
    began = time.time()
    cli(a.data_dir, "extension", "suspend", "1000", "--reason", "stolen phone")
    returned = time.time()
    assert wait_for(lambda: logged_at(b, "extension suspension adopted") is not None)
    in_force_a = logged_at(a, "extension suspension in force here, shared")
    adopted_b = logged_at(b, "extension suspension adopted")
    assert in_force_a is not None and adopted_b is not None
    print(
        f"suspension in force on A, adopted by B {adopted_b - in_force_a:.3f} s later; "
        f"{adopted_b - returned:.3f} s after the CLI returned (CLI itself "
        f"{returned - began:.3f} s; A reads its database once a second)"
    )
    assert adopted_b - in_force_a < PROPAGATION_BOUND
    # B refuses the extension's costly calls, with the reason, and stored it.
    assert call_once(b, tmp_path / "suspended-b", "127.0.10.31") == 1
    assert wait_for(lambda: len(cdrs(b)) == 1)
    [refused] = cdrs(b)
    assert refused["disposition"] == "blocked", refused
    assert "suspended (stolen phone)" in str(refused["reasons"]), refused
    assert "stolen phone" in str(suspended(b))
    # An administrator lifts it on B: A lets the extension call again.
    assert "resumed" in cli(b.data_dir, "extension", "resume", "1000").stdout
    assert wait_for(lambda: logged_at(a, "extension suspension lift adopted") is not None)
    carrier = start_sipp_uas(
        "call_uas.xml", carrier_port, tmp_path, local_ip=CARRIER, calls=1, timeout=60
    )
    try:
        assert call_once(a, tmp_path / "lifted-a", "127.0.10.32") == 1
        assert finish_sipp_uas(carrier, tmp_path, timeout=30).successful == 1
    finally:
        finish_sipp_uas(carrier, tmp_path, timeout=1)
    assert wait_for(lambda: len(cdrs(a)) == 1)
    assert cdrs(a)[0]["disposition"] == "answered", cdrs(a)
    assert suspended(a) is None and suspended(b) is None


def test_the_guards_own_suspension_on_one_node_refuses_on_the_other_within_a_second(
    nodes: tuple[PbxProcess, PbxProcess], tmp_path: Path
) -> None:
    """The diversion attack on node A (a hijacked phone answers 1000's call with a 302
    to a premium-rate number): A's guard refuses the diverted leg and suspends 2000 on
    corroborated fraud; node B adopts it within a second and refuses 2000's costly calls."""
    a, b = nodes
    assert wait_for(lambda: both_up(a, b))
    phone = "127.0.0.40"  # register.xml checks a 127.0.0.x contact
    port = free_port(phone)
    work = tmp_path / "phone"
    work.mkdir()
    reg = run_sipp(
        "register.xml",
        f"{a.host}:{a.port}",
        users={CALLEE[0]: CALLEE[1]},
        local_ip=phone,
        local_port=port,
        workdir=work,
    )
    assert reg.successful == 1, reg.output
    hijacked = start_sipp_uas(
        "call_uas_redirect.xml",
        port,
        work,
        local_ip=phone,
        extra=["-key", "target", "19005550123"],
    )
    try:
        attacker = tmp_path / "attack"
        attacker.mkdir()
        result = run_sipp(
            str(refused_scenario(attacker, 403)),
            f"{a.host}:{a.port}",
            users={"1000": PASSWORD},
            local_ip="127.0.10.41",
            extra=["-s", CALLEE[0]],
            workdir=attacker,
        )
        assert result.successful == 1, result.output + a.log()[-3000:]
    finally:
        finish_sipp_uas(hijacked, work, timeout=10)
    assert wait_for(lambda: logged_at(b, "extension suspension adopted", "2000") is not None)
    in_force_a = logged_at(a, "extension suspension in force here, shared", "2000")
    adopted_b = logged_at(b, "extension suspension adopted", "2000")
    assert in_force_a is not None and adopted_b is not None
    print(f"guard's suspension on A adopted by B {adopted_b - in_force_a:.3f} s later")
    assert adopted_b - in_force_a < PROPAGATION_BOUND
    assert call_once(b, tmp_path / "stolen-b", "127.0.10.42", user=CALLEE) == 1
    assert wait_for(lambda: len(cdrs(b)) == 1)
    [refused] = cdrs(b)
    assert refused["disposition"] == "blocked", refused
    assert "is suspended" in str(refused["reasons"]) and "premium" in str(refused["reasons"])
    assert wait_for(lambda: "premium" in str(suspended(b, "2000")))  # stored on B too
