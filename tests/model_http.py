"""HTTP/1.1 plumbing of the loopback model server (tests/model_server.py): requests read from an
asyncio stream (keep-alive, Content-Length bodies), responses framed, and a writer that watches
the request side while it writes, so a client going away is seen the moment its socket closes."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
READ_BYTES = 64 * 1024
#: Above this much unsent output a write waits for the client (or for it to go away).
HIGH_WATER_BYTES = 64 * 1024


class HttpError(Exception):
    """A request the server cannot serve: answered with ``status``, then the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes
    keep_alive: bool


class Conn:
    """One client connection: its bytes read ahead into ``buf``, and when it ended (EOF/reset)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.eof_at: float | None = None

    async def _fill(self) -> bool:
        """Read what the client sent next into ``buf``; False (and ``eof_at``) once it is gone."""
        try:
            data = await self.reader.read(READ_BYTES)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.eof_at = self.eof_at or time.time()
            return False
        self.buf += data
        return True

    async def until_eof(self) -> None:
        """Return when the client closes or resets; a pipelined request is kept in ``buf``."""
        while len(self.buf) <= MAX_HEAD_BYTES + MAX_BODY_BYTES and await self._fill():
            pass

    async def read_request(self) -> Request | None:
        """The next request, or None when the client closed between requests."""
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > MAX_HEAD_BYTES:
                raise HttpError(431, "request head too large")
            if not await self._fill():
                if self.buf:
                    raise HttpError(400, "connection closed inside a request head")
                return None
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[: end + 4]
        method, path, query, version, headers = _parse_head(head)
        if "transfer-encoding" in headers:
            raise HttpError(501, "only Content-Length request bodies are supported")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            raise HttpError(400, "bad Content-Length") from exc
        if not 0 <= length <= MAX_BODY_BYTES:
            raise HttpError(413, "request body too large")
        while len(self.buf) < length:
            if not await self._fill():
                raise HttpError(400, "connection closed inside a request body")
        body = bytes(self.buf[:length])
        del self.buf[:length]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        return Request(method, path, query, headers, body, keep_alive)


def _parse_head(head: str) -> tuple[str, str, dict[str, str], str, dict[str, str]]:
    lines = head.split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError as exc:
        raise HttpError(400, f"bad request line {lines[0][:80]!r}") from exc
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(505, f"unsupported version {version[:20]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    url = urllib.parse.urlsplit(target)
    return method, url.path, dict(urllib.parse.parse_qsl(url.query)), version, headers


def response(
    status: int, body: bytes | None, keep_alive: bool, headers: dict[str, str] | None = None
) -> bytes:
    """A response head (chunked when ``body`` is None) and its body."""
    fields = {"Content-Type": "application/json", **(headers or {})}
    if body is None:
        fields["Transfer-Encoding"] = "chunked"
    else:
        fields["Content-Length"] = str(len(body))
    fields["Connection"] = "keep-alive" if keep_alive else "close"
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{k}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (the empty one ends it)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Streamer:
    """Writes a response while a task awaits the request side: ``write`` and ``pause`` return
    False the moment the client is gone, and nothing more is written after that."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self._watch: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Streamer:
        self._watch = asyncio.ensure_future(self.conn.until_eof())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._watch is not None
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch

    @property
    def gone(self) -> bool:
        return self.conn.eof_at is not None

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the client goes away first; True when it is still there."""
        assert self._watch is not None
        if not self._watch.done():
            await asyncio.wait([self._watch], timeout=seconds)
        elif not self.gone:  # stopped watching: too much pipelined input
            await asyncio.sleep(seconds)
        return not self.gone

    async def write(self, data: bytes) -> bool:
        """Send ``data`` (waiting while the client reads slowly); True when it is still there."""
        assert self._watch is not None
        if self.gone:
            return False
        writer = self.conn.writer
        writer.write(data)
        if writer.transport.get_write_buffer_size() > HIGH_WATER_BYTES:
            drain = asyncio.ensure_future(writer.drain())
            await asyncio.wait([drain, self._watch], return_when=asyncio.FIRST_COMPLETED)
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await drain
        return not self.gone
