"""Exceptions as envelope errors (:class:`ErrorInfo`) that never quote the values involved:
payloads and outputs may be secret, and this text reaches envelopes, logs and Flower."""

from __future__ import annotations

import traceback
from typing import get_args

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_core.core_schema import ErrorType

from workers.models import ErrorInfo

__all__ = ["error_info", "validation_error"]


def error_info(exc: BaseException, hint: str | None = None) -> ErrorInfo:
    """An agent's exception: its type, its message and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    if isinstance(exc, ValidationError):
        # str() of a ValidationError quotes the input (input_value=...), which may be secret.
        inner = validation_error(type(exc).__name__, exc, hint or "")
        return ErrorInfo(type=inner.type, message=f"{inner.message}{where}"[:2000], hint=hint)
    return ErrorInfo(type=type(exc).__name__, message=f"{exc}{where}"[:2000], hint=hint)


def validation_error(what: str, exc: ValidationError, hint: str) -> ErrorInfo:
    """Which field failed which rule, never the value: payloads may be secret, and this text
    reaches the envelope, the run's error, the logs and Flower."""
    problems = "; ".join(
        f"field {'.'.join(str(p) for p in e['loc']) or '<root>'!r}: {_problem(e)}"
        for e in exc.errors(include_url=False, include_input=False)[:10]
    )
    return ErrorInfo(type=what, message=problems[:2000], hint=hint)


#: pydantic's own error types; any other is a PydanticCustomError whose text is the model's.
_BUILTIN_ERRORS = frozenset(get_args(ErrorType))
#: Context entries of pydantic's messages that can carry part of the input (a parser's error
#: text, a union's tag); the others (bounds, patterns, expected values) come from the model.
_INPUT_CONTEXT = frozenset({"error", "encoding_error", "tag", "tz_actual", "attribute"})


def _problem(e: ErrorDetails) -> str:
    """pydantic's message when it cannot quote the input, else the part before the quote."""
    kind, msg, ctx = e["type"], e["msg"], e.get("ctx") or {}
    if kind not in _BUILTIN_ERRORS or kind in ("value_error", "assertion_error"):
        return f"fails the model's check {kind!r}"  # the model's own text may quote the value
    quoted = [str(ctx[k]) for k in sorted(_INPUT_CONTEXT & ctx.keys())]
    cuts = [msg.find(q) if q else len(msg) for q in quoted]
    head = "" if -1 in cuts else msg[: min(cuts, default=len(msg))].rstrip(" ,:'\"")
    return f"{head} ({kind})" if head else f"fails the check {kind!r}"
