"""gate.PriorityGate: urgent waiters first, normal ones never starved, cancellation safe."""

from __future__ import annotations

import asyncio

import pytest

from roundhouse.gate import PriorityGate


async def _hold(gate: PriorityGate, order: list[str], name: str, urgent: bool,
                release: asyncio.Event) -> None:
    await gate.acquire(urgent)
    order.append(name)
    await release.wait()
    gate.release()


async def _run_in_order(gate: PriorityGate, entries: list[tuple[str, bool]]) -> list[str]:
    """Start one holder per entry while the gate is full, then free the slot: the order
    in which they get it."""
    blocker = asyncio.Event()
    order: list[str] = []
    first = asyncio.create_task(_hold(gate, order, "first", False, blocker))
    await asyncio.sleep(0)
    go = asyncio.Event()
    go.set()  # each holder releases as soon as it has the slot
    tasks = [asyncio.create_task(_hold(gate, order, name, urgent, go))
             for name, urgent in entries]
    await asyncio.sleep(0)
    assert gate.waiting() == len(entries)
    blocker.set()
    await asyncio.gather(first, *tasks)
    return order


def test_urgent_waiters_are_served_before_normal_ones_that_came_earlier() -> None:
    order = asyncio.run(_run_in_order(PriorityGate(1), [
        ("status-1", False), ("config-1", True), ("status-2", False), ("config-2", True)]))
    assert order == ["first", "config-1", "config-2", "status-1", "status-2"]


def test_a_normal_waiter_overdue_goes_before_later_urgent_ones() -> None:
    async def scenario() -> list[str]:
        gate = PriorityGate(1, age=0.05)
        order: list[str] = []
        hold = asyncio.Event()
        first = asyncio.create_task(_hold(gate, order, "first", True, hold))
        await asyncio.sleep(0)
        go = asyncio.Event()
        go.set()
        status = asyncio.create_task(_hold(gate, order, "status", False, go))
        await asyncio.sleep(0.08)  # the status write has waited past the age
        configs = [asyncio.create_task(_hold(gate, order, f"config-{i}", True, go))
                   for i in range(3)]
        await asyncio.sleep(0)
        hold.set()
        await asyncio.gather(first, status, *configs)
        return order

    assert asyncio.run(scenario()) == ["first", "status", "config-0", "config-1", "config-2"]


def test_free_slots_are_taken_at_once_and_counted_back() -> None:
    async def scenario() -> None:
        gate = PriorityGate(2)
        await gate.acquire()
        await gate.acquire(urgent=True)
        third = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        assert not third.done() and gate.waiting() == 1
        gate.release()
        await asyncio.wait_for(third, 1)
        gate.release()
        gate.release()
        # both slots free again: two acquire without waiting
        await asyncio.wait_for(gate.acquire(), 0.1)
        await asyncio.wait_for(gate.acquire(), 0.1)

    asyncio.run(scenario())


@pytest.mark.parametrize("urgent", [False, True])
def test_a_cancelled_waiter_leaves_the_queue_and_loses_no_slot(urgent: bool) -> None:
    async def scenario() -> None:
        gate = PriorityGate(1)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire(urgent))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.waiting() == 0
        gate.release()
        await asyncio.wait_for(gate.acquire(), 0.1)  # the slot came back

    asyncio.run(scenario())


def test_a_slot_handed_to_a_waiter_cancelled_before_it_ran_is_passed_on() -> None:
    async def scenario() -> None:
        gate = PriorityGate(1)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        other = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        gate.release()  # handed to `waiter`, which has not run yet
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.wait_for(other, 1)  # the slot went on to the next waiter
        assert gate.waiting() == 0

    asyncio.run(scenario())
