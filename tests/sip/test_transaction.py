"""Transaction layer state machines (RFC 3261 section 17, RFC 6026), driven by a fake clock."""

from __future__ import annotations

import pytest

from pbxwarden.sip.message import Request, Response, make_response, parse_message
from pbxwarden.sip.transaction import (
    Action,
    Address,
    DeliverRequest,
    DeliverResponse,
    SendMessage,
    State,
    TimerConfig,
    TransactionError,
    TransactionKey,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    absorbs,
    client_key,
    response_destination,
    server_key,
)

T1, T2, T4 = 0.5, 4.0, 5.0
PEER_UDP = Address("UDP", "198.51.100.7", 5060)
PEER_TCP = Address("TCP", "198.51.100.7", 5060)
BRANCH = "z9hG4bK74bf9"


def req(
    method: str = "INVITE",
    *,
    branch: str | None = BRANCH,
    transport: str = "UDP",
    sent_by: str = "198.51.100.7:5060",
    via_params: str = "",
    extra_via: str | None = None,
    to_tag: str | None = None,
    cseq: int = 314159,
    cseq_method: str | None = None,
    call_id: str = "a84b4c76e66710",
    uri: str = "sip:bob@example.com",
    extra: str = "",
) -> Request:
    branch_param = f";branch={branch}" if branch is not None else ""
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {sent_by}{branch_param}{via_params}",
    ]
    if extra_via is not None:
        lines.append(f"Via: {extra_via}")
    lines += [
        "Max-Forwards: 69",
        "Route: <sip:p1.example.com;lr>",
        "Route: <sip:p2.example.com;lr>",
        "From: Alice <sip:alice@example.com>;tag=1928301774",
        "To: Bob <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:alice@198.51.100.7>",
        extra,
        "Content-Length: 0",
    ]
    text = "\r\n".join(line for line in lines if line) + "\r\n\r\n"
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def resp(request: Request, status: int, to_tag: str = "as83kd9bs") -> Response:
    return make_response(request, status, to_tag=to_tag)


def sent(actions: list[Action]) -> list[Request | Response]:
    return [a.message for a in actions if isinstance(a, SendMessage)]


def run_timers(layer: TransactionLayer, until: float) -> list[tuple[float, list[Action]]]:
    """Fire every timer up to ``until``, exactly at its deadline; returns (time, actions)."""
    fired: list[tuple[float, list[Action]]] = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        fired.append((deadline, layer.handle_timers(deadline)))
    return fired


def times_of(fired: list[tuple[float, list[Action]]], kind: type) -> list[float]:
    return [t for t, actions in fired if any(isinstance(a, kind) for a in actions)]


# -- basics ---------------------------------------------------------------------------


def test_address_reliable() -> None:
    assert not Address("UDP", "h", 1).reliable
    assert Address("TCP", "h", 1).reliable
    assert Address("TLS", "h", 1).reliable
    assert Address("tcp", "h", 1).reliable


def test_timer_config_defaults_and_validation() -> None:
    cfg = TimerConfig()
    assert (cfg.t1, cfg.t2, cfg.t4) == (0.5, 4.0, 5.0)
    with pytest.raises(ValueError):
        TimerConfig(t1=0)
    with pytest.raises(ValueError):
        TimerConfig(t1=5, t2=4)


def test_server_key_rfc3261() -> None:
    invite = req()
    key = server_key(invite)
    assert key == TransactionKey(
        server=True, method="INVITE", branch=BRANCH, sent_by=("198.51.100.7", 5060)
    )
    assert server_key(req("ACK")) == key  # ACK maps to INVITE
    assert server_key(req("CANCEL")) != key
    assert server_key(req(sent_by="198.51.100.7:5070")) != key
    assert server_key(req(branch="z9hG4bKother")) != key
    # Different Call-ID, same branch and sent-by: the same transaction per 17.2.3.
    assert server_key(req(call_id="zzz")) == key


def test_client_key() -> None:
    invite = req()
    assert client_key(invite) == TransactionKey(server=False, method="INVITE", branch=BRANCH)
    assert client_key(resp(invite, 200)) == client_key(invite)
    assert client_key(req("CANCEL")) != client_key(invite)


def test_empty_layer() -> None:
    layer = TransactionLayer()
    assert layer.next_deadline() is None
    assert layer.handle_timers(1e9) == []
    assert len(layer) == 0 and layer.active_count == 0


# -- INVITE client --------------------------------------------------------------------


def test_invite_client_timer_a_exact_times_then_timer_b() -> None:
    layer = TransactionLayer()
    invite = req()
    key, actions = layer.send_request(invite, PEER_UDP, 0.0)
    assert actions == [SendMessage(invite, PEER_UDP)]
    assert layer.state(key) is State.CALLING
    fired = run_timers(layer, 100.0)
    # Timer A: T1, then doubling without a T2 cap: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5.
    assert times_of(fired, SendMessage) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    for _, acts in fired[:-1]:
        assert acts == [SendMessage(invite, PEER_UDP)]
    assert fired[-1] == (32.0, [TransactionTimeout(key), TransactionTerminated(key)])
    assert layer.next_deadline() is None
    assert len(layer) == 0


def test_invite_client_custom_t1() -> None:
    layer = TransactionLayer(TimerConfig(t1=0.1))
    layer.send_request(req(), PEER_UDP, 10.0)
    fired = run_timers(layer, 100.0)
    assert times_of(fired, SendMessage) == pytest.approx([10.1, 10.3, 10.7, 11.5, 13.1, 16.3])
    assert times_of(fired, TransactionTimeout) == pytest.approx([16.4])


def test_invite_client_tcp_no_timer_a_but_timer_b() -> None:
    layer = TransactionLayer()
    key, _ = layer.send_request(req(transport="TCP"), PEER_TCP, 0.0)
    assert layer.next_deadline() == 32.0
    assert layer.handle_timers(31.9) == []
    assert layer.handle_timers(32.0) == [TransactionTimeout(key), TransactionTerminated(key)]


def test_invite_client_provisional_stops_retransmission_and_timer_b() -> None:
    layer = TransactionLayer()
    invite = req()
    key, _ = layer.send_request(invite, PEER_UDP, 0.0)
    assert sent(layer.handle_timers(0.5)) == [invite]
    ringing = resp(invite, 180)
    assert layer.receive_response(ringing, 0.7) == [DeliverResponse(ringing, key)]
    assert layer.state(key) is State.PROCEEDING
    assert layer.next_deadline() is None
    assert layer.handle_timers(1000.0) == []
    # More provisionals still reach the TU.
    progress = resp(invite, 183)
    assert layer.receive_response(progress, 1.0) == [DeliverResponse(progress, key)]
    assert layer.state(key) is State.PROCEEDING


def test_invite_client_non_2xx_generates_ack() -> None:
    layer = TransactionLayer()
    invite = req(extra_via="SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKdownstream")
    key, _ = layer.send_request(invite, PEER_UDP, 0.0)
    busy = resp(invite, 486)
    actions = layer.receive_response(busy, 1.0)
    assert len(actions) == 2
    ack_action, deliver = actions
    assert deliver == DeliverResponse(busy, key)
    assert isinstance(ack_action, SendMessage) and ack_action.dest == PEER_UDP
    ack = ack_action.message
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert str(ack.uri) == str(invite.uri)
    assert ack.call_id == invite.call_id
    assert str(ack.from_) == str(invite.from_)
    assert str(ack.to) == str(busy.to) and ack.to.tag == "as83kd9bs"
    assert (ack.cseq.number, ack.cseq.method) == (314159, "ACK")
    assert [str(v) for v in ack.via] == [str(invite.via[0])]
    assert ack.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert ack.body == b""
    assert ack.max_forwards == 69
    # It serializes to a valid message.
    reparsed = parse_message(ack.to_bytes())
    assert isinstance(reparsed, Request) and reparsed.method == "ACK"
    assert layer.state(key) is State.COMPLETED


def test_invite_client_completed_resends_ack_then_timer_d() -> None:
    layer = TransactionLayer()
    invite = req()
    key, _ = layer.send_request(invite, PEER_UDP, 0.0)
    busy = resp(invite, 486)
    first = sent(layer.receive_response(busy, 1.0))
    assert len(first) == 1
    ack = first[0]
    # The 486 retransmitted: ACK re-sent (same object), nothing for the TU.
    assert layer.receive_response(resp(invite, 486), 1.5) == [SendMessage(ack, PEER_UDP)]
    assert layer.receive_response(resp(invite, 180), 1.6) == []
    # Timer A/B were cancelled: only Timer D (32 s) is left.
    assert layer.next_deadline() == 33.0
    assert layer.handle_timers(32.9) == []
    assert layer.handle_timers(33.0) == [TransactionTerminated(key)]
    assert layer.next_deadline() is None
    # Now a late 486 is stray and dropped.
    assert layer.receive_response(resp(invite, 486), 40.0) == []


def test_invite_client_non_2xx_over_tcp_terminates_at_once() -> None:
    layer = TransactionLayer()
    invite = req(transport="TCP")
    key, _ = layer.send_request(invite, PEER_TCP, 0.0)
    busy = resp(invite, 603)
    actions = layer.receive_response(busy, 1.0)
    assert isinstance(actions[0], SendMessage)
    assert actions[1:] == [DeliverResponse(busy, key), TransactionTerminated(key)]
    assert len(layer) == 0 and layer.next_deadline() is None


def test_invite_client_2xx_accepted_then_timer_m() -> None:
    layer = TransactionLayer()
    invite = req()
    key, _ = layer.send_request(invite, PEER_UDP, 0.0)
    layer.receive_response(resp(invite, 180), 0.2)
    ok = resp(invite, 200)
    assert layer.receive_response(ok, 2.0) == [DeliverResponse(ok, key)]
    assert layer.state(key) is State.ACCEPTED
    # Retransmitted 2xx and a 2xx from another fork both reach the TU (RFC 6026).
    again = resp(invite, 200)
    assert layer.receive_response(again, 2.5) == [DeliverResponse(again, key)]
    fork = resp(invite, 200, to_tag="otherfork")
    assert layer.receive_response(fork, 3.0) == [DeliverResponse(fork, key)]
    # Non-2xx and provisionals are discarded in Accepted.
    assert layer.receive_response(resp(invite, 486), 3.1) == []
    assert layer.receive_response(resp(invite, 183), 3.2) == []
    # Timer M = 64*T1 from the first 2xx, for UDP and TCP alike.
    assert layer.next_deadline() == 34.0
    assert layer.handle_timers(34.0) == [TransactionTerminated(key)]
    late = resp(invite, 200)
    assert layer.receive_response(late, 35.0) == [DeliverResponse(late, key, stray=True)]


def test_invite_client_2xx_in_calling_cancels_a_and_b() -> None:
    layer = TransactionLayer()
    invite = req()
    key, _ = layer.send_request(invite, PEER_UDP, 0.0)
    layer.receive_response(resp(invite, 200), 0.3)
    fired = run_timers(layer, 100.0)
    assert fired == [(32.3, [TransactionTerminated(key)])]  # Timer M only


def test_invite_client_timer_m_over_tcp() -> None:
    layer = TransactionLayer()
    invite = req(transport="TCP")
    key, _ = layer.send_request(invite, PEER_TCP, 0.0)
    layer.receive_response(resp(invite, 200), 1.0)
    assert layer.state(key) is State.ACCEPTED
    assert layer.next_deadline() == 33.0


def test_stray_responses() -> None:
    layer = TransactionLayer()
    invite = req()
    ok = resp(invite, 200)
    assert layer.receive_response(ok, 0.0) == [
        DeliverResponse(ok, TransactionKey(server=False, method="INVITE", branch=BRANCH), True)
    ]
    assert layer.receive_response(resp(invite, 180), 0.0) == []
    assert layer.receive_response(resp(invite, 486), 0.0) == []
    assert layer.receive_response(resp(req("BYE"), 200), 0.0) == []


# -- non-INVITE client ----------------------------------------------------------------


def test_non_invite_client_timer_e_capped_at_t2_then_timer_f() -> None:
    layer = TransactionLayer()
    options = req("OPTIONS")
    key, actions = layer.send_request(options, PEER_UDP, 0.0)
    assert actions == [SendMessage(options, PEER_UDP)]
    assert layer.state(key) is State.TRYING
    fired = run_timers(layer, 100.0)
    # Intervals 0.5, 1, 2, then capped at T2 = 4.
    assert times_of(fired, SendMessage) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-1] == (32.0, [TransactionTimeout(key), TransactionTerminated(key)])
    assert layer.next_deadline() is None and len(layer) == 0


def test_non_invite_client_timer_e_at_t2_in_proceeding() -> None:
    layer = TransactionLayer()
    bye = req("BYE")
    key, _ = layer.send_request(bye, PEER_UDP, 0.0)
    assert sent(layer.handle_timers(0.5)) == [bye]  # next E due at 1.5
    trying = resp(bye, 100)
    assert layer.receive_response(trying, 1.0) == [DeliverResponse(trying, key)]
    assert layer.state(key) is State.PROCEEDING
    another = resp(bye, 180)
    assert layer.receive_response(another, 1.1) == [DeliverResponse(another, key)]
    fired = run_timers(layer, 100.0)
    # The pending E fires as scheduled, then every T2 until Timer F.
    assert times_of(fired, SendMessage) == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert times_of(fired, TransactionTimeout) == [32.0]


def test_non_invite_client_completed_absorbs_then_timer_k() -> None:
    layer = TransactionLayer()
    register = req("REGISTER")
    key, _ = layer.send_request(register, PEER_UDP, 0.0)
    layer.receive_response(resp(register, 100), 0.1)
    ok = resp(register, 200)
    assert layer.receive_response(ok, 2.0) == [DeliverResponse(ok, key)]
    assert layer.state(key) is State.COMPLETED
    assert layer.receive_response(resp(register, 200), 2.5) == []
    assert layer.receive_response(resp(register, 401), 2.6) == []
    # E and F cancelled; Timer K = T4.
    assert run_timers(layer, 100.0) == [(7.0, [TransactionTerminated(key)])]


def test_non_invite_client_tcp() -> None:
    layer = TransactionLayer()
    bye = req("BYE", transport="TCP")
    key, _ = layer.send_request(bye, PEER_TCP, 0.0)
    assert layer.next_deadline() == 32.0  # no Timer E, Timer F only
    ok = resp(bye, 200)
    assert layer.receive_response(ok, 1.0) == [DeliverResponse(ok, key), TransactionTerminated(key)]
    assert len(layer) == 0 and layer.next_deadline() is None


def test_send_request_validation() -> None:
    layer = TransactionLayer()
    with pytest.raises(ValueError):
        layer.send_request(req("ACK"), PEER_UDP, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(req(branch="1234"), PEER_UDP, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(req(branch=None), PEER_UDP, 0.0)
    layer.send_request(req(), PEER_UDP, 0.0)
    with pytest.raises(TransactionError):
        layer.send_request(req(), PEER_UDP, 0.0)


# -- INVITE server --------------------------------------------------------------------


def test_invite_server_automatic_100_trying() -> None:
    layer = TransactionLayer()
    invite = req(extra="Timestamp: 54")
    actions = layer.receive_request(invite, PEER_UDP, 0.0)
    key = server_key(invite)
    assert actions == [DeliverRequest(invite, PEER_UDP, key)]
    assert layer.state(key) is State.PROCEEDING
    assert layer.get_request(key) is invite
    # Retransmission before any response: nothing to re-send, nothing for the TU.
    assert layer.receive_request(req(extra="Timestamp: 54"), PEER_UDP, 0.1) == []
    assert layer.next_deadline() == pytest.approx(0.2)
    assert layer.handle_timers(0.19) == []
    out = layer.handle_timers(0.2)
    assert len(out) == 1 and isinstance(out[0], SendMessage) and out[0].dest == PEER_UDP
    trying = out[0].message
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.to.tag is None
    assert trying.headers.get("Timestamp") == "54"
    # Now a retransmission re-sends the 100.
    assert layer.receive_request(req(), PEER_UDP, 0.6) == [SendMessage(trying, PEER_UDP)]


def test_invite_server_tu_answers_quickly_no_auto_100() -> None:
    layer = TransactionLayer()
    invite = req()
    layer.receive_request(invite, PEER_UDP, 0.0)
    key = server_key(invite)
    ringing = resp(invite, 180)
    assert layer.send_response(key, ringing, 0.05) == [SendMessage(ringing, PEER_UDP)]
    assert layer.handle_timers(0.2) == []
    assert layer.next_deadline() is None
    # Retransmitted INVITE re-sends the last provisional.
    progress = resp(invite, 183)
    layer.send_response(key, progress, 0.3)
    assert layer.receive_request(req(), PEER_UDP, 0.5) == [SendMessage(progress, PEER_UDP)]


def test_invite_server_final_non_2xx_timer_g_then_timer_h() -> None:
    layer = TransactionLayer()
    invite = req()
    layer.receive_request(invite, PEER_UDP, 0.0)
    key = server_key(invite)
    busy = resp(invite, 486)
    assert layer.send_response(key, busy, 1.0) == [SendMessage(busy, PEER_UDP)]
    assert layer.state(key) is State.COMPLETED
    fired = run_timers(layer, 100.0)
    # Timer G: T1 doubling to T2; Timer H = 64*T1 after the response.
    assert times_of(fired, SendMessage) == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    for _, acts in fired[:-1]:
        assert acts == [SendMessage(busy, PEER_UDP)]
    assert fired[-1] == (33.0, [TransactionTimeout(key), TransactionTerminated(key)])
    assert len(layer) == 0 and layer.next_deadline() is None


def test_invite_server_ack_confirms_then_timer_i() -> None:
    layer = TransactionLayer()
    invite = req()
    layer.receive_request(invite, PEER_UDP, 0.0)
    key = server_key(invite)
    busy = resp(invite, 404)
    layer.send_response(key, busy, 0.1)
    # Retransmitted INVITE in Completed re-sends the final response.
    assert layer.receive_request(req(), PEER_UDP, 0.3) == [SendMessage(busy, PEER_UDP)]
    assert sent(layer.handle_timers(0.6)) == [busy]  # Timer G
    ack = req("ACK", to_tag="as83kd9bs")
    assert layer.receive_request(ack, PEER_UDP, 1.0) == []
    assert layer.state(key) is State.CONFIRMED
    # ACK retransmissions and INVITE retransmissions are absorbed in Confirmed.
    assert layer.receive_request(req("ACK", to_tag="as83kd9bs"), PEER_UDP, 1.1) == []
    assert layer.receive_request(req(), PEER_UDP, 1.2) == []
    # G and H cancelled: only Timer I = T4.
    assert run_timers(layer, 100.0) == [(6.0, [TransactionTerminated(key)])]


def test_invite_server_tcp_no_timer_g_and_timer_i_zero() -> None:
    layer = TransactionLayer()
    invite = req(transport="TCP")
    layer.receive_request(invite, PEER_TCP, 0.0)
    key = server_key(invite)
    layer.send_response(key, resp(invite, 480), 0.1)
    assert layer.next_deadline() == pytest.approx(32.1)  # Timer H only
    ack = req("ACK", transport="TCP", to_tag="as83kd9bs")
    assert layer.receive_request(ack, PEER_TCP, 1.0) == [TransactionTerminated(key)]
    assert len(layer) == 0 and layer.next_deadline() is None


def test_invite_server_timer_h_over_tcp() -> None:
    layer = TransactionLayer()
    invite = req(transport="TCP")
    layer.receive_request(invite, PEER_TCP, 0.0)
    key = server_key(invite)
    layer.send_response(key, resp(invite, 480), 0.0)
    assert run_timers(layer, 100.0) == [
        (32.0, [TransactionTimeout(key), TransactionTerminated(key)])
    ]


def test_invite_server_2xx_accepted_then_timer_l() -> None:
    layer = TransactionLayer()
    invite = req()
    layer.receive_request(invite, PEER_UDP, 0.0)
    key = server_key(invite)
    layer.send_response(key, resp(invite, 180), 0.1)
    ok = resp(invite, 200)
    assert layer.send_response(key, ok, 1.0) == [SendMessage(ok, PEER_UDP)]
    assert layer.state(key) is State.ACCEPTED
    # INVITE retransmissions are absorbed, not passed to the TU nor answered.
    assert layer.receive_request(req(), PEER_UDP, 1.2) == []
    # The TU's own 2xx retransmissions go out; other responses are discarded.
    assert layer.send_response(key, ok, 1.5) == [SendMessage(ok, PEER_UDP)]
    assert layer.send_response(key, resp(invite, 486), 1.6) == []
    assert layer.send_response(key, resp(invite, 180), 1.7) == []
    # An ACK for the 2xx carries a new branch (RFC 3261): no transaction, to the TU.
    ack = req("ACK", branch="z9hG4bKnewack", to_tag="as83kd9bs")
    assert layer.receive_request(ack, PEER_UDP, 2.0) == [DeliverRequest(ack, PEER_UDP, None)]
    # One that matches the INVITE transaction (RFC 6026 8.7) is passed up with its key.
    matching_ack = req("ACK", to_tag="as83kd9bs")
    assert layer.receive_request(matching_ack, PEER_UDP, 2.1) == [
        DeliverRequest(matching_ack, PEER_UDP, key)
    ]
    assert layer.state(key) is State.ACCEPTED
    # Timer L = 64*T1 from the 2xx, same on every transport.
    assert run_timers(layer, 100.0) == [(33.0, [TransactionTerminated(key)])]
    with pytest.raises(TransactionError):
        layer.send_response(key, ok, 34.0)


def test_invite_server_ack_in_proceeding_ignored() -> None:
    layer = TransactionLayer()
    invite = req()
    layer.receive_request(invite, PEER_UDP, 0.0)
    key = server_key(invite)
    assert layer.receive_request(req("ACK"), PEER_UDP, 0.1) == []
    assert layer.state(key) is State.PROCEEDING


def test_invite_server_responses_after_final_discarded() -> None:
    layer = TransactionLayer()
    invite = req()
    layer.receive_request(invite, PEER_UDP, 0.0)
    key = server_key(invite)
    layer.send_response(key, resp(invite, 486), 0.1)
    assert layer.send_response(key, resp(invite, 180), 0.2) == []
    assert layer.send_response(key, resp(invite, 200), 0.3) == []
    assert layer.state(key) is State.COMPLETED


def test_stray_ack_delivered_without_key() -> None:
    layer = TransactionLayer()
    ack = req("ACK", to_tag="x")
    assert layer.receive_request(ack, PEER_UDP, 0.0) == [DeliverRequest(ack, PEER_UDP, None)]
    assert len(layer) == 0


def test_send_response_errors() -> None:
    layer = TransactionLayer()
    invite = req()
    with pytest.raises(TransactionError):
        layer.send_response(server_key(invite), resp(invite, 200), 0.0)
    key, _ = layer.send_request(invite, PEER_UDP, 0.0)
    with pytest.raises(TransactionError):
        layer.send_response(key, resp(invite, 200), 0.0)


# -- non-INVITE server ----------------------------------------------------------------


def test_non_invite_server_full_path_and_timer_j() -> None:
    layer = TransactionLayer()
    options = req("OPTIONS")
    key = server_key(options)
    assert layer.receive_request(options, PEER_UDP, 0.0) == [DeliverRequest(options, PEER_UDP, key)]
    assert layer.state(key) is State.TRYING
    assert layer.next_deadline() is None  # no automatic 100 for non-INVITE
    # Trying: retransmission absorbed silently.
    assert layer.receive_request(req("OPTIONS"), PEER_UDP, 0.5) == []
    # Proceeding: retransmission re-sends the last provisional.
    trying = resp(options, 100)
    assert layer.send_response(key, trying, 0.6) == [SendMessage(trying, PEER_UDP)]
    assert layer.state(key) is State.PROCEEDING
    assert layer.receive_request(req("OPTIONS"), PEER_UDP, 1.5) == [SendMessage(trying, PEER_UDP)]
    # Completed: retransmission re-sends the final; later finals are discarded.
    ok = resp(options, 200)
    assert layer.send_response(key, ok, 2.0) == [SendMessage(ok, PEER_UDP)]
    assert layer.state(key) is State.COMPLETED
    assert layer.receive_request(req("OPTIONS"), PEER_UDP, 3.5) == [SendMessage(ok, PEER_UDP)]
    assert layer.send_response(key, resp(options, 500), 3.6) == []
    # Timer J = 64*T1.
    assert run_timers(layer, 100.0) == [(34.0, [TransactionTerminated(key)])]
    # Afterwards the same request is a new transaction.
    again = req("OPTIONS")
    assert layer.receive_request(again, PEER_UDP, 40.0) == [DeliverRequest(again, PEER_UDP, key)]


def test_non_invite_server_final_from_trying() -> None:
    layer = TransactionLayer()
    bye = req("BYE")
    layer.receive_request(bye, PEER_UDP, 0.0)
    key = server_key(bye)
    ok = resp(bye, 200)
    assert layer.get_request(key) is bye  # the TU may look at it until it answers
    layer.send_response(key, ok, 0.1)
    assert layer.receive_request(req("BYE"), PEER_UDP, 0.2) == [SendMessage(ok, PEER_UDP)]
    # Completed, it only absorbs retransmissions (32 s over UDP) and lets the request go:
    # a registrar holds tens of thousands of these.
    with pytest.raises(TransactionError, match="no longer holds its request"):
        layer.get_request(key)
    assert layer.receive_request(req("BYE"), PEER_UDP, 20.0) == [SendMessage(ok, PEER_UDP)]


def test_non_invite_server_tcp_timer_j_zero() -> None:
    layer = TransactionLayer()
    register = req("REGISTER", transport="TCP")
    layer.receive_request(register, PEER_TCP, 0.0)
    key = server_key(register)
    ok = resp(register, 200)
    assert layer.send_response(key, ok, 0.1) == [
        SendMessage(ok, PEER_TCP),
        TransactionTerminated(key),
    ]
    assert len(layer) == 0 and layer.next_deadline() is None


def test_non_invite_server_challenge_without_absorbing() -> None:
    """A REGISTER's digest challenge ends its transaction at once over UDP (a stateless
    answer): a retransmission is a new request for the TU, challenged afresh."""
    layer = TransactionLayer()
    register = req("REGISTER")
    key = server_key(register)
    layer.receive_request(register, PEER_UDP, 0.0)
    challenge = resp(register, 401)
    assert not absorbs(register, challenge)
    assert layer.send_response(key, challenge, 0.1, absorb=False) == [
        SendMessage(challenge, PEER_UDP),
        TransactionTerminated(key),
    ]
    assert len(layer) == 0 and layer.next_deadline() is None
    again = req("REGISTER")
    assert layer.receive_request(again, PEER_UDP, 0.6) == [DeliverRequest(again, PEER_UDP, key)]


def test_absorbs_keeps_all_but_challenges_without_credentials() -> None:
    register = req("REGISTER")
    assert absorbs(register, resp(register, 200))
    assert absorbs(register, resp(register, 403))
    for status in (401, 407):
        assert not absorbs(register, resp(register, status))
    # wrong credentials: its retransmission must not count as a second failed attempt
    for header in ("Authorization", "Proxy-Authorization"):
        signed = req("REGISTER", extra=f'{header}: Digest username="alice", response="x"')
        assert absorbs(signed, resp(signed, 401))
    invite = req("INVITE")
    assert absorbs(invite, resp(invite, 407))  # its ACK must meet the transaction


# -- response destinations (RFC 3261 18.2.2, RFC 3581) --------------------------------


def _dest(via_line: str, source: Address) -> Address:
    request = req("OPTIONS", sent_by=via_line)
    layer = TransactionLayer()
    layer.receive_request(request, source, 0.0)
    key = server_key(request)
    assert layer.peer(key) == response_destination(request.via[0], source)
    action = layer.send_response(key, resp(request, 200), 0.0)[0]
    assert isinstance(action, SendMessage)
    assert action.dest == response_destination(request.via[0], source)
    return action.dest


NAT = Address("UDP", "203.0.113.9", 40000)


def test_destination_udp_sent_by_port_source_host() -> None:
    assert _dest("10.0.0.5:5070", NAT) == Address("UDP", "203.0.113.9", 5070)


def test_destination_udp_default_port() -> None:
    assert _dest("10.0.0.5", NAT) == Address("UDP", "203.0.113.9", 5060)


def test_destination_udp_received() -> None:
    assert _dest("10.0.0.5:5070;received=198.51.100.99", NAT) == Address(
        "UDP", "198.51.100.99", 5070
    )


def test_destination_udp_rport_empty() -> None:
    assert _dest("10.0.0.5:5070;rport", NAT) == NAT


def test_destination_udp_rport_filled_in() -> None:
    assert _dest("10.0.0.5:5070;received=203.0.113.9;rport=40000", NAT) == NAT


def test_destination_reliable_uses_connection() -> None:
    source = Address("TCP", "203.0.113.9", 51234)
    assert _dest("10.0.0.5:5070;received=198.51.100.99", source) == source
    tls = Address("TLS", "203.0.113.9", 51235)
    assert _dest("10.0.0.5", tls) == tls


def test_destination_for_auto_100_and_retransmissions() -> None:
    layer = TransactionLayer()
    invite = req(sent_by="10.0.0.5;rport")
    layer.receive_request(invite, NAT, 0.0)
    (action,) = layer.handle_timers(0.2)
    assert isinstance(action, SendMessage) and action.dest == NAT


# -- RFC 2543 fallback matching -------------------------------------------------------


def test_rfc2543_retransmission_and_new_transactions() -> None:
    layer = TransactionLayer()
    invite = req(branch=None)
    key = server_key(invite)
    assert key.legacy is not None and key.branch == ""
    layer.receive_request(invite, PEER_UDP, 0.0)
    ringing = resp(invite, 180)
    layer.send_response(key, ringing, 0.1)
    assert layer.receive_request(req(branch=None), PEER_UDP, 0.5) == [
        SendMessage(ringing, PEER_UDP)
    ]
    # A branch without the magic cookie uses the fallback too.
    assert server_key(req(branch="1234")).legacy is not None
    # Any differing field means a different transaction.
    for other in (
        req(branch=None, cseq=314160),
        req(branch=None, call_id="other"),
        req(branch=None, uri="sip:carol@example.com"),
        req(branch=None, to_tag="abc"),
        req(branch=None, sent_by="198.51.100.7:5099"),
    ):
        assert server_key(other) != key
        assert isinstance(layer.receive_request(other, PEER_UDP, 0.6)[0], DeliverRequest)
    # received/rport written by our transport do not change the identity.
    assert server_key(req(branch=None, via_params=";received=1.2.3.4;rport=5")) == key


def test_rfc2543_ack_matches_by_response_to_tag() -> None:
    layer = TransactionLayer()
    invite = req(branch=None)
    key = server_key(invite)
    layer.receive_request(invite, PEER_UDP, 0.0)
    layer.send_response(key, resp(invite, 486, to_tag="srv"), 0.1)
    wrong = req("ACK", branch=None, to_tag="nope")
    assert layer.receive_request(wrong, PEER_UDP, 0.2) == [DeliverRequest(wrong, PEER_UDP, None)]
    assert layer.state(key) is State.COMPLETED
    assert layer.receive_request(req("ACK", branch=None, to_tag="srv"), PEER_UDP, 0.3) == []
    assert layer.state(key) is State.CONFIRMED


def test_rfc2543_reinvite_ack_and_2xx() -> None:
    layer = TransactionLayer()
    invite = req(branch=None, to_tag="dlg")
    key = server_key(invite)
    layer.receive_request(invite, PEER_UDP, 0.0)
    layer.send_response(key, resp(invite, 200, to_tag="dlg"), 0.1)
    ack = req("ACK", branch=None, to_tag="dlg")
    assert layer.receive_request(ack, PEER_UDP, 0.2) == [DeliverRequest(ack, PEER_UDP, key)]


def test_rfc2543_cancel_finds_invite() -> None:
    layer = TransactionLayer()
    invite = req(branch=None)
    layer.receive_request(invite, PEER_UDP, 0.0)
    cancel = req("CANCEL", branch=None)
    assert layer.find_invite_server_transaction(cancel) == server_key(invite)
    assert layer.find_invite_server_transaction(req("CANCEL", branch=None, cseq=1)) is None


# -- CANCEL ---------------------------------------------------------------------------


def test_build_cancel_and_send() -> None:
    layer = TransactionLayer()
    invite = req(extra_via="SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKdownstream")
    key, _ = layer.send_request(invite, PEER_UDP, 0.0)
    layer.receive_response(resp(invite, 180), 0.1)
    cancel = layer.build_cancel(key)
    assert cancel.method == "CANCEL"
    assert str(cancel.uri) == str(invite.uri)
    assert cancel.call_id == invite.call_id
    assert str(cancel.from_) == str(invite.from_)
    assert str(cancel.to) == str(invite.to) and cancel.to.tag is None
    assert (cancel.cseq.number, cancel.cseq.method) == (314159, "CANCEL")
    assert [str(v) for v in cancel.via] == [str(invite.via[0])]
    assert cancel.via[0] is not invite.via[0]
    assert cancel.headers.get_all("Route") == invite.headers.get_all("Route")
    reparsed = parse_message(cancel.to_bytes())
    assert isinstance(reparsed, Request) and reparsed.method == "CANCEL"
    # CANCEL is its own non-INVITE client transaction, matched on method.
    cancel_key, actions = layer.send_request(cancel, layer.peer(key), 0.2)
    assert actions == [SendMessage(cancel, PEER_UDP)]
    assert cancel_key != key and cancel_key.branch == key.branch
    ok = resp(cancel, 200)
    assert layer.receive_response(ok, 0.3) == [DeliverResponse(ok, cancel_key)]
    terminated = resp(invite, 487)
    actions = layer.receive_response(terminated, 0.4)
    assert DeliverResponse(terminated, key) in actions
    assert layer.state(key) is State.COMPLETED
    assert layer.state(cancel_key) is State.COMPLETED


def test_build_cancel_rejects_other_transactions() -> None:
    layer = TransactionLayer()
    key, _ = layer.send_request(req("OPTIONS"), PEER_UDP, 0.0)
    with pytest.raises(TransactionError):
        layer.build_cancel(key)
    invite = req()
    layer.receive_request(invite, PEER_UDP, 0.0)
    with pytest.raises(TransactionError):
        layer.build_cancel(server_key(invite))
    with pytest.raises(TransactionError):
        layer.build_cancel(TransactionKey(server=False, method="INVITE", branch="z9hG4bKnone"))


def test_server_cancel_is_own_transaction() -> None:
    layer = TransactionLayer()
    invite = req()
    layer.receive_request(invite, PEER_UDP, 0.0)
    invite_key = server_key(invite)
    cancel = req("CANCEL")
    cancel_key = server_key(cancel)
    assert layer.receive_request(cancel, PEER_UDP, 0.1) == [
        DeliverRequest(cancel, PEER_UDP, cancel_key)
    ]
    assert cancel_key != invite_key
    assert layer.find_invite_server_transaction(cancel) == invite_key
    assert layer.find_invite_server_transaction(req("CANCEL", branch="z9hG4bKzz")) is None
    # The TU answers both, as RFC 3261 9.2 describes.
    layer.send_response(cancel_key, resp(cancel, 200), 0.1)
    request_terminated = resp(layer.get_request(invite_key), 487)
    assert layer.send_response(invite_key, request_terminated, 0.1) == [
        SendMessage(request_terminated, PEER_UDP)
    ]
    assert layer.state(invite_key) is State.COMPLETED


# -- housekeeping ---------------------------------------------------------------------


def test_thousand_server_transactions_are_all_removed() -> None:
    layer = TransactionLayer()
    for i in range(1000):
        options = req("OPTIONS", branch=f"z9hG4bK{i}")
        (deliver,) = layer.receive_request(options, PEER_UDP, i / 1000)
        assert isinstance(deliver, DeliverRequest) and deliver.key is not None
        layer.send_response(deliver.key, resp(options, 200), i / 1000)
    assert len(layer) == 1000
    out = layer.handle_timers(100.0)
    assert sum(isinstance(a, TransactionTerminated) for a in out) == 1000
    assert len(layer) == 0
    assert layer.next_deadline() is None and layer.pending_timers == 0


def test_thousand_client_transactions_are_all_removed_and_heap_stays_small() -> None:
    layer = TransactionLayer()
    for i in range(1000):
        invite = req(branch=f"z9hG4bK{i}")
        layer.send_request(invite, PEER_UDP, 0.0)
        # Each 486 cancels Timer A and B; the cancelled entries must not pile up.
        layer.receive_response(resp(invite, 486), 0.1)
    assert len(layer) == 1000
    assert layer.pending_timers <= 2 * 1000 + 64
    out = layer.handle_timers(32.1)
    assert sum(isinstance(a, TransactionTerminated) for a in out) == 1000
    assert len(layer) == 0
    assert layer.next_deadline() is None and layer.pending_timers == 0


def test_terminate_by_tu() -> None:
    layer = TransactionLayer()
    invite = req()
    key, _ = layer.send_request(invite, PEER_UDP, 0.0)
    layer.receive_response(resp(invite, 180), 0.1)
    assert key in layer
    assert layer.terminate(key) == [TransactionTerminated(key)]
    assert key not in layer and layer.state(key) is None
    assert layer.terminate(key) == []


def test_late_handle_timers_fires_overdue_timers_in_order() -> None:
    layer = TransactionLayer()
    invite = req()
    key, _ = layer.send_request(invite, PEER_UDP, 0.0)
    # The event loop was stalled: A (0.5) fires, re-armed from now; then B is not due.
    assert sent(layer.handle_timers(10.0)) == [invite]
    assert layer.next_deadline() == 11.0
    out = layer.handle_timers(40.0)
    assert out == [
        SendMessage(invite, PEER_UDP),
        TransactionTimeout(key),
        TransactionTerminated(key),
    ]
