"""Instant messages between extensions (MESSAGE, RFC 3428) with real PJSIP phones.

Delivered to the target's registered phone with the sender's number; another tenant's
extension, a number outside and a missing extension all answer the same 404 (nothing
to enumerate, never sent to a carrier); an unregistered extension answers 480; an
oversized body 413.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import PbxProcess, cli, two_tenant_office
from tests.pjsip import Phones, pjsip_phones

USERS = {"1000": "Quartz-Harbor-71x", "1001": "Maple-Orbit-39q", "1002": "Cobalt-Fjord-58k"}


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PbxProcess]:
    data = tmp_path_factory.mktemp("messages") / "data"
    two_tenant_office(data, USERS)
    cli(data, "trunk", "add", "carrier", "--host", "127.0.0.2", "--port", "5099")
    server = PbxProcess(data)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def phones(pbx: PbxProcess) -> Iterator[Phones]:
    with pjsip_phones(pbx.host, pbx.port) as endpoint:
        yield endpoint


def test_a_message_reaches_the_colleagues_phone(phones: Phones) -> None:
    sender, colleague = phones.add("1000", USERS["1000"]), phones.add("1001", USERS["1001"])
    sender.message("1001", "Mr Smith is at the front desk")
    phones.until(lambda: bool(colleague.received), "the colleague's phone shows the message")
    [(from_uri, body)] = colleague.received
    assert body == "Mr Smith is at the front desk"
    assert from_uri.startswith("<sip:1000@") or from_uri.startswith("sip:1000@"), from_uri
    phones.until(lambda: bool(sender.sent), "the sender learns it was delivered")
    assert sender.sent[0][0] == 200, sender.sent


def test_messages_nobody_may_receive_are_refused_alike(phones: Phones) -> None:
    sender = phones.add("1000", USERS["1000"])
    for number in ("2000", "2999", "+12025550143"):  # other tenant's, missing, outside
        sender.message(number, "hello")
    sender.message("1002", "are you there?")  # exists, no phone registered
    sender.message("1001", "x" * 2000)  # too big
    phones.until(lambda: len(sender.sent) == 5, "every message answered")
    assert sender.sent[:3] == [sender.sent[0]] * 3, sender.sent  # one answer, word for word
    assert sender.sent[0][0] == 404, sender.sent
    assert sender.sent[3][0] == 480 and sender.sent[4][0] == 413, sender.sent
