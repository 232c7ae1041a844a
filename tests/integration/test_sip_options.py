"""Option tags with real SIPp peers (RFC 3261 8.2.2.3): a Require the PBX cannot honour is
answered 420 with Unsupported naming just those (100rel, which it performs, is not among
them), and the callee is offered 100rel by the PBX itself (it PRACKs: tests/integration/
test_prack.py) but never the caller's session timers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    SCENARIOS,
    PbxProcess,
    finish_sipp_uas,
    run_sipp,
    running_pbx,
    sipp_available,
    start_sipp_uas,
)
from tests.integration.test_calls import CALLER, USERS, register_callee, target, wait_cdr

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

REQUIRING = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="INVITE requiring an unknown extension: 420 with Unsupported">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[domain] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[field0]@[domain]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[domain]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:[field0]@[local_ip]:[local_port]>
      Require: 100rel, x-unheard-of
      Supported: timer
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <!-- 100rel is performed by the PBX: only the unknown tag is Unsupported -->
  <recv response="420">
    <action>
      <ereg regexp="Unsupported: *x-unheard-of" search_in="msg" check_it="true"
            assign_to="unsupported"/>
    </action>
  </recv>
  <Reference variables="unsupported"/>
  <send>
    <![CDATA[

      ACK sip:[service]@[domain] SIP/2.0
      [last_Via:]
      From: <sip:[field0]@[domain]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS) as server:
        yield server


def test_an_unsupported_require_is_answered_420(pbx: PbxProcess, tmp_path: Path) -> None:
    scenario = tmp_path / "requiring.xml"
    scenario.write_text(REQUIRING)
    result = run_sipp(str(scenario), target(pbx), users=CALLER, extra=["-s", "2000"],
                      workdir=tmp_path)  # fmt: skip
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-2000:]


def test_the_callee_is_offered_100rel_but_not_timers(pbx: PbxProcess, tmp_path: Path) -> None:
    port = register_callee(pbx, tmp_path)
    messages = tmp_path / "callee-messages.log"
    phone = start_sipp_uas(
        "call_uas.xml", port, tmp_path, extra=["-trace_msg", "-message_file", str(messages)]
    )
    text = (SCENARIOS / "call_uac.xml").read_text()
    supporting = "Max-Forwards: 70\n      Supported: 100rel, timer, replaces\n"
    text = text.replace("Max-Forwards: 70\n", supporting)
    caller = tmp_path / "supporting.xml"
    caller.write_text(text)
    result = run_sipp(str(caller), target(pbx), users=CALLER, extra=["-s", "2000"],
                      workdir=tmp_path)  # fmt: skip
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-2000:]
    assert finish_sipp_uas(phone, tmp_path).successful == 1
    invite = re.split(r"\n(?=INVITE sip:)", messages.read_text(errors="replace"))[1]
    head = invite.split("\n\n", 1)[0]
    supported = re.findall(r"^Supported:\s*(.*)$", head, re.M)
    # the PBX PRACKs a callee's reliable provisionals itself; it never refreshes a B leg
    assert supported == ["replaces, 100rel"], head
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "answered"
