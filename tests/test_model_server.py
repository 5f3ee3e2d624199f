"""The loopback model server (tests/model_server.py) over real sockets, with real clients: httpx
(sync and async) and the ``openai`` SDK. Fast, no Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ROOT, wait_for
from tests.model_server import ModelServer, StreamRecord


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as s:
        yield s


def events(lines: Iterable[str]) -> list[str]:
    """The data of every server-sent event."""
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def ended(server: ModelServer, stream_id: str) -> StreamRecord:
    def done() -> StreamRecord | None:
        rec = server.record(stream_id)
        return rec if rec is not None and rec.ended_at is not None else None

    rec = wait_for(done, 5.0, f"stream {stream_id} to end")
    assert isinstance(rec, StreamRecord)
    return rec


def test_a_stream_read_fully_with_httpx(server: ModelServer) -> None:
    url = f"{server.url}/stream?id=s1&chunks=4&interval_ms=20&size=7"
    started = time.monotonic()
    with httpx.Client() as client, client.stream("GET", url) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        assert resp.headers["transfer-encoding"] == "chunked"
        data = events(resp.iter_lines())
    took_s = time.monotonic() - started
    assert data[-1] == "[DONE]"
    assert [json.loads(d) for d in data[:-1]] == [{"i": k, "text": "x" * 7} for k in range(4)]
    assert took_s >= 0.06  # three intervals after the first event, which comes at once
    rec = ended(server, "s1")
    assert (rec.completed, rec.chunks_sent, rec.disconnected_at, rec.status) == (True, 4, None, 200)


def test_a_stream_read_fully_with_async_httpx(server: ModelServer) -> None:
    async def main() -> list[str]:
        async with (
            httpx.AsyncClient() as client,
            client.stream("GET", f"{server.url}/stream?id=s2&chunks=3&interval_ms=10") as resp,
        ):
            return events([line async for line in resp.aiter_lines()])

    data = asyncio.run(main())
    assert data == [
        json.dumps({"i": k, "text": "x" * 16}, separators=(",", ":")) for k in range(3)
    ] + ["[DONE]"]
    assert ended(server, "s2").completed


def test_keep_alive_serves_pipelined_requests_on_one_connection(server: ModelServer) -> None:
    one = b"GET /stream?id=k1&chunks=2&interval_ms=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    two = (
        b"GET /stream?id=k2&chunks=1&interval_ms=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(one + two)  # the second arrives while the first streams
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert received.count(b"data: [DONE]") == 2
    assert ended(server, "k1").completed and ended(server, "k2").completed


def test_a_client_closing_mid_stream_is_seen_at_once(server: ModelServer) -> None:
    async def main() -> float:
        url = f"{server.url}/stream?id=gone&chunks=50&interval_ms=100"
        async with httpx.AsyncClient() as client, client.stream("GET", url) as resp:
            seen = 0
            async for line in resp.aiter_lines():
                seen += line.startswith("data: ")
                if seen == 3:
                    break
            closed_at = time.time()
            await resp.aclose()
            return closed_at

    closed_at = asyncio.run(main())
    rec = ended(server, "gone")
    assert rec.disconnected_at is not None
    assert 0 <= rec.disconnected_at - closed_at < 0.05
    assert not rec.completed
    assert 3 <= rec.chunks_sent < 6


def test_openai_sdk_streams_with_the_usage_chunk(server: ModelServer) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "you are terse"},
        {"role": "user", "content": "say hi [[tokens=7 interval_ms=5 id=oa1]]"},
    ]
    prompt_tokens = 3 + 5

    async def main() -> tuple[str, list[Any]]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="k")
        try:
            stream = await client.chat.completions.create(
                model="m1",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
        finally:
            await client.close()
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks

    text, chunks = asyncio.run(main())
    assert text == " tok" * 7
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (prompt_tokens, 7)
    assert last.usage.total_tokens == prompt_tokens + 7
    assert all(c.usage is None for c in chunks[:-1])
    rec = ended(server, "oa1")
    assert (rec.model, rec.authorization, rec.completed) == ("m1", "Bearer k", True)
    assert (rec.prompt_tokens, rec.completion_tokens, rec.chunks_sent) == (prompt_tokens, 7, 7)


def test_openai_sdk_without_streaming_gets_usage(server: ModelServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="k2")
    try:
        resp = client.chat.completions.create(
            model="m2", messages=[{"role": "user", "content": "one two [[tokens=4 id=oa2]]"}]
        )
    finally:
        client.close()
    assert resp.choices[0].message.content == " tok" * 4
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (4, 4)
    assert ended(server, "oa2").authorization == "Bearer k2"


def test_fail_next_answers_429_with_retry_after(server: ModelServer) -> None:
    server.fail_next(2, 429, retry_after_s=1.5)
    with httpx.Client() as client:
        resp = client.get(f"{server.url}/stream?id=f1&chunks=1")
        assert resp.status_code == 429
        assert resp.headers["retry-after"] == "1.5"
        assert resp.json()["error"]["code"] == "rate_limit_exceeded"
        # This openai release brings its own HTTP client (httpx2): it cannot take ours.
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
        try:
            with pytest.raises(openai.RateLimitError) as caught:
                sdk.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x [[id=f2]]"}]
                )
        finally:
            sdk.close()
        assert caught.value.status_code == 429
        assert client.get(f"{server.url}/stream?id=f3&chunks=1&interval_ms=0").status_code == 200
    assert [(r.id, r.status) for r in server.records()] == [("f1", 429), ("f2", 429), ("f3", 200)]


def test_500_concurrent_streams(server: ModelServer) -> None:
    width = 500

    async def one(
        client: httpx.AsyncClient, i: int, started: list[int], all_in: asyncio.Event
    ) -> None:
        url = f"{server.url}/stream?id=c{i}&chunks=1000&interval_ms=50"
        async with client.stream("GET", url) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    break
            started.append(i)
            if len(started) == width:
                all_in.set()
            await asyncio.wait_for(all_in.wait(), 30)  # every stream open at once, then close

    async def main() -> None:
        limits = httpx.Limits(max_connections=width + 10)
        started: list[int] = []
        all_in = asyncio.Event()
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            await asyncio.gather(*(one(client, i, started, all_in) for i in range(width)))

    asyncio.run(main())
    assert server.max_concurrent >= width
    wait_for(
        lambda: sum(r.disconnected_at is not None for r in server.records()) == width,
        10.0,
        "every stream's disconnect",
    )


def test_runs_as_a_process_with_records() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.model_server", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening http://127.0.0.1:"), line
        url = line.split()[1]
        with httpx.Client() as client:
            client.get(f"{url}/stream?id=p1&chunks=2&interval_ms=1").raise_for_status()
            client.get(f"{url}/stream?id=p2&chunks=1&interval_ms=1").raise_for_status()
            rows = client.get(f"{url}/_records", params={"ids": "p2"}).json()
            assert [(r["id"], r["completed"], r["chunks_sent"]) for r in rows] == [("p2", True, 1)]
            assert len(client.get(f"{url}/_records").json()) == 2
            assert len(client.get(f"{url}/_records", params={"prefix": "p"}).json()) == 2
            assert client.get(f"{url}/_records", params={"prefix": "q"}).json() == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
