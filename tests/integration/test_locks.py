"""Extension locks against real traffic from distinct loopback addresses.

The legitimate phone registers from 127.0.0.5 (network 127.0.0.0/24) before the attack;
attackers use 127.0.1.0/24 and beyond, a trunk 127.0.0.2. Each test runs with the
registrar in the main process and with two registrar workers (``sip.workers = 2``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pbxwarden.sip.message import Response, parse_message
from tests.helpers import (
    SCENARIOS,
    PbxProcess,
    SipClient,
    cli,
    options_request,
    run_sipp,
    running_pbx,
    sipp_available,
    status_of,
    udp_exchange,
)

PASSWORD = "Lantern-Harbor-7731"
PHONE = "127.0.0.5"
TRUNK = "127.0.0.2"


def register(pbx: PbxProcess, source: str, password: str, user: str = "1000") -> int | None:
    """One REGISTER with digest from ``source``; the final status (None: no answer)."""
    client = SipClient((pbx.host, pbx.port), source_ip=source)
    try:
        reply = parse_message(client.register(user, password))
    except TimeoutError:
        return None
    finally:
        client.close()
    return reply.status if isinstance(reply, Response) else None


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def extension(pbx: PbxProcess, number: str = "1000") -> dict[str, object]:
    rows = json.loads(cli(pbx.data_dir, "extension", "list", "--json").stdout)
    return next(r for r in rows if r["number"] == number)


def alerts(pbx: PbxProcess) -> list[dict[str, object]]:
    out = cli(pbx.data_dir, "alerts", "list", "--json").stdout.strip()
    return json.loads(out) if out.startswith("[") else []


def lock_alert(pbx: PbxProcess) -> dict[str, object] | None:
    return next((a for a in alerts(pbx) if a["rule"] == "extension-locked"), None)


@pytest.fixture(params=[0, 2], ids=["main", "workers"])
def pbx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PbxProcess]:
    env = {"PBXWARDEN_SIP__WORKERS": str(request.param)}
    with running_pbx(tmp_path / "data", {"1000": PASSWORD, "2000": "Meadow-Cobalt-5590"}, env) as p:
        yield p


def phone_registered(pbx: PbxProcess) -> None:
    """The phone registers before the attack, and its network is on record."""
    assert register(pbx, PHONE, PASSWORD) == 200
    assert wait_for(
        lambda: "127.0.0.0/24" in cli(pbx.data_dir, "extension", "networks", "--json").stdout
    )


def add_trunk(pbx: PbxProcess) -> None:
    """A carrier at 127.0.0.2, in the phone's /24; restarted so that it is in force."""
    cli(pbx.data_dir, "trunk", "add", "carrier", "--host", TRUNK, "--port", "5099")
    pbx.stop()
    pbx.start(timeout=90)  # a loaded machine starts workers slowly


def test_distributed_guessing_never_cracks_the_password_and_the_phone_keeps_working(
    pbx: PbxProcess,
) -> None:
    phone_registered(pbx)
    attackers = [f"127.0.1.{i}" for i in range(1, 21)]
    # Four guesses from each of twenty addresses, sent by all of them at once in each
    # round; the right password comes late (third round from one, fourth from another),
    # as it would from a cracking tool working down its list.
    guesses = {a: [f"wrong-guess-{r}-{a}" for r in range(4)] for a in attackers}
    guesses["127.0.1.19"][2] = PASSWORD
    guesses["127.0.1.20"][3] = PASSWORD
    answers: list[int | None] = []
    with ThreadPoolExecutor(max_workers=len(attackers)) as pool:
        for round_ in range(4):
            tries = [(a, guesses[a][round_]) for a in attackers]
            answers += pool.map(lambda t: register(pbx, *t), tries)
    assert 200 not in answers, answers
    assert answers.count(403) >= 70, answers  # none banned: four failures each is too few
    # The phone's own network keeps working; the right password from elsewhere does not.
    assert register(pbx, PHONE, PASSWORD) == 200
    assert register(pbx, "127.0.0.44", PASSWORD) == 200  # another phone in the office /24
    assert register(pbx, "127.0.2.1", PASSWORD) == 403
    # Stored, shown, and announced in plain words naming the sources.
    assert wait_for(lambda: extension(pbx)["locked_until"] is not None)
    assert "failed authentications" in str(extension(pbx)["lock_reason"])
    assert wait_for(lambda: lock_alert(pbx) is not None)
    alert = lock_alert(pbx)
    assert alert is not None and alert["severity"] == "critical", alert
    text = json.dumps(alert)
    assert "127.0.1." in text and "extension password 1000" in text and "127.0.0.0/24" in text
    assert extension(pbx, "2000")["locked_until"] is None  # only the guessed one
    # A new password lifts the lock: the phone, moved elsewhere, registers again.
    out = cli(pbx.data_dir, "extension", "password", "1000").stdout
    new = out.split("password:")[1].split()[0]
    assert wait_for(lambda: register(pbx, "127.0.2.1", new) == 200)
    assert register(pbx, "127.0.1.3", PASSWORD) == 403  # the old password is gone
    assert wait_for(lambda: extension(pbx)["locked_until"] is None)


def test_a_lock_survives_a_restart_and_an_admin_can_lift_it(pbx: PbxProcess) -> None:
    for i in range(12):  # never registered: locked everywhere once guessed
        assert register(pbx, f"127.0.3.{i % 4 + 1}", f"wrong-{i}") == 403
    assert register(pbx, "127.0.3.9", PASSWORD) == 403
    assert wait_for(lambda: extension(pbx)["locked_until"] is not None)
    pbx.stop()
    pbx.start(timeout=90)  # a loaded machine starts workers slowly
    assert register(pbx, "127.0.3.9", PASSWORD) == 403  # adopted from the database
    assert "unlocked" in cli(pbx.data_dir, "extension", "unlock", "1000").stdout
    assert wait_for(lambda: register(pbx, "127.0.3.9", PASSWORD) == 200)
    assert "not locked" in cli(pbx.data_dir, "extension", "unlock", "1000").stdout
    log = json.loads(cli(pbx.data_dir, "audit-log", "--json").stdout)
    assert any(e["action"] == "extension.unlock" for e in log)


def call_answered_with(pbx: PbxProcess, workdir: Path, source: str, code: int) -> bool:
    """An authenticated INVITE from 1000 (right password) to 2000, refused with ``code``."""
    path = workdir / f"refused_{code}.xml"
    path.write_text((SCENARIOS / "call_uac_refused.xml.tmpl").read_text().format(code=code))
    result = run_sipp(
        str(path),
        f"{pbx.host}:{pbx.port}",
        users={"1000": PASSWORD},
        extra=["-s", "2000"],
        local_ip=source,
        timeout=15,
        workdir=workdir,
    )
    return result.successful == 1


@pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")
def test_a_locked_extension_cannot_call_from_an_unknown_network(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    phone_registered(pbx)
    for i in range(12):  # REGISTER guesses (answered by a worker, with workers)
        assert register(pbx, f"127.0.5.{i % 3 + 1}", f"wrong-{i}") == 403
    # Locked by the worker at once; the main process (which answers INVITEs) hears of
    # it in the worker's next report, and stores it.
    assert wait_for(lambda: extension(pbx)["locked_until"] is not None)
    # The right password in an INVITE from elsewhere: the wrong password's answer.
    assert call_answered_with(pbx, tmp_path, "127.0.6.1", 403)
    # From the phone's network the call goes on (2000 is not registered: 480).
    assert call_answered_with(pbx, tmp_path, "127.0.0.6", 480)


def carrier_answers(pbx: PbxProcess) -> bool:
    dest = (pbx.host, pbx.port)
    reply = udp_exchange(options_request(dest), dest, timeout=1.0, source_ip=TRUNK)
    return status_of(reply) == 200


def test_guessing_from_a_trunk_address_is_counted_and_locked(pbx: PbxProcess) -> None:
    phone_registered(pbx)
    add_trunk(pbx)
    assert register(pbx, TRUNK, PASSWORD) == 403  # not a place to log in as an extension
    for i in range(34):  # the carrier's address is never banned, but counted
        assert register(pbx, TRUNK, f"wrong-{i}") == 403
    assert carrier_answers(pbx)  # not banned: its inbound calls still get through
    assert wait_for(lambda: extension(pbx)["locked_until"] is not None)
    alert = lock_alert(pbx)
    assert alert is not None and TRUNK in json.dumps(alert)
    assert register(pbx, "127.0.4.1", PASSWORD) == 403  # locked from unknown networks
    assert register(pbx, PHONE, PASSWORD) == 200  # the phone's network still works


def test_an_extension_registers_from_a_trunk_address_only_when_allowed(pbx: PbxProcess) -> None:
    add_trunk(pbx)
    assert register(pbx, TRUNK, "Meadow-Cobalt-5590", "2000") == 403
    assert register(pbx, "127.0.0.7", "Meadow-Cobalt-5590", "2000") == 200  # elsewhere: fine
    out = cli(pbx.data_dir, "extension", "trunk-access", "2000", "--allow").stdout
    assert "may now" in out
    assert wait_for(lambda: register(pbx, TRUNK, "Meadow-Cobalt-5590", "2000") == 200)
    assert extension(pbx, "2000")["trunk_access"] is True
    assert extension(pbx, "1000")["trunk_access"] is False
    cli(pbx.data_dir, "extension", "trunk-access", "2000", "--deny")
    assert wait_for(lambda: register(pbx, TRUNK, "Meadow-Cobalt-5590", "2000") == 403)
    log = json.loads(cli(pbx.data_dir, "audit-log", "--json").stdout)
    changes = [e for e in log if e["action"] == "extension.trunk_access"]
    assert len(changes) == 2 and {c["after"]["trunk_access"] for c in changes} == {True, False}
