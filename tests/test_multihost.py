"""Several "machines" on one host (Linux network namespaces): Redis, coordinator and workers each
have their own address on a private /24, and the test process talks to them over it.

Shows the three patterns spreading one run over several machines, cancellation reaching other
machines, and what happens when a worker machine is cut off mid-run: the others do the queued
work, and the run ends by its deadline with every subtask accounted for (the cut machine's
messages stay unacked in the broker; Redis gives them back only after the visibility timeout,
which is sized above every deadline, so they can never rescue the run they belong to).
"""

from __future__ import annotations

import json
import secrets
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from orchestrator import (
    AgentStatus,
    EmbeddedRedis,
    EmbeddedStack,
    Orchestrator,
    RunStatus,
    Settings,
    Task,
)
from tests.conftest import AGENT_MODULES, ARTIFACTS, ROOT, wait_for
from tests.netns import Machine, Network, missing_requirement, unavailable_reason
from workers.names import Keys

pytestmark = [
    pytest.mark.integration,
    pytest.mark.multihost,
    pytest.mark.skipif(
        missing_requirement() is not None,
        reason=f"multi-host tests build network namespaces: {missing_requirement()}",
    ),
]

WORKERS = ("w1", "w2", "w3")
#: Small, so the broker's visibility timeout (1.25 x this + 60 s) is as short as it gets.
MAX_DEADLINE_S = 20


@dataclass
class Cluster:
    net: Network
    server: EmbeddedRedis
    stack: EmbeddedStack
    orch: Orchestrator
    machines: dict[str, Machine]

    def hostname(self, worker: str) -> str:
        return f"{worker}@host{worker[1:]}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Machines redis, coord, w1, w2, w3; a password-protected server bound to the redis
    machine's address; a coordinator and three prefork workers (concurrency 2) in theirs."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    net = Network()
    server: EmbeddedRedis | None = None
    stack: EmbeddedStack | None = None
    orch: Orchestrator | None = None
    try:
        net.start()
        machines = {name: net.add(name) for name in ("redis", "coord", *WORKERS)}
        db = machines["redis"]
        server = EmbeddedRedis(
            host=db.address, password=secrets.token_hex(16), command_prefix=db.exec_prefix()
        ).start()
        stack = EmbeddedStack(
            workers=0,
            coordinator=False,
            broker_url=server.url,
            key_prefix=f"mh-{uuid.uuid4().hex[:8]}",
            agent_modules=AGENT_MODULES,
            extra_env={
                "PYTHONPATH": str(ROOT),
                "ORCH_MAX_DEADLINE_S": str(MAX_DEADLINE_S),
                "ORCH_DEFAULT_DEADLINE_S": str(MAX_DEADLINE_S),
            },
            log_dir=ARTIFACTS / "logs" / f"multihost-{uuid.uuid4().hex[:6]}",
        ).start()
        stack.start_process(
            "coordinator",
            ["coordinator", "--hostname", "coordinator@coordhost"],
            command_prefix=machines["coord"].exec_prefix(),
        )
        for w in WORKERS:
            args = ["worker", "--hostname", f"{w}@host{w[1:]}", "--pool", "prefork"]
            stack.start_process(
                w, [*args, "--concurrency", "2"], command_prefix=machines[w].exec_prefix()
            )
        stack.wait_ready(["coordinator", *WORKERS], 60)
        orch = Orchestrator(
            Settings(
                broker_url=server.url,
                key_prefix=stack.key_prefix,
                max_deadline_s=MAX_DEADLINE_S,
                default_deadline_s=MAX_DEADLINE_S,
            )
        )
        yield Cluster(net, server, stack, orch, machines)
    finally:
        if orch is not None:
            orch.close()
        if stack is not None:
            stack.stop()
        if server is not None:
            server.stop()
        net.close()


def _started_on(orch: Orchestrator, run_id: str) -> dict[int, str]:
    """Which worker started each subtask, from the run's event stream (first start wins)."""
    events: list[tuple[str, dict[str, str]]] = orch.store.r.xrange(orch.store.keys.events(run_id))  # type: ignore[assignment]
    started: dict[int, str] = {}
    for _id, fields in events:
        if fields.get("type") == "started":
            started.setdefault(int(fields["index"]), fields["worker"])
    return started


def _machines_of(workers: Iterable[str | None]) -> set[str]:
    """'host2' for 'w2@host2'."""
    return {str(w).split("@", 1)[1] for w in workers}


def test_every_process_talks_to_redis_from_its_own_machine(cluster: Cluster) -> None:
    clients = cluster.orch.store.r.client_list()
    addrs = {c["addr"].rsplit(":", 1)[0] for c in clients}
    expected = {cluster.machines[m].address for m in ("coord", *WORKERS)}
    assert expected <= addrs, f"connections came from {sorted(addrs)}"
    assert addrs <= {*expected, cluster.net.host_address}, "a connection from outside the subnet"
    # The server answers nothing without the password.
    with socket.create_connection((cluster.machines["redis"].address, cluster.server.port), 5) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(100).startswith(b"-NOAUTH"), "the server answered without a password"


def test_spawn_runs_on_every_worker_machine(cluster: Cluster) -> None:
    texts = [f"t{i}" for i in range(12)]
    res = cluster.orch.spawn(
        [Task("echo", {"text": t, "spin_s": 0.3}) for t in texts], deadline_s=MAX_DEADLINE_S
    ).wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert [r.output["text"] for r in res.results] == texts
    assert all(r.status is AgentStatus.OK and r.attempt == 1 for r in res.results)
    assert _machines_of(r.worker for r in res.results) == {"host1", "host2", "host3"}


def test_gather_merges_outputs_made_on_different_machines(cluster: Cluster) -> None:
    texts = [f"g{i}" for i in range(8)]
    res = cluster.orch.gather(
        [Task("echo", {"text": t, "spin_s": 0.3}) for t in texts],
        merge="join",
        deadline_s=MAX_DEADLINE_S,
    ).wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.merged == {"texts": texts}
    assert len(_machines_of(r.worker for r in res.results)) >= 2


def test_race_winner_cancels_losers_on_other_machines(
    cluster: Cluster, tmp_marker: Callable[[str], str]
) -> None:
    markers = [tmp_marker(f"racer{i}") for i in range(3)]
    tasks = [Task("work", {"seconds": 30, "marker": m, "mode": "cooperative"}) for m in markers]
    tasks.append(Task("echo", {"text": "good", "spin_s": 0.8}))
    run = cluster.orch.race(tasks, validate="starts_good", deadline_s=MAX_DEADLINE_S)
    res = run.wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.winner is not None and res.winner.index == 3
    wait_for(lambda: len(cluster.orch.store.envelopes(run.id)) == 4, 15, "every envelope")
    envelopes = cluster.orch.store.envelopes(run.id)
    losers = [envelopes[i] for i in range(3)]
    for env in losers:
        assert env.status is AgentStatus.CANCELLED, env
        assert env.cancel_latency_s is not None and env.cancel_latency_s < 2, env
    # Four racers on three two-slot workers: they ran on at least two machines, and the
    # winner's cancel reached a loser on a machine other than the winner's.
    started = _started_on(cluster.orch, run.id)
    assert len(_machines_of(started.values())) >= 2, started
    winner_host = _machines_of([res.winner.worker])
    assert any(_machines_of([e.worker]) != winner_host for e in losers), started
    assert not any(Path(m).exists() for m in markers)


def _unacked_task_ids(client: redis.Redis, keys: Keys) -> set[str]:
    """Task ids of messages delivered to a consumer and never acknowledged (kombu's hash, under
    the deployment's prefix as every kombu key)."""
    raw: dict[str, str] = client.hgetall(keys.queue("unacked"))  # type: ignore[assignment]
    return {json.loads(v)[0]["headers"]["id"] for v in raw.values()}


def test_worker_machine_cut_off_mid_run_ends_by_deadline_with_nothing_lost(
    cluster: Cluster, tmp_marker: Callable[[str], str]
) -> None:
    victim = cluster.machines["w3"]
    victim_host = cluster.hostname("w3")
    n, deadline_s = 10, 12.0
    tasks = [
        Task("work", {"seconds": 3, "marker": tmp_marker(f"cut{i}"), "mode": "sleep"})
        for i in range(n)
    ]
    run = cluster.orch.spawn(tasks, deadline_s=deadline_s)

    # Cut once the victim runs two subtasks: its prefetch (2) is then used up, so no BRPOP of
    # its is pending and no message can be popped for it while the cable is out.
    def on_victim() -> set[int]:
        return {i for i, w in _started_on(cluster.orch, run.id).items() if w == victim_host}

    wait_for(lambda: len(on_victim()) >= 2, 15, "w3 to start two subtasks")
    victim.set_link(up=False)
    assert not victim.link_is_up()
    cut = on_victim()
    assert len(cut) == 2

    res = run.wait(timeout_s=deadline_s + 15)
    # The other machines did every other subtask; the cut machine's two never reported, and the
    # run ended by its deadline saying how many finished.
    assert res.status is RunStatus.TIMED_OUT, res
    assert res.error and f"deadline of {deadline_s}s passed with {n - 2} of {n}" in res.error
    assert res.finished_at - res.created_at < deadline_s + 5
    assert [r.index for r in res.results] == list(range(n))
    for r in res.results:
        if r.index in cut:
            assert r.status is AgentStatus.CANCELLED and r.output is None, r
        else:
            assert r.status is AgentStatus.OK, r
            assert r.worker in (cluster.hostname("w1"), cluster.hostname("w2")), r
    started = _started_on(cluster.orch, run.id)
    assert set(started) == set(range(n)), "a subtask never started anywhere"
    assert {i for i, w in started.items() if w == victim_host} == cut
    # Every message is accounted for: the cut machine's two are still unacknowledged in the
    # broker (redelivered after the visibility timeout, they will see the run's cancel flag and
    # skip); every other one was acknowledged.
    run_tasks = {
        t
        for t in _unacked_task_ids(cluster.orch.store.r, cluster.orch.store.keys)
        if t.rsplit(".", 1)[0] == run.id
    }
    agent_tasks = {t for t in run_tasks if t.rsplit(".", 1)[1].isdigit()}
    assert agent_tasks == {f"{run.id}.{i}" for i in cut}
    # The machines that stayed up still serve new runs.
    cluster.stack.stop_process("w3", timeout_s=1)
    after = cluster.orch.spawn([Task("echo", {"text": f"a{i}"}) for i in range(4)]).wait(
        timeout_s=30
    )
    assert after.status is RunStatus.SUCCEEDED, after.error
    assert _machines_of(r.worker for r in after.results) <= {"host1", "host2"}
