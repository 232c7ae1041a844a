"""Unit tests for the pure helpers of the call manager."""

from __future__ import annotations

from pbxwarden.pbx.calls import history_info


def test_history_info_grows_one_level_per_diversion() -> None:
    first = history_info([], "pbx.example", "2000", "3000", "busy")
    assert first == [
        "<sip:2000@pbx.example>;index=1",
        "<sip:3000@pbx.example;cause=486>;index=1.1;mp=1",
    ]
    second = history_info(first, "pbx.example", "3000", "4000", "noanswer")
    assert second[:2] == first
    assert second[2] == "<sip:4000@pbx.example;cause=408>;index=1.1.1;mp=1.1"
    third = history_info(second, "pbx.example", "4000", "+12025550143", "redirect")
    assert third[3] == "<sip:+12025550143@pbx.example;cause=480>;index=1.1.1.1;mp=1.1.1"


def test_history_info_escapes_a_redirect_target() -> None:
    [_, entry] = history_info([], "h", "2000", "a>b,c;d", "always")
    assert entry == "<sip:a%3Eb%2Cc%3Bd@h;cause=302>;index=1.1;mp=1"
