"""Records an operator can read: call records, registrations and the server's counters
fit an 80- or 100-column terminal, with ISO 8601 times; everything is in --all, --json
and the CSV."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.helpers import PbxProcess, cli, free_port, run_sipp, running_pbx, sipp_available
from tests.integration.test_calls import USERS, refused_scenario

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

ISO = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b")
INTERNATIONAL = "011390612345678"


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PbxProcess]:
    """A server with a registered phone and two call records (blocked, unavailable)."""
    work = tmp_path_factory.mktemp("records")
    with running_pbx(work / "data", USERS) as server:
        target = f"{server.host}:{server.port}"
        reg = run_sipp(
            "register.xml",
            target,
            users={"2000": USERS["2000"]},
            local_port=free_port(),
            workdir=work,
        )
        assert reg.successful == 1, reg.output
        caller = {"1000": USERS["1000"]}
        for code, dialled in ((403, INTERNATIONAL), (480, "1000")):
            done = run_sipp(
                str(refused_scenario(work, code)),
                target,
                users=caller,
                extra=["-s", dialled],
                workdir=work,
            )
            assert done.successful == 1, done.output
        deadline = time.monotonic() + 10  # registrations are written back within a second
        while time.monotonic() < deadline and not records(server, "registrations"):
            time.sleep(0.2)
        yield server


def records(pbx: PbxProcess, *command: str) -> list[dict[str, object]]:
    out = cli(pbx.data_dir, *command, "--json").stdout
    return list(json.loads(out)) if out.strip().startswith(("[", "{")) else []


def shown(pbx: PbxProcess, width: int, *command: str) -> list[str]:
    """The command's lines on a terminal ``width`` columns wide."""
    out = cli(pbx.data_dir, *command, env={"COLUMNS": str(width)}).stdout
    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    return lines


@pytest.mark.parametrize("width", [80, 100])
def test_call_records_fit_and_show_iso_times(pbx: PbxProcess, width: int) -> None:
    rows = records(pbx, "cdr")
    assert [r["sip_code"] for r in rows] == [403, 480]
    lines = shown(pbx, width, "cdr")
    header = next(line for line in lines if "start" in line)
    assert header.split() == ["start", "from", "to", "result", "length", "guard"]
    body = [line for line in lines if ISO.search(line)]
    assert len(body) == 2
    blocked, unavailable = body
    assert INTERNATIONAL in blocked and "blocked 403" in blocked and "deny" in blocked
    assert "unavailable 480" in unavailable
    for row, line in zip(rows, body, strict=True):
        started = datetime.fromisoformat(ISO.findall(line)[0])
        assert abs(started.timestamp() - float(str(row["start_ts"]))) < 1


def test_all_columns_and_json_have_everything(pbx: PbxProcess) -> None:
    wide = "\n".join(shown(pbx, 400, "cdr", "--all"))
    for column in ("reasons", "callee_e164", "dest_country", "number_type", "score", "kind"):
        assert column in wide
    assert "+390612345678" in wide and "international call" in wide
    assert len(ISO.findall(wide)) >= 4  # start and end of each, answer_ts empty
    [blocked, _] = records(pbx, "cdr")
    assert isinstance(blocked["start_ts"], float) and blocked["dest_country"] == "IT"


def test_csv_has_every_column_with_iso_8601_times(pbx: PbxProcess) -> None:
    rows = records(pbx, "cdr")
    out = cli(pbx.data_dir, "cdr", "--csv").stdout
    table = list(csv.DictReader(io.StringIO(out)))
    assert len(table) == 2 and list(table[0]) == list(rows[0])
    for row, line in zip(rows, table, strict=True):
        for key in ("start_ts", "end_ts"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line[key])
            at = datetime.fromisoformat(line[key]).timestamp()
            assert abs(at - float(str(row[key]))) < 0.001
        assert line["answer_ts"] == ""  # never answered
        assert line["reasons"] == row["reasons"]


@pytest.mark.parametrize("width", [80, 100])
def test_registrations_fit(pbx: PbxProcess, width: int) -> None:
    [reg] = records(pbx, "registrations")
    lines = shown(pbx, width, "registrations")
    header = next(line for line in lines if line.startswith("ext"))
    assert header.split() == ["ext", "id", "from", "phone", "since"]
    [row] = [line for line in lines if line.startswith("2000 ")]
    assert f"UDP {reg['address']}" in row and str(reg["id"]) in row  # never cut
    assert "SIPp pbxwarden" in row
    assert re.search(r"\b\d{4}-\d\d-\d\dT\d\d:\d\dZ\b", row)  # since, to the minute
    everything = "\n".join(shown(pbx, 400, "registrations", "--all"))
    assert str(reg["contact"]) in everything and "expires_in" in everything


@pytest.mark.parametrize("width", [80, 100])
def test_stats_fit_and_name_what_they_count(pbx: PbxProcess, width: int) -> None:
    counters = json.loads(cli(pbx.data_dir, "stats", "--json").stdout)
    lines = shown(pbx, width, "stats")
    text = "\n".join(lines)
    assert re.search(r"registered contacts\s+1\b", text)
    assert re.search(r"calls in progress\s+0\b", text)
    assert re.search(r"overloaded\s+no\b", text)
    assert re.search(rf"SIP messages received\s+{counters['received']}\b", text), text
    assert counters["received"] > 0 and counters["bindings"] == 1
    everything = "\n".join(shown(pbx, width, "stats", "--all"))
    for key in ("transactions", "parse_errors", "registers_ok", "sip_core"):
        assert key in everything
