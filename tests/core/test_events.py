"""The event bus: subscribers may name the kinds they take; job events are built on demand."""

from __future__ import annotations

from npud.core.events import Change, ContextEvent, Event, EventBus, JobEvent, QueueEvent
from npud.core.ids import ContextId
from tests.core.harness import ALICE, make_bed


def test_a_subscriber_gets_only_the_kinds_it_names() -> None:
    """kinds=(ContextEvent,) sees context events and none of the job or queue events."""
    bed = make_bed()
    contexts: list[Event] = []
    everything: list[Event] = []
    bed.core.subscribe(contexts.append, kinds=(ContextEvent,))
    bed.core.subscribe(everything.append)
    ctx = bed.context()
    queue = bed.queue(ctx)
    bed.burn(ctx, queue, 0.001)
    bed.run()
    bed.core.destroy_context(ALICE, ctx.id)
    bed.run()
    assert [type(e) for e in contexts] == [ContextEvent, ContextEvent]
    assert any(isinstance(e, JobEvent) for e in everything)
    assert any(isinstance(e, QueueEvent) for e in everything)


def test_job_events_are_not_built_while_nobody_takes_them() -> None:
    """With only a context-event subscriber the scheduler publishes no job event at all."""
    bed = make_bed()
    bed.core.subscribe(lambda _e: None, kinds=(ContextEvent,))
    assert bed.core.events.active
    assert not bed.core.events.wants_jobs
    ctx = bed.context()
    queue = bed.queue(ctx)
    before = bed.core.events.statistics().published
    bed.burn(ctx, queue, 0.001, n=3)
    bed.run()
    assert bed.core.events.statistics().published == before  # 3 jobs, 0 events


def test_cancelling_a_subscription_updates_what_the_bus_wants() -> None:
    """wants_jobs follows the subscriptions that take job events; cancel is idempotent."""
    bus = EventBus()
    ctx_only = bus.subscribe(lambda _e: None, kinds=(ContextEvent,))
    jobs = bus.subscribe(lambda _e: None, kinds=(JobEvent, ContextEvent))
    assert bus.wants_jobs
    jobs.cancel()
    jobs.cancel()
    assert not bus.wants_jobs
    assert bus.active
    ctx_only.cancel()
    assert not bus.active
    assert bus.statistics().subscribers == 0


def test_the_same_callback_twice_is_two_subscriptions() -> None:
    """Cancelling one of two subscriptions of one callback leaves the other delivering."""
    bus = EventBus()
    seen: list[Event] = []
    first = bus.subscribe(seen.append)
    bus.subscribe(seen.append, kinds=(ContextEvent,))
    first.cancel()
    event = ContextEvent(0.0, "sim0", ContextId("ctx-1"), 1000, Change.CREATED)
    bus.publish(event)
    assert seen == [event]
    assert bus.wants_jobs is False
