"""The event order (time, priority, seq), defined once in EventQueue."""

from prfaas.sim import event_kinds as ev
from prfaas.sim.events import Event, EventQueue, Priority


def drain(queue: EventQueue) -> list[tuple[float, Event]]:
    out = []
    while queue:
        out.append(queue.pop())
    return out


def test_earlier_time_first_then_priority_then_insertion() -> None:
    q = EventQueue()
    sample, tick, a, b = ev.Sample(), ev.ShortControlTick(), ev.LongControlTick(), ev.Sample()
    q.push(2.0, sample)
    q.push(1.0, tick)
    q.push(1.0, a)
    q.push(1.0, b)
    q.push(0.5, ev.Sample())
    order = drain(q)
    assert [t for t, _ in order] == [0.5, 1.0, 1.0, 1.0, 2.0]
    # at t = 1.0: CONTROL (tick, then a: scheduled in that order) before SAMPLE (b)
    assert [e for _, e in order[1:4]] == [tick, a, b]


def test_priorities_encode_the_documented_instant_order() -> None:
    kinds = [
        ev.LinkCapacityChange,
        ev.LinkCheck,
        ev.DecodeDone,
        ev.PrefillDone,
        ev.RoleSwitched,
        ev.Arrival,
        ev.ShortControlTick,
        ev.Sample,
    ]
    assert [k.priority for k in kinds] == sorted(Priority)
    assert ev.KvLanded.priority == ev.PrefixPulled.priority == Priority.TRANSFER


def test_peek_and_len() -> None:
    q = EventQueue()
    q.push(3.0, ev.Sample())
    q.push(1.5, ev.Sample())
    assert len(q) == 2 and q.peek_time_s() == 1.5
