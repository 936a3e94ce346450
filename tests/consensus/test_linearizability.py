"""The Wing-Gong checker itself: it accepts linearizable lease histories and rejects the two
faults that matter (two holders at once, a token that does not increase)."""

from __future__ import annotations

from crdtcoord.testing.linearizability import LeaseModel, Operation, check


def op(
    kind: str, args: tuple[object, ...], call: float, ret: float | None, res: object
) -> Operation:
    return Operation("c", kind, args, call, ret, res)


def test_concurrent_acquires_one_winner_is_linearizable() -> None:
    h = [
        op("acquire", ("L", "a"), 0, 3, ("ok", 1)),
        op("acquire", ("L", "b"), 1, 2, ("held", "a")),  # answered before a's answer came back
        op("release", ("L", "a", 1), 4, 5, True),
        op("acquire", ("L", "b"), 6, 7, ("ok", 2)),
        op("read", ("L",), 8, 9, ("b", 2)),
    ]
    assert check(h, LeaseModel()).ok


def test_two_holders_at_once_are_caught() -> None:
    h = [
        op("acquire", ("L", "a"), 0, 1, ("ok", 1)),
        op("acquire", ("L", "b"), 2, 3, ("ok", 2)),  # a never released
    ]
    assert not check(h, LeaseModel()).ok


def test_a_token_that_does_not_increase_is_caught() -> None:
    h = [
        op("acquire", ("L", "a"), 0, 1, ("ok", 5)),
        op("release", ("L", "a", 5), 2, 3, True),
        op("acquire", ("L", "b"), 4, 5, ("ok", 5)),
    ]
    assert not check(h, LeaseModel()).ok


def test_a_pending_operation_may_or_may_not_have_happened() -> None:
    took_effect = [
        op("acquire", ("L", "a"), 0, None, None),  # timed out
        op("acquire", ("L", "b"), 1, 2, ("held", "a")),
    ]
    never_happened = [
        op("acquire", ("L", "a"), 0, None, None),
        op("acquire", ("L", "b"), 1, 2, ("ok", 1)),
    ]
    assert check(took_effect, LeaseModel()).ok and check(never_happened, LeaseModel()).ok


def test_real_time_order_is_respected() -> None:
    h = [
        op("release", ("L", "a", 1), 0, 1, True),  # ended before the acquire began
        op("acquire", ("L", "a"), 2, 3, ("ok", 1)),
    ]
    assert not check(h, LeaseModel()).ok
