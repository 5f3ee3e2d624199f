"""Fleet-wide rate limits for model calls: ``ORCH_RATE_LIMITS``, inline JSON or a JSON file's
path, mapping a model, or a named key (``key:<name>``), to its provider's limits, any subset::

    {"gpt-4o-mini": {"requests_per_minute": 60, "input_tokens_per_minute": 200000,
                     "output_tokens_per_minute": 50000, "concurrent": 20},
     "key:team-a": {"requests_per_minute": 100}}

``window_s`` (default 60) is the sliding window the limits are enforced over, each per-minute
number scaled to it: ``{"requests_per_minute": 300, "window_s": 2}`` lets 10 requests into any
2 s, never a burst of 300 (providers enforce sub-minute windows too). ``lease_s`` (default
60) is how long a concurrency lease lives once its holder stops renewing it (a crash): a
call in progress renews its lease every third of it (workers/limiter.py).

A call is under every limit that names it: its model's, its key's (``ctx.throttle(model="m",
key="team-a")``) and its agent's own (``@agent(rate_limit=...)``); it takes one turn under all
of them at once (workers/limiter.py, ``lua/throttle.lua``): a sliding window log, not a token
bucket, because the promise is "no window ever holds more than the limit", which a bucket's
burst allowance breaks at its edges.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.errors import ConfigError
from workers.store.limits import Quota

__all__ = ["KEY_PREFIX", "RateLimit", "RateLimits", "parse_rate_limits"]

SETTING = "ORCH_RATE_LIMITS"
#: A named key's entry in the table: ``ctx.throttle(key="team-a")`` is ``"key:team-a"``.
KEY_PREFIX = "key:"
#: An agent's own inline limit (``@agent(rate_limit=RateLimit(...))``) is ``"agent:<name>"``.
AGENT_PREFIX = "agent:"


class RateLimit(BaseModel):
    """One model's (or key's) limits; None: not limited on that count."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: float | None = Field(None, gt=0)
    input_tokens_per_minute: float | None = Field(None, gt=0)
    output_tokens_per_minute: float | None = Field(None, gt=0)
    concurrent: int | None = Field(None, ge=1)
    window_s: float = Field(60.0, gt=0, le=3600)
    lease_s: float = Field(60.0, gt=0)

    def quota(self) -> Quota:
        """The allowances per window, as the script takes them."""
        return Quota(
            window_ms=math.ceil(self.window_s * 1000),
            requests=self._per_window(self.requests_per_minute),
            input_tokens=self._per_window(self.input_tokens_per_minute),
            output_tokens=self._per_window(self.output_tokens_per_minute),
            concurrent=self.concurrent or 0,
            lease_ms=math.ceil(self.lease_s * 1000),
        )

    def _per_window(self, per_minute: float | None) -> int:
        if per_minute is None:
            return 0
        return max(1, math.floor(per_minute * self.window_s / 60 + 1e-9))


class RateLimits:
    """The limits table of this process."""

    def __init__(self, table: dict[str, RateLimit] | None = None) -> None:
        self.table = dict(table or {})

    def get(self, name: str | None) -> RateLimit | None:
        """The limit of a model or key, if it has one."""
        return self.table.get(name) if name else None

    def __bool__(self) -> bool:
        return bool(self.table)

    def for_call(
        self,
        *,
        model: str | None,
        key: str | None,
        agent: str = "",
        own: str | RateLimit | None = None,
    ) -> list[tuple[str, RateLimit]]:
        """Every limit one call is under, by name: its model's (if listed), its named key's
        (``key:<key>``, which must be listed: a mistyped key must not mean "unlimited"), and
        its agent's own (``@agent(rate_limit=...)``: a name in the table, or an inline
        RateLimit shared by every worker running that agent)."""
        found: dict[str, RateLimit] = {}
        if model and (limit := self.table.get(model)) is not None:
            found[model] = limit
        if key:
            found[KEY_PREFIX + key] = self._named(KEY_PREFIX + key, f"key {key!r}")
        if isinstance(own, RateLimit):
            found[AGENT_PREFIX + agent] = own
        elif own:
            found[own] = self._named(own, f"agent {agent!r}'s rate_limit")
        return sorted(found.items())

    def _named(self, name: str, what: str) -> RateLimit:
        limit = self.table.get(name)
        if limit is None:
            listed = ", ".join(sorted(self.table)) or "none"
            raise _config_error(f"{what} names {name!r}, which is not in it (listed: {listed})")
        return limit


def _config_error(message: str) -> ConfigError:
    return ConfigError(f"{SETTING}: {message}", setting=SETTING)


def _read(value: str) -> Any:
    text = value.strip()
    if not text.startswith("{"):
        path = Path(text).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise _config_error(
                f"names a file that cannot be read ({path}: {exc.strerror}); give inline JSON "
                '({"model": {"requests_per_minute": 60}}) or the path of such a file'
            ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _config_error(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None


@functools.lru_cache(maxsize=8)
def parse_rate_limits(value: str | None) -> RateLimits:
    """ORCH_RATE_LIMITS as a table; ConfigError naming the setting for anything else."""
    if not value or not value.strip():
        return RateLimits()
    raw = _read(value)
    if not isinstance(raw, dict):
        raise _config_error("must be a JSON object: model or key -> its limits")
    table: dict[str, RateLimit] = {}
    for name, limit in raw.items():
        try:
            table[str(name)] = RateLimit.model_validate(limit)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'its value'}: {e['msg']}"
                for e in exc.errors()
            )
            raise _config_error(
                f"{name!r} takes requests_per_minute, input_tokens_per_minute, "
                "output_tokens_per_minute (numbers > 0), concurrent (an integer >= 1), "
                f"window_s and lease_s ({problems})"
            ) from None
    return RateLimits(table)
