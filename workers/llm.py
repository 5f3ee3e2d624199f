"""``chat``: one streamed call to an OpenAI-compatible chat-completions API, from an ``async def``
agent, with its tokens recorded in the subagent's ledger as they arrive (the ``[llm]`` extra).

The endpoint and its key come from ``ORCH_LLM__BASE_URL`` and ``ORCH_LLM__API_KEY``. Each
attempt waits for its turn under the model's fleet-wide limit (``ORCH_RATE_LIMITS``,
workers/ratelimit.py) and a 429 / 5xx / lost connection is retried (workers/retries.py). A cancel
(race lost, ``Run.cancel()``, the deadline) lands at the stream's ``async for``: the response is
closed at once, so the provider sees the disconnect and stops generating; what was counted
until then stays recorded. The key never reaches a log, an exception, an envelope or an event:
a provider's error is re-raised as :class:`workers.errors.ModelCallFailed` with anything that
looks like a key taken out.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any, cast

try:
    import openai
    from openai.types.chat import ChatCompletionChunk
except ImportError as exc:  # the extra is optional: say how to get it
    raise ImportError(
        "workers.llm needs the openai SDK, an optional extra: "
        "pip install 'celery-orchestrator[llm]'"
    ) from exc

from workers.context import AgentContext
from workers.errors import ConfigError, ModelCallFailed
from workers.retries import RetryPolicy, retrying
from workers.settings import LlmSettings, Settings, safe_url

__all__ = ["aclose", "chat"]

log = logging.getLogger(__name__)

#: Characters per token of the input estimate, used only when the provider reports no usage.
CHARS_PER_TOKEN = 4
#: Longest provider message quoted in a ModelCallFailed.
MAX_DETAIL_CHARS = 300
#: A run of this many characters of the key inside a word marks that word as a partial quote.
KEY_WINDOW_CHARS = 6
#: Tokens that look like API keys (OpenAI's sk-..., sk-proj-..., Stripe-like sk_live_...) and
#: bearer credentials, whatever key was configured: providers quote a wrong key in part.
_KEY_LIKE = re.compile(r"(?i)\b(?:sk|rk|pk)[-_][A-Za-z0-9_\-*.]{3,}|\bBearer\s+\S+")
_HINTS = {
    401: "the API key was refused: check ORCH_LLM__API_KEY",
    403: "the API key may not use this model or endpoint",
    404: "no such model or endpoint: check the model name and ORCH_LLM__BASE_URL (it ends "
    "with /v1 for most servers)",
    429: "rate limited or out of quota",
}

_clients: dict[tuple[int, int, str, str], tuple[asyncio.AbstractEventLoop, openai.AsyncOpenAI]] = {}
_clients_lock = threading.Lock()


async def chat(
    ctx: AgentContext,
    *,
    model: str | None = None,
    messages: list[dict[str, Any]],
    key: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    retry: RetryPolicy | None = None,
    **params: Any,
) -> str:
    """Stream one chat completion and return its text; every chunk is recorded in ``ctx``'s
    usage as it arrives, corrected to the provider's own count when it sends one.

    ``model`` defaults to the agent's declared one (``@agent(model=...)``). Each attempt first
    waits for a turn under the call's fleet-wide rate limits (ORCH_RATE_LIMITS: the model's,
    ``key``'s and the agent's own, at once); a 429, a transient 5xx or a lost connection is
    retried as ``retry`` (else the agent's ``@agent(retry=...)``) says, honouring Retry-After,
    within the deadline and the run's budget; every attempt's usage counts.
    ``params`` go to ``chat.completions.create`` (temperature, max_tokens, ...); the call
    always streams. ``base_url`` and ``api_key`` override the settings (tests). Raises
    ModelCallFailed (status, retry_after_s) when the provider refuses or fails and retrying
    is over, ConfigError when no endpoint is configured, TaskCancelled / CancelledError when
    stopped.
    """
    ctx.raise_if_cancelled()
    model = model or ctx.model
    if not model:
        raise ValueError("chat: no model: pass model=... or declare @agent(model=...)")
    client = _client(base_url, api_key)
    params.pop("stream", None)  # always streamed: usage arrives as it goes, a cancel closes it
    options = {**(params.pop("stream_options", None) or {}), "include_usage": True}
    estimate = _estimate_input_tokens(messages)

    async def attempt() -> str:
        lease = await ctx.throttle(model=model, key=key, tokens=estimate)
        tally = _Tally(ctx, model, estimate)
        try:
            return await _stream(client, tally, model, messages, options, params)
        except openai.APIError as exc:
            failure = _failure(exc, model, client)
        finally:
            await lease.release(input_tokens=tally.input_tokens, output_tokens=tally.output_tokens)
        # Raised outside the except block: the SDK's error (whose message, body and request
        # may quote the key) is neither chained nor kept as __context__ of what we raise.
        raise failure

    return await retrying(ctx, attempt, retry)


async def aclose() -> None:
    """Close the clients this process made on the running event loop (at shutdown, or at the
    end of a test's loop, so no connection outlives its loop)."""
    loop = asyncio.get_running_loop()
    with _clients_lock:
        mine = [k for k, (made_on, _) in _clients.items() if made_on is loop]
        closing = [_clients.pop(k)[1] for k in mine]
    for client in closing:
        await client.close()


async def _stream(
    client: openai.AsyncOpenAI,
    tally: _Tally,
    model: str,
    messages: list[dict[str, Any]],
    options: dict[str, Any],
    params: dict[str, Any],
) -> str:
    stream = await client.chat.completions.create(
        model=model,
        messages=cast(Any, messages),
        stream=True,
        stream_options=cast(Any, options),
        **params,
    )
    tally.opened = True
    parts: list[str] = []
    try:
        # ``async with`` closes the HTTP response however the loop ends: a CancelledError or
        # TaskCancelled here must drop the connection at once, not when it is collected.
        async with stream:
            async for chunk in stream:
                tally.chunk(chunk)
                parts.extend(c.delta.content or "" for c in chunk.choices if c.index == 0)
                tally.ctx.raise_if_cancelled()
    finally:
        tally.finish()
    return "".join(parts)


class _Tally:
    """What one call has recorded in the subagent's usage so far."""

    def __init__(self, ctx: AgentContext, model: str, input_estimate: int) -> None:
        self.ctx = ctx
        self.model = model
        self.input_estimate = input_estimate
        self.input_tokens = 0
        self.output_tokens = 0
        #: The response began: the provider took the prompt, so it counts even if cut short.
        self.opened = False
        self.reported = False

    def chunk(self, chunk: ChatCompletionChunk) -> None:
        """One streamed chunk: a choice's delta is one output token, counted at once (a
        budget sees a long answer while it runs); the provider's usage, when it comes (the
        last chunk, or every chunk for some servers), sets the totals to its own numbers."""
        if chunk.usage is not None:
            self.reported = True
            self._up_to(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            return
        produced = sum(1 for c in chunk.choices if _carries_output(c.delta))
        if produced:
            self._add(0, produced)

    def finish(self) -> None:
        """The stream ended (completed, cancelled or failed). Without the provider's usage
        (a server that ignores ``stream_options.include_usage``, or a stream cut before its
        usage chunk) the input is estimated at one token per CHARS_PER_TOKEN characters of the
        messages' text: an estimate, but a prompt the provider read is billed."""
        if self.opened and not self.reported:
            self._up_to(self.input_estimate, self.output_tokens)
            log.debug(
                "model %r sent no usage: input estimated at %d tokens, output %d chunks",
                self.model,
                self.input_estimate,
                self.output_tokens,
            )

    def _up_to(self, input_total: int, output_total: int) -> None:
        # A provider counting fewer output tokens than the deltas we counted cannot be
        # honoured exactly: what was recorded may be in the run's ledger already.
        self._add(
            max(0, input_total - self.input_tokens), max(0, output_total - self.output_tokens)
        )

    def _add(self, input_tokens: int, output_tokens: int) -> None:
        if not (input_tokens or output_tokens):
            return
        self.ctx.record_usage(
            model=self.model, input_tokens=input_tokens, output_tokens=output_tokens
        )
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens


def _carries_output(delta: Any) -> bool:
    return bool(delta.content or delta.refusal or delta.tool_calls or delta.function_call)


def _estimate_input_tokens(messages: list[dict[str, Any]]) -> int:
    chars = sum(len(_text(m.get("content"))) for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN)


def _text(content: object) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


# -- clients and settings ---------------------------------------------------------------------


@functools.cache
def _settings() -> LlmSettings:
    """Read once per process (a forked child inherits the parent's, read from the same
    environment)."""
    return Settings().llm


def _client(base_url: str | None, api_key: str | None) -> openai.AsyncOpenAI:
    """This process's client for the endpoint, made on the running loop (its connection pool
    belongs to that loop): a prefork child never uses its parent's."""
    settings = _settings()
    url = base_url or settings.base_url
    if not url:
        raise ConfigError(
            "no model endpoint configured: set ORCH_LLM__BASE_URL to an OpenAI-compatible API "
            "(e.g. https://api.openai.com/v1, or http://localhost:8000/v1 for vLLM)",
            setting="ORCH_LLM__BASE_URL",
        )
    secret = settings.api_key.get_secret_value() if settings.api_key is not None else None
    key = api_key or secret
    if not key:
        # Never the SDK's OPENAI_API_KEY fallback: that key would be sent to whatever
        # ORCH_LLM__BASE_URL names.
        raise ConfigError(
            "no API key for the model endpoint: set ORCH_LLM__API_KEY (any value for a server "
            "that needs none)",
            setting="ORCH_LLM__API_KEY",
        )
    loop = asyncio.get_running_loop()
    pid = os.getpid()
    with _clients_lock:
        for stale in [k for k, (on, _) in _clients.items() if k[0] != pid or on.is_closed()]:
            del _clients[stale]  # a parent's (after fork) or a finished loop's: unusable here
        made = _clients.get((pid, id(loop), url, key))
        if made is None:
            # Retries are not the SDK's to decide: chat's own policy retries within the
            # deadline, after the fleet-wide limiter's turn (workers/retries.py).
            client = openai.AsyncOpenAI(
                base_url=url, api_key=key, max_retries=0, timeout=settings.timeout_s
            )
            made = _clients[(pid, id(loop), url, key)] = (loop, client)
        return made[1]


# -- errors -----------------------------------------------------------------------------------


def _failure(exc: openai.APIError, model: str, client: openai.AsyncOpenAI) -> ModelCallFailed:
    """The project's error for an SDK error, its message scrubbed of the key."""
    status: int | None = None
    retry_after_s: float | None = None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry_after_s = _retry_after_s(exc.response.headers)
        what = f"HTTP {status}"
    elif isinstance(exc, openai.APITimeoutError):
        what = "timed out (ORCH_LLM__TIMEOUT_S)"
    elif isinstance(exc, openai.APIConnectionError):
        what = "could not connect"
    else:
        what = type(exc).__name__
    detail = _provider_message(exc)
    hint = _HINTS.get(status or 0, "")
    wait = f"; retry after {retry_after_s:g} s" if retry_after_s is not None else ""
    message = (
        f"model call to {model!r} at {safe_url(str(client.base_url))} failed: {what}"
        f"{f' ({hint})' if hint else ''}{wait}: {detail}"
    )
    return ModelCallFailed(
        _scrub(message, client.api_key), status=status, model=model, retry_after_s=retry_after_s
    )


def _provider_message(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        found = inner.get("message") if isinstance(inner, Mapping) else inner
        if isinstance(found, str) and found:
            return found[:MAX_DETAIL_CHARS]
    cause = exc.__cause__
    if isinstance(exc, openai.APIConnectionError) and cause is not None:
        return f"{type(cause).__name__}: {cause}"[:MAX_DETAIL_CHARS]
    return exc.message[:MAX_DETAIL_CHARS]


def _scrub(text: str, key: str | None) -> str:
    """``text`` without the key, any part of it quoted inside a word, or anything that looks
    like a key or a bearer credential."""
    if key:
        text = text.replace(key, "***")
    text = _KEY_LIKE.sub("***", text)
    if not key or len(key) < KEY_WINDOW_CHARS:
        return text
    windows = {key[i : i + KEY_WINDOW_CHARS] for i in range(len(key) - KEY_WINDOW_CHARS + 1)}

    def word(m: re.Match[str]) -> str:
        w = m.group(0)
        return "***" if any(part in w for part in windows) else w

    return re.sub(r"\S+", word, text)


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """What the provider asked to wait: ``retry-after-ms``, ``retry-after`` in seconds or as a
    date."""
    for name, per_s in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / per_s)
        except ValueError:
            pass
    value = headers.get("retry-after")
    parsed = email.utils.parsedate_tz(value) if value else None
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())
