"""The live event bus never blocks the publisher; slow subscribers lose events, counted."""

from __future__ import annotations

from pbxwarden.events import QUEUE_SIZE, EventBus


async def test_fan_out_and_bounded_queues() -> None:
    bus = EventBus()
    bus.publish("call.start", {"tenant": "acme"})  # nobody listening: nothing kept
    with bus.subscribe() as a, bus.subscribe() as b:
        assert bus.subscribers == 2
        for i in range(QUEUE_SIZE + 5):
            bus.publish("call.start", {"tenant": "acme", "n": i}, at=1.0)
        assert a.queue.qsize() == QUEUE_SIZE and a.dropped == 5 and b.dropped == 5
        first = a.queue.get_nowait()
        assert first == {"type": "call.start", "at": 1.0, "tenant": "acme", "n": 0}
    assert bus.subscribers == 0
