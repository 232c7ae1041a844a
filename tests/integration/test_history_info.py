"""History-Info (RFC 7044) on diverted calls, checked by real SIPp phones and carrier.

Each diversion adds an entry to the B leg's History-Info: the original target first
(``index=1``), then every new target one level deeper, with the RFC 4458 ``cause`` and
``mp`` pointing at the entry it was diverted from.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    PbxProcess,
    cli,
    finish_sipp_uas,
    free_port,
    running_pbx,
    sipp_available,
    start_sipp_uas,
)
from tests.integration.test_calls import call, wait_cdr
from tests.integration.test_forwarding import CARRIER, USERS, register, settle

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS) as server:
        yield server


def test_one_diversion_lists_the_original_target_and_the_new_one(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    cli(pbx.data_dir, "forward", "set", "2000", "--always", "3000")
    settle()
    port = register(pbx, "3000", tmp_path)
    phone = start_sipp_uas("call_uas_history_one.xml", port, tmp_path)
    ok, failed, output = call(pbx, tmp_path, dialed="2000")
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    assert finish_sipp_uas(phone, tmp_path).successful == 1  # History-Info as expected
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["forwarded_by"], row["callee"]) == ("answered", "2000", "3000")


def test_a_chain_shows_both_diversions_at_the_carrier(pbx: PbxProcess, tmp_path: Path) -> None:
    carrier_port = free_port(CARRIER)
    cli(pbx.data_dir, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port))
    cli(pbx.data_dir, "forward", "set", "2000", "--always", "3000")
    cli(pbx.data_dir, "forward", "set", "3000", "--always", "2025550143")
    settle()
    carrier = start_sipp_uas(
        "call_uas_history_chain.xml", carrier_port, tmp_path, local_ip=CARRIER, name="carrier"
    )
    ok, failed, output = call(pbx, tmp_path, dialed="2000")
    assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
    assert finish_sipp_uas(carrier, tmp_path, name="carrier").successful == 1
    [row] = wait_cdr(pbx)
    assert (row["disposition"], row["forwarded_by"], row["trunk"], row["callee_e164"]) == (
        "answered",
        "2000,3000",
        "carrier",
        "+12025550143",
    )
