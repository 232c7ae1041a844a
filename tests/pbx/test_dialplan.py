"""The dialplan model's groups: what a group may be, and the order its steps ring."""

from __future__ import annotations

import pytest

from pbxwarden.pbx.dialplan import Group, GroupError, check, steps


def group(strategy: str, members: tuple[str, ...] = ("1001", "1002", "1003")) -> Group:
    return Group("t", "realm", "600", "Sales", strategy, members)


def test_steps_per_strategy() -> None:
    assert steps(group("ringall")) == [["1001", "1002", "1003"]]
    assert steps(group("hunt")) == [["1001"], ["1002"], ["1003"]]
    assert steps(group("roundrobin"), 1) == [["1002"], ["1003"], ["1001"]]
    assert steps(group("roundrobin"), 4) == [["1002"], ["1003"], ["1001"]]  # wraps


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("6", "ringall", ["1001"], 20, "", None), "invalid group number"),
        (("600", "ringall", [], 20, "", None), "at least one member"),
        (("600", "ringall", ["600"], 20, "", None), "cannot ring itself"),
        (("600", "hunt", ["1001"], 2, "", None), "ring time"),
        (("600", "hunt", ["1001"], 20, 'Sa"les', None), "caller-ID prefix"),
        (("600", "hunt", ["1001"], 20, "", "sip:evil"), "neither an extension"),
        (("600", "hunt", ["1001"] * 2, 20, "", None), "listed twice"),
    ],
)
def test_a_group_that_cannot_be_stored_says_why(args: tuple[object, ...], why: str) -> None:
    with pytest.raises(GroupError, match=why):
        check(*args)  # type: ignore[arg-type]
