"""The OpenAI chat-completions side of the loopback model server (tests/model_server.py): the
request and its directives, and the pieces of the answer (events, usage, errors) as OpenAI sends
them."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tests.model_http import HttpError

#: ``[[tokens=50 interval_ms=20 id=abc usage=0]]`` in the last message's content.
DIRECTIVES = re.compile(r"\[\[([^\]]*)\]\]")


@dataclass
class ChatRequest:
    """What a chat-completions request asks for."""

    model: str | None
    prompt_tokens: int
    tokens: int
    interval_s: float
    stream_id: str
    stream: bool
    include_usage: bool


def sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(status: int, message: str) -> bytes:
    """An error as OpenAI sends one."""
    kind, code = {
        429: ("requests", "rate_limit_exceeded"),
        404: ("invalid_request_error", "not_found"),
    }.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    err = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": err}).encode()


def _text(content: object) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def parse_chat(body: bytes) -> ChatRequest:
    """A chat-completions request, with the directives of its last message."""
    try:
        req = json.loads(body)
        messages = req["messages"]
        texts = [_text(m.get("content")) for m in messages]
        found = DIRECTIVES.findall(texts[-1])
        opts = dict(kv.split("=", 1) for kv in (found[-1].split() if found else []) if "=" in kv)
        options = req.get("stream_options") or {}
        return ChatRequest(
            model=req.get("model"),
            prompt_tokens=sum(len(t.split()) for t in texts),
            tokens=int(opts.get("tokens", 20)),
            interval_s=float(opts.get("interval_ms", 10)) / 1000,
            stream_id=opts.get("id") or uuid.uuid4().hex,
            stream=req.get("stream") is True,
            # ``usage=0``: a server that ignores stream_options.include_usage.
            include_usage=options.get("include_usage") is True and opts.get("usage") != "0",
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise HttpError(400, f"bad chat-completions request: {exc!r}") from exc


def stream_events(chat: ChatRequest) -> tuple[Callable[[int], bytes], list[bytes]]:
    """The streamed answer: the k-th token's event, and what follows the last token (the finish
    chunk, the usage chunk when asked for, ``[DONE]``)."""
    base: dict[str, object] = {
        "id": f"chatcmpl-{chat.stream_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": chat.model,
    }
    if chat.include_usage:
        base["usage"] = None  # as OpenAI: null on every chunk but the last

    def choice(delta: dict[str, str], finish: str | None) -> bytes:
        item = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [item]})

    def event(k: int) -> bytes:
        first = {"role": "assistant"} if k == 0 else {}
        return choice({**first, "content": " tok"}, None)

    tail = [choice({}, "stop")]
    if chat.include_usage:
        tail.append(sse({**base, "choices": [], "usage": usage(chat.prompt_tokens, chat.tokens)}))
    tail.append(b"data: [DONE]\n\n")
    return event, tail


def completion(chat: ChatRequest) -> dict[str, object]:
    """The non-streamed answer."""
    message = {"role": "assistant", "content": " tok" * chat.tokens}
    return {
        "id": f"chatcmpl-{chat.stream_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": usage(chat.prompt_tokens, chat.tokens),
    }
