"""A loopback model endpoint for tests and benchmarks: HTTP/1.1 on asyncio streams (stdlib only).

``GET /stream`` sends server-sent events one every ``interval_ms``; ``POST /v1/chat/completions``
speaks OpenAI's chat-completions protocol (streaming and not), with directives in the last
message, e.g. ``"hi [[tokens=50 interval_ms=20 id=abc]]"``. Every request is recorded; while a
response is produced the request side is watched, so a client that goes away is seen at once
(``disconnected_at``) and nothing more is written to it. One event loop holds thousands of
streams. ``python -m tests.model_server [--port 0]`` serves until SIGTERM, with
``GET /_records[?ids=a,b][&prefix=p]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.model_http import Conn, HttpError, Request, Streamer, chunk, response
from tests.model_openai import ChatRequest, completion, error_body, parse_chat, sse, stream_events

#: Pending connections the kernel may queue: thousands of clients connect at once.
BACKLOG = 4096


@dataclass
class StreamRecord:
    """One request as the server saw it. ``chunks_sent``: payload events (``/stream``) or
    completion tokens produced (chat); the usage, finish and ``[DONE]`` events not counted."""

    id: str
    path: str
    model: str | None
    started_at: float
    chunks_sent: int = 0
    completed: bool = False
    disconnected_at: float | None = None
    ended_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    authorization: str | None = None
    status: int = 200


class ModelServer:
    """The server, on its own thread and event loop (``with ModelServer() as s: s.url``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._records: list[StreamRecord] = []
        self._by_id: dict[str, StreamRecord] = {}
        self._failures: list[tuple[int, float | None]] = []
        self._limit: tuple[int, float] | None = None
        self._admitted: list[float] = []
        #: Model requests answered 429 because they were over ``limit``.
        self.refused_by_limit = 0
        self._in_flight = 0
        self._max_concurrent = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def max_concurrent(self) -> int:
        """The highest number of model requests in flight at one moment."""
        with self._lock:
            return self._max_concurrent

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> ModelServer:
        """Serve on a thread of its own; returns once listening."""
        self._thread = threading.Thread(target=self._run, name="model-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error
        return self

    def stop(self) -> None:
        """Close every connection and the listener, then the loop."""
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        try:
            server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, backlog=BACKLOG)
            )
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            loop.close()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_until_complete(self._stopping.wait())
        finally:
            loop.run_until_complete(self._shutdown(server))
            loop.close()

    async def _shutdown(self, server: asyncio.Server) -> None:
        server.close()
        # Hang up rather than cancel: each handler then ends as it does when a client leaves
        # (a cancelled one is logged as an error by asyncio's stream protocol).
        for writer in self._conns.values():
            writer.transport.abort()
        if self._conns:
            _, stuck = await asyncio.wait(list(self._conns), timeout=5.0)
            for task in stuck:
                task.cancel()
        await server.wait_closed()

    # -- records --------------------------------------------------------------------------------

    def records(self) -> list[StreamRecord]:
        """A snapshot of every request so far, in arrival order."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._records]

    def record(self, stream_id: str) -> StreamRecord | None:
        """A snapshot of the latest request with this id."""
        with self._lock:
            rec = self._by_id.get(stream_id)
            return dataclasses.replace(rec) if rec is not None else None

    def fail_next(self, n: int, status: int = 429, retry_after_s: float | None = None) -> None:
        """The next ``n`` model requests get ``status`` (and ``Retry-After`` when given)."""
        with self._lock:
            self._failures.extend([(status, retry_after_s)] * n)

    def clear_failures(self) -> None:
        """Forget the failures ``fail_next`` queued and no request took."""
        with self._lock:
            self._failures.clear()

    def limit(self, requests: int | None, per_s: float = 60.0) -> None:
        """Enforce a provider's limit: a model request beyond ``requests`` in any ``per_s``
        (a sliding window over the admitted ones) gets 429 with the Retry-After that frees a
        place; None lifts it. Admissions are counted afresh."""
        with self._lock:
            self._limit = None if requests is None else (requests, per_s)
            self._admitted = []
            self.refused_by_limit = 0

    def admitted_at(self) -> list[float]:
        """When each model request the limit let in arrived (monotonic s), in order."""
        with self._lock:
            return list(self._admitted)

    def _over_limit(self) -> float | None:
        """None: admitted (and counted); else the seconds until a place frees."""
        now = time.monotonic()
        with self._lock:
            if self._limit is None:
                return None
            requests, per_s = self._limit
            recent = [t for t in self._admitted if t > now - per_s]
            if len(recent) >= requests:
                self.refused_by_limit += 1
                return recent[-requests] + per_s - now
            self._admitted.append(now)
            return None

    def _begin(self, req: Request, stream_id: str, model: str | None, prompt: int) -> StreamRecord:
        rec = StreamRecord(
            id=stream_id,
            path=req.path,
            model=model,
            started_at=time.time(),
            prompt_tokens=prompt,
            authorization=req.headers.get("authorization"),
        )
        with self._lock:
            self._records.append(rec)
            self._by_id[stream_id] = rec
        return rec

    def _update(self, rec: StreamRecord, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(rec, name, value)

    def _take_failure(self) -> tuple[int, float | None] | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _count(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta
            self._max_concurrent = max(self._max_concurrent, self._in_flight)

    # -- serving --------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        conn = Conn(reader, writer)
        try:
            while (req := await conn.read_request()) is not None:
                await self._dispatch(conn, req)
                if not req.keep_alive or conn.eof_at is not None:
                    break
        except HttpError as exc:
            writer.write(response(exc.status, error_body(exc.status, str(exc)), keep_alive=False))
        except ConnectionError:
            pass  # the client went away between requests
        finally:
            self._conns.pop(task, None)
            writer.close()

    async def _dispatch(self, conn: Conn, req: Request) -> None:
        routes: dict[str, tuple[str, Callable[[Conn, Request], Any]]] = {
            "/stream": ("GET", self._serve_stream),
            "/v1/chat/completions": ("POST", self._serve_chat),
            "/_records": ("GET", self._serve_records),
        }
        if req.path not in routes:
            conn.writer.write(
                response(404, error_body(404, f"no route {req.path}"), req.keep_alive)
            )
            return
        method, serve = routes[req.path]
        if req.method != method:
            conn.writer.write(response(405, error_body(405, f"use {method}"), req.keep_alive))
            return
        if req.path == "/_records":
            await serve(conn, req)
            return
        self._count(+1)
        try:
            await serve(conn, req)
        finally:
            self._count(-1)
        await conn.writer.drain()

    async def _serve_records(self, conn: Conn, req: Request) -> None:
        wanted = set(filter(None, req.query.get("ids", "").split(",")))
        prefix = req.query.get("prefix", "")
        rows = [
            dataclasses.asdict(r)
            for r in self.records()
            if (not wanted or r.id in wanted) and r.id.startswith(prefix)
        ]
        conn.writer.write(response(200, json.dumps(rows).encode(), req.keep_alive))
        await conn.writer.drain()

    def _refused(self, conn: Conn, req: Request, rec: StreamRecord) -> bool:
        """Answer with the next queued failure, if any (True then)."""
        wait_s = self._over_limit()
        failure = self._take_failure() if wait_s is None else (429, round(wait_s + 0.0005, 3))
        if failure is None:
            return False
        status, retry_after_s = failure
        headers = {} if retry_after_s is None else {"Retry-After": f"{retry_after_s:g}"}
        body = error_body(status, f"injected failure {status}")
        conn.writer.write(response(status, body, req.keep_alive, headers))
        self._update(rec, status=status, ended_at=time.time())
        return True

    async def _serve_stream(self, conn: Conn, req: Request) -> None:
        q = req.query
        try:
            count, size = int(q.get("chunks", 10)), int(q.get("size", 16))
            interval_s = float(q.get("interval_ms", 100)) / 1000
        except ValueError as exc:
            raise HttpError(400, f"bad query: {exc}") from exc
        rec = self._begin(req, q.get("id") or uuid.uuid4().hex, None, 0)
        if self._refused(conn, req, rec):
            return
        text = "x" * size

        def event(k: int) -> bytes:
            return sse({"i": k, "text": text})

        await self._stream(conn, req, rec, count, interval_s, event, [b"data: [DONE]\n\n"], False)

    async def _serve_chat(self, conn: Conn, req: Request) -> None:
        chat = parse_chat(req.body)
        rec = self._begin(req, chat.stream_id, chat.model, chat.prompt_tokens)
        if self._refused(conn, req, rec):
            return
        if not chat.stream:
            await self._complete_at_once(conn, req, rec, chat)
            return
        event, tail = stream_events(chat)
        await self._stream(conn, req, rec, chat.tokens, chat.interval_s, event, tail, True)

    async def _stream(
        self,
        conn: Conn,
        req: Request,
        rec: StreamRecord,
        count: int,
        interval_s: float,
        event: Callable[[int], bytes],
        tail: list[bytes],
        tokens: bool,
    ) -> None:
        """Send ``count`` events, one every ``interval_s`` (the first at once), then ``tail``."""
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        async with Streamer(conn) as out:
            ok = await out.write(response(200, None, req.keep_alive, headers))
            for k in range(count if ok else 0):
                if (k and not await out.pause(interval_s)) or not await out.write(chunk(event(k))):
                    break
                self._update(
                    rec, chunks_sent=k + 1, **({"completion_tokens": k + 1} if tokens else {})
                )
            else:
                ok = ok and await out.write(b"".join(chunk(t) for t in tail) + chunk(b""))
                self._update(rec, completed=ok)
        self._end(conn, rec)

    async def _complete_at_once(
        self, conn: Conn, req: Request, rec: StreamRecord, chat: ChatRequest
    ) -> None:
        """A non-streaming completion: the tokens take as long as streamed, then one body."""
        async with Streamer(conn) as out:
            for k in range(chat.tokens):
                if k and not await out.pause(chat.interval_s):
                    break
                self._update(rec, chunks_sent=k + 1, completion_tokens=k + 1)
            else:
                body = completion(chat)
                data = response(200, json.dumps(body).encode(), req.keep_alive)
                self._update(rec, completed=await out.write(data))
        self._end(conn, rec)

    def _end(self, conn: Conn, rec: StreamRecord) -> None:
        # A close after the last byte is the client's normal goodbye, not a disconnect.
        gone_at = None if rec.completed else conn.eof_at
        self._update(rec, disconnected_at=gone_at, ended_at=time.time())


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, announcing ``listening <url>`` on stdout."""
    parser = argparse.ArgumentParser(prog="python -m tests.model_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the server's thread starts (it inherits the mask), taken by sigwait here.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with ModelServer(args.host, args.port) as server:
        print(f"listening {server.url}", flush=True)
        signal.sigwait(stop_signals)


if __name__ == "__main__":
    main()
