"""``workers.llm.chat`` in this process, no Redis: a bare AgentContext against the real loopback
model server (tests/model_server.py). Usage recorded as it streams and corrected to the
server's count, prices, a server that sends no usage, a cancel that drops the connection, and
errors that never show the API key."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import math
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from tests.conftest import ROOT, wait_for
from tests.model_server import ModelServer, StreamRecord
from workers import llm
from workers.context import AgentContext
from workers.errors import ConfigError, ModelCallFailed, TaskCancelled
from workers.ledger import SpendMeter
from workers.models import Pattern
from workers.prices import parse_prices
from workers.retries import DEFAULT_POLICY, RetryPolicy

T = TypeVar("T")
KEY = f"sk-test-{uuid.uuid4().hex}"
SYSTEM = "be terse"


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    with ModelServer() as s:
        yield s


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    llm._settings.cache_clear()  # tests change ORCH_LLM__* between them
    yield
    llm._settings.cache_clear()


def _ctx(meter: SpendMeter | None = None, deadline_s: float = 60) -> AgentContext:
    return AgentContext(
        run_id="r",
        task_id="t",
        index=0,
        agent="a",
        pattern=Pattern.SPAWN,
        attempt=1,
        deadline_at=time.time() + deadline_s,
        worker="w",
        meter=meter,
    )


def _messages(directive: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"say hi [[{directive}]]"},
    ]


def _estimate(messages: list[dict[str, Any]]) -> int:
    return math.ceil(sum(len(m["content"]) for m in messages) / 4)


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """Run on a loop of its own, closing this loop's clients before it ends."""

    async def main() -> T:
        try:
            return await make()
        finally:
            await llm.aclose()

    return asyncio.run(main())


async def _until(cond: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)


def _ended(server: ModelServer, stream_id: str) -> StreamRecord:
    rec = wait_for(
        lambda: (r := server.record(stream_id)) is not None and r.ended_at is not None and r,
        5,
        f"the server to end stream {stream_id}",
    )
    assert isinstance(rec, StreamRecord)
    return rec


def chat_(
    ctx: AgentContext,
    server: ModelServer,
    directive: str,
    model: str = "m",
    retry: RetryPolicy = DEFAULT_POLICY,
) -> Coroutine[Any, Any, str]:
    return llm.chat(
        ctx,
        model=model,
        messages=_messages(directive),
        base_url=server.url + "/v1",
        api_key=KEY,
        temperature=0,
        retry=retry,
    )


def test_a_chat_returns_the_text_and_records_the_servers_tokens_as_they_stream(
    server: ModelServer,
) -> None:
    ctx = _ctx()
    seen: list[tuple[int, int, int]] = []  # (input, output, chunks the server sent) mid-stream

    async def main() -> str:
        call = asyncio.create_task(
            chat_(ctx, server, "tokens=30 interval_ms=10 id=done1"), name="chat"
        )
        await _until(lambda: (r := server.record("done1")) and r.chunks_sent >= 10, 5, "10")
        rec = server.record("done1")
        assert rec is not None
        seen.append((ctx.spent.input_tokens, ctx.spent.output_tokens, rec.chunks_sent))
        return await call

    text = _run(main)
    rec = _ended(server, "done1")
    assert text == " tok" * 30
    assert rec.completed and rec.authorization == f"Bearer {KEY}"
    assert (rec.prompt_tokens, rec.completion_tokens) == (2 + 5, 30)  # the server counts words
    spent = ctx.spent
    assert (spent.model, spent.input_tokens, spent.output_tokens) == ("m", 7, 30)
    # Counted while streaming: output tokens already there, the prompt only with the usage.
    [(input_mid, output_mid, sent_mid)] = seen
    assert input_mid == 0 and 9 <= output_mid <= sent_mid < 30


def test_prices_give_the_cost_and_an_unknown_model_keeps_its_tokens(server: ModelServer) -> None:
    prices = parse_prices('{"m": {"input_per_mtok": 1000, "output_per_mtok": 3000}}')
    priced, unknown = (_ctx(SpendMeter(prices, flush_s=60)) for _ in range(2))
    _run(lambda: chat_(priced, server, "tokens=12 interval_ms=5 id=price1"))
    _run(lambda: chat_(unknown, server, "tokens=7 interval_ms=5 id=price2", model="other"))
    served1, served2 = _ended(server, "price1"), _ended(server, "price2")
    p = priced.spent
    assert (p.input_tokens, p.output_tokens) == (served1.prompt_tokens, served1.completion_tokens)
    assert p.cost_usd == pytest.approx((p.input_tokens * 1000 + 12 * 3000) / 1e6)
    assert (p.output_tokens, p.unpriced) == (12, [])
    u = unknown.spent
    assert (u.model, u.input_tokens, u.output_tokens) == ("other", served2.prompt_tokens, 7)
    assert u.cost_usd is None and u.unpriced == ["other"]


def test_a_server_that_sends_no_usage_is_counted_by_chunks_and_characters(
    server: ModelServer,
) -> None:
    ctx = _ctx()
    directive = "tokens=9 interval_ms=5 id=nousage usage=0"
    assert _run(lambda: chat_(ctx, server, directive)) == " tok" * 9
    assert _ended(server, "nousage").completed
    assert (ctx.spent.input_tokens, ctx.spent.output_tokens) == (_estimate(_messages(directive)), 9)


def test_a_cancel_mid_stream_closes_the_connection_and_keeps_the_partial_usage(
    server: ModelServer,
) -> None:
    ctx = _ctx()
    directive = "tokens=400 interval_ms=10 id=cancel1"

    async def main() -> float:
        call = asyncio.create_task(chat_(ctx, server, directive))
        # The client's count, not the server's: a chunk sent is not yet a chunk read.
        await _until(lambda: ctx.spent.output_tokens >= 5, 5, "5 tokens read")
        cancelled_at = time.time()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return cancelled_at

    cancelled_at = _run(main)
    rec = _ended(server, "cancel1")
    assert rec.disconnected_at is not None and not rec.completed
    assert rec.disconnected_at - cancelled_at < 1.0
    assert 5 <= ctx.spent.output_tokens <= rec.chunks_sent < 400
    assert ctx.spent.input_tokens == _estimate(_messages(directive))  # no usage chunk came


def test_a_deadline_mid_stream_raises_task_cancelled_and_closes_the_connection(
    server: ModelServer,
) -> None:
    """TaskCancelled is raised in chat's own frame, between two chunks: the response must be
    closed there and then, not when the stream object is collected (the caught exception
    keeps it alive, the loop goes on)."""
    ctx = _ctx(deadline_s=0.3)

    async def main() -> BaseException:
        try:
            await chat_(ctx, server, "tokens=400 interval_ms=10 id=late1")
        except TaskCancelled as exc:
            caught = exc
        else:
            raise AssertionError("chat went on past the deadline")
        gone = lambda: (r := server.record("late1")) is not None and r.disconnected_at  # noqa: E731
        await _until(gone, 1.0, "the server to see the disconnect, the loop still running")
        return caught

    assert isinstance(_run(main), TaskCancelled)
    rec = _ended(server, "late1")
    assert rec.disconnected_at is not None and rec.disconnected_at < ctx.deadline_at + 1.0
    assert 1 <= ctx.spent.output_tokens <= rec.chunks_sent < 400


def test_a_429_is_a_model_call_failed_with_retry_after_and_no_key(
    server: ModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.fail_next(1, 429, retry_after_s=1.5)
    ctx = _ctx()
    with pytest.raises(ModelCallFailed) as caught:
        _run(lambda: chat_(ctx, server, "tokens=3 id=limited1", retry=RetryPolicy(attempts=1)))
    exc = caught.value
    assert (exc.status, exc.model, exc.retry_after_s) == (429, "m", 1.5)
    assert "rate limited" in str(exc) and "injected failure 429" in str(exc)
    assert ctx.meter.usage is None  # refused: nothing was read, nothing is billed
    _assert_no_key(exc, KEY, caplog)


class _Refuser(http.server.BaseHTTPRequestHandler):
    """Answers every request 401 quoting the key it was sent, whole and in part, as
    providers do ("Incorrect API key provided: sk-abc1***...wxyz")."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        key = self.headers.get("authorization", "").removeprefix("Bearer ")
        message = (
            f"Incorrect API key provided: {key[:10]}{'*' * 20}{key[-4:]}. Yours is {key}; "
            f"header was Bearer {key}"
        )
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def refuser() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuser)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.mark.parametrize("key", [KEY, f"gsk_{uuid.uuid4().hex}", "plainsecret" * 3])
def test_a_401_quoting_the_key_is_scrubbed_everywhere(
    refuser: str, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ctx = _ctx()
    with pytest.raises(ModelCallFailed) as caught:
        _run(
            lambda: llm.chat(ctx, model="m", messages=_messages(""), base_url=refuser, api_key=key)
        )
    exc = caught.value
    assert exc.status == 401 and "ORCH_LLM__API_KEY" in str(exc)
    assert "Incorrect API key provided" in str(exc)
    assert exc.__cause__ is None and exc.__context__ is None
    _assert_no_key(exc, key, caplog)


def _assert_no_key(exc: BaseException, key: str, caplog: pytest.LogCaptureFixture) -> None:
    shown = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), caplog.text]
    shown += [repr(r.args) for r in caplog.records]
    # Neither the key nor any 8 characters of it (a partial quote), nor an sk- token.
    parts = {key[i : i + 8] for i in range(len(key) - 7)} - {"sk-test-"}
    for text in shown:
        assert key not in text and "sk-test-" not in text
        assert not [p for p in parts if p in text], text


def test_no_answer_is_a_model_call_failed_without_a_status() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ModelCallFailed, match="could not connect") as caught:
        _run(
            lambda: llm.chat(
                _ctx(), model="m", messages=_messages(""), base_url=f"http://127.0.0.1:{port}/v1",
                api_key=KEY, retry=RetryPolicy(attempts=2, backoff_s=0.05, max_backoff_s=0.05),
            )
        )  # fmt: skip
    assert caught.value.status is None and caught.value.retry_after_s is None


def test_the_endpoint_and_key_come_from_the_settings(
    server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCH_LLM__BASE_URL", raising=False)
    monkeypatch.setenv("ORCH_LLM__API_KEY", KEY)
    with pytest.raises(ConfigError, match="ORCH_LLM__BASE_URL") as caught:
        _run(lambda: llm.chat(_ctx(), model="m", messages=_messages("")))
    assert caught.value.setting == "ORCH_LLM__BASE_URL"
    llm._settings.cache_clear()
    monkeypatch.setenv("ORCH_LLM__BASE_URL", server.url + "/v1")
    monkeypatch.setenv("ORCH_LLM__TIMEOUT_S", "30")
    ctx = _ctx()
    assert _run(lambda: llm.chat(ctx, model="m", messages=_messages("tokens=2 id=env1"))) == (
        " tok" * 2
    )
    assert _ended(server, "env1").authorization == f"Bearer {KEY}"
    llm._settings.cache_clear()
    monkeypatch.delenv("ORCH_LLM__API_KEY")
    with pytest.raises(ConfigError, match="ORCH_LLM__API_KEY"):
        _run(lambda: llm.chat(_ctx(), model="m", messages=_messages("")))


def test_the_extra_is_optional() -> None:
    """``workers`` never imports openai; ``workers.llm`` without it says how to install it."""
    code = (
        "import sys; import workers; assert 'openai' not in sys.modules, 'workers imports openai'\n"
        "sys.modules['openai'] = None\n"
        "try:\n    import workers.llm\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert "pip install 'celery-orchestrator[llm]'" in out.stdout
