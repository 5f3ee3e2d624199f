"""The asyncio API on real workers: many runs awaited from one loop, one shared blocked read."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orchestrator import (
    AgentStatus,
    EmbeddedStack,
    Orchestrator,
    Pattern,
    Run,
    RunNotFound,
    RunResult,
    RunStatus,
    RunTimedOut,
    Settings,
    Task,
)
from orchestrator.aio import Multiplexer, store_of
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


async def until(cond: Callable[[], object], timeout_s: float, what: str) -> None:
    """Yield to the loop until ``cond()`` holds, or fail saying what did not happen."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


class Ticker:
    """Measures the longest stall of the event loop while it runs."""

    def __init__(self) -> None:
        self.max_gap_s = 0.0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.max_gap_s = max(self.max_gap_s, now - last)
            last = now

    def stop(self) -> None:
        self._stop.set()


async def _client_names(mux: Multiplexer) -> list[str]:
    clients = await mux._command(lambda r: r.client_list())
    return [c.get("name", "") for c in clients]


def test_hundreds_of_runs_awaited_from_one_loop_share_one_read(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    n_fast, n_slow = 116, 4
    observed: dict[str, Any] = {}

    async def main() -> list[RunResult]:
        ticker = Ticker()
        tick = asyncio.create_task(ticker.run())
        threads_before = threading.active_count()
        # Four sleepers fill the four worker slots first, so the quick runs queue behind them
        # and every waiter is waiting at the same time.
        slow = [
            Task("work", {"seconds": 3.0, "marker": tmp_marker(f"slow{i}"), "mode": "sleep"})
            for i in range(n_slow)
        ]
        runs = [await orch.spawn_async([t], deadline_s=60) for t in slow]

        async def one(i: int) -> RunResult:
            run = await orch.spawn_async([Task("echo", {"text": f"r{i}"})], deadline_s=60)
            return await run.wait_async(timeout_s=60)

        waits = [asyncio.create_task(r.wait_async(timeout_s=60)) for r in runs]
        waits += [asyncio.create_task(one(i)) for i in range(n_fast)]
        mux = store_of(orch).mux
        await until(lambda: mux.waiting >= 100, 20, "100 runs being awaited at once")
        observed["waiting"] = mux.waiting
        observed["threads"] = threading.active_count() - threads_before
        observed["names"] = await _client_names(mux)
        reads_before = mux.reads
        results = await asyncio.gather(*waits)
        observed["reads"] = mux.reads - reads_before
        ticker.stop()
        await tick
        observed["max_gap_s"] = ticker.max_gap_s
        return results

    results = asyncio.run(main())
    assert len(results) == n_fast + n_slow
    assert all(r.status is RunStatus.SUCCEEDED for r in results), [r.error for r in results]
    assert sorted(r.results[0].output["text"] for r in results[n_slow:]) == sorted(
        f"r{i}" for i in range(n_fast)
    )
    assert len({r.run_id for r in results}) == n_fast + n_slow
    assert observed["waiting"] >= 100
    # One reader connection and a bounded command pool, not a connection per waiting run.
    assert observed["names"].count("orch-aio-reader") == 1, observed["names"]
    assert 1 <= observed["names"].count("orch-aio") <= 8, observed["names"]
    # No thread per waiting run (the default executor holds at most min(32, cpus + 4)).
    assert observed["threads"] <= 32, observed["threads"]
    # The sleepers ran 3 s: a wait that blocked the loop would have stalled it that long.
    assert observed["max_gap_s"] < 0.5, observed["max_gap_s"]
    # Runs ended in bursts: far fewer reads than runs would mean a read per run.
    assert 1 <= observed["reads"] < 3 * (n_fast + n_slow)


def test_loop_shutdown_is_prompt_and_closes_connections(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    long = orch.spawn(
        [Task("work", {"seconds": 30, "marker": tmp_marker("long"), "mode": "cooperative"})],
        deadline_s=60,
    )

    async def main() -> RunResult:
        run = await orch.spawn_async([Task("echo", {"text": "bye"})])
        res = await run.wait_async(timeout_s=30)
        # Leave a waiter behind, blocked in the shared read, as an application may.
        asyncio.create_task(long.wait_async())  # noqa: RUF006
        mux = store_of(orch).mux
        await until(lambda: long.orch.store.keys.done(long.id) in mux._reading, 10, "the read")
        return res

    started = time.monotonic()
    assert asyncio.run(main()).ok
    took = time.monotonic() - started
    long.cancel()
    # asyncio.run cancels the reader mid-BLOCK (5 s) and the clients close at once.
    assert took < 3.0, took
    r = orch.store.r

    def aio_clients() -> list[str]:
        return [c["name"] for c in r.client_list() if c.get("name", "").startswith("orch-aio")]

    wait_for(lambda: not aio_clients(), 5, "the asyncio clients to disconnect")


def test_a_newcomer_is_not_stuck_behind_the_blocked_read(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    async def main() -> tuple[float, RunResult]:
        long = await orch.spawn_async(
            [Task("work", {"seconds": 30, "marker": tmp_marker("long"), "mode": "cooperative"})],
            deadline_s=60,
        )
        long_wait = asyncio.create_task(long.wait_async(timeout_s=60))
        mux = store_of(orch).mux
        await until(lambda: mux._reading, 10, "the shared read to be in flight")
        quick = await orch.spawn_async([Task("echo", {"text": "quick"})])
        started = time.monotonic()
        res = await quick.wait_async(timeout_s=30)
        took = time.monotonic() - started
        await asyncio.to_thread(long.cancel)
        cancelled = await long_wait
        assert cancelled.status is RunStatus.CANCELLED
        return took, res

    took, res = asyncio.run(main())
    assert res.ok and res.results[0].output["text"] == "quick"
    # Without the wake stream it would sit out the 5 s BLOCK of the read in flight.
    assert took < 2.0, took


def test_events_are_typed_and_end_with_run_finished(orch: Orchestrator) -> None:
    async def main() -> tuple[list[Any], RunResult, list[Any], RunResult]:
        gather = await orch.gather_async(
            [Task("echo", {"text": t}) for t in "abc"], merge="join", deadline_s=60
        )
        g_events = [e async for e in gather.events()]
        g_res = await gather.wait_async(timeout_s=30)
        race = await orch.race_async(
            [Task("echo", {"text": "bad"}), Task("echo", {"text": "good", "spin_s": 0.2})],
            validate="starts_good",
        )
        r_events = [e async for e in race.events()]
        return g_events, g_res, r_events, await race.wait_async(timeout_s=30)

    g_events, g_res, r_events, r_res = asyncio.run(main())
    assert g_res.merged == {"texts": ["a", "b", "c"]}
    types = [e.type for e in g_events]
    assert types[0] == "submitted" and g_events[0].n == 3
    assert types[-1] == "run_finished" and g_events[-1].status == "succeeded"
    assert {"queued", "expanded", "merged"} <= set(types)
    assert sorted(e.index for e in g_events if e.type == "started") == [0, 1, 2]
    finished = [e for e in g_events if e.type == "finished"]
    assert sorted(e.index for e in finished) == [0, 1, 2]
    assert {e.status for e in finished} == {"ok"}
    assert all(e.kind is not None and e.ts > 0 for e in g_events)
    assert [e.id for e in g_events] == sorted(g_events_ids := [e.id for e in g_events])
    assert len(set(g_events_ids)) == len(g_events_ids)

    assert r_res.pattern is Pattern.RACE and r_res.winner is not None
    won = [e for e in r_events if e.type == "won"]
    assert [e.index for e in won] == [r_res.winner.index] == [1]
    assert any(e.type == "finished" and e.won and e.index == 1 for e in r_events)
    assert any(e.type == "cancel_requested" for e in r_events)
    assert r_events[-1].final
    rejected = [e for e in r_events if e.type == "finished" and e.index == 0]
    assert rejected and rejected[0].status == AgentStatus.INVALID.value


def test_events_resume_after_an_id(orch: Orchestrator) -> None:
    async def main() -> tuple[list[str], list[str]]:
        run = await orch.spawn_async([Task("echo", {"text": "x"}), Task("echo", {"text": "y"})])
        await run.wait_async(timeout_s=30)
        every = [e.id async for e in run.events()]
        rest = [e.id async for e in run.events(since=every[2])]
        return every, rest

    every, rest = asyncio.run(main())
    assert len(every) >= 6
    assert rest == every[3:]


def test_wait_async_timeout_goes_on_and_unknown_run(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    async def main() -> None:
        run = await orch.spawn_async(
            [Task("work", {"seconds": 30, "marker": tmp_marker("w"), "mode": "cooperative"})],
            deadline_s=60,
        )
        with pytest.raises(RunTimedOut, match="it goes on"):
            await run.wait_async(timeout_s=0.3)
        assert (await asyncio.to_thread(run.status)).status is RunStatus.RUNNING
        await asyncio.to_thread(run.cancel)
        assert (await run.wait_async(timeout_s=10)).status is RunStatus.CANCELLED
        with pytest.raises(RunNotFound, match="no run 'no-such-run'"):
            await Run(orch, "no-such-run").wait_async()
        with pytest.raises(RunNotFound):
            [e async for e in Run(orch, "no-such-run").events()]

    asyncio.run(main())


@pytest.fixture
def orphan_orch(stack: EmbeddedStack) -> Iterator[Orchestrator]:
    """A client under a key prefix no coordinator serves (so none sweeps its deadlines), with
    the workers' catalog copied there so that submits validate."""
    prefix = f"orphan-{uuid.uuid4().hex[:8]}"
    o = Orchestrator(
        Settings(broker_url=stack.url, key_prefix=prefix, coordinator_queue=f"{prefix}-queue")
    )
    main_catalog = o.store.r.hgetall(f"{stack.key_prefix}:catalog")
    o.store.r.hset(o.store.keys.catalog, mapping=main_catalog)  # type: ignore[arg-type]
    yield o
    o.store.r.delete(o.store.keys.queue(o.settings.coordinator_queue), o.store.keys.catalog)
    o.close()


def test_wait_async_ends_a_run_nobody_else_ends(orphan_orch: Orchestrator) -> None:
    async def main() -> tuple[RunResult, list[str], float]:
        run = await orphan_orch.spawn_async([Task("echo", {"text": "x"})], deadline_s=0.5)
        events = asyncio.create_task(_types(run.events()))
        res = await run.wait_async(timeout_s=20)
        took = time.time() - res.created_at
        return res, await asyncio.wait_for(events, 10), took

    res, types, took = asyncio.run(main())
    assert res.status is RunStatus.TIMED_OUT
    assert res.error is not None and "deadline of 0.5s passed with 0 of 1" in res.error
    assert types[0] == "submitted" and types[-1] == "run_finished"
    # Ended by the waiting client itself: after the deadline plus the grace it leaves others.
    assert 2.5 <= took < 10, took


async def _types(events: Any) -> list[str]:
    return [e.type async for e in events]


def test_broker_down_while_waiting_is_a_clear_error(orch: Orchestrator) -> None:
    from orchestrator import BrokerUnavailable
    from orchestrator.embedded import EmbeddedRedis

    server = EmbeddedRedis().start()
    other = Orchestrator(broker_url=server.url, key_prefix="down")
    try:
        other.store.create_run(
            {
                "run_id": "r1",
                "pattern": "parallel-spawn",
                "n": 1,
                "created_at": repr(time.time()),
                "deadline_at": repr(time.time() + 60),
                "agents": ["echo"],
                "status": "running",
            }
        )

        async def main() -> float:
            waiting = asyncio.create_task(Run(other, "r1").wait_async(timeout_s=1.5))
            mux = store_of(other).mux
            await until(lambda: mux._reading, 10, "the shared read to be in flight")
            started = time.monotonic()
            await asyncio.to_thread(server.stop)
            with pytest.raises(BrokerUnavailable, match="while waiting"):
                await asyncio.wait_for(waiting, 20)
            return time.monotonic() - started

        # A restart would be waited out: the error comes once the caller's limit has passed.
        assert 0.9 < asyncio.run(main()) < 15
    finally:
        other.close()
        server.stop()
