"""The agent registry: ``@agent``, ``@merger`` and ``@validator``.

Decorators only record the function; the Celery tasks are created when a worker builds its app
(``workers.app.create_app``), so importing an agent module has no side effects.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from workers.errors import ConfigError
from workers.models import AgentKind, CatalogEntry
from workers.names import agent_queue_name, agent_task_name, merger_task_name
from workers.ratelimit import RateLimit, RateLimits
from workers.retries import RetryPolicy

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class AgentSpec:
    """One registered callable."""

    name: str
    kind: AgentKind
    fn: Callable[..., Any]
    input: type[BaseModel]
    output: type[BaseModel] | None
    queue: str | None = None
    description: str = ""
    #: The model its calls use (``ctx.throttle``'s default; pre-flight's limit), its own rate
    #: limit (a name in ORCH_RATE_LIMITS, or inline) and its retry policy (``retrying``'s and
    #: ``workers.llm.chat``'s default).
    model: str | None = None
    rate_limit: str | RateLimit | None = None
    retry: RetryPolicy | None = None

    @property
    def is_async(self) -> bool:
        """An ``async def``: it runs on the worker process's event loop, many at once."""
        return inspect.iscoroutinefunction(self.fn)

    @property
    def task_name(self) -> str | None:
        """Celery task name (validators run inside racers and have none)."""
        if self.kind is AgentKind.AGENT:
            return agent_task_name(self.name)
        if self.kind is AgentKind.MERGER:
            return merger_task_name(self.name)
        return None

    def queue_in(self, base_queue: str) -> str:
        """The queue this spec's messages go to: the one its decorator names, else its own
        (``<base>.<name>``), so a message only reaches a worker that has it. Validators send
        no message of their own: the base queue."""
        if self.queue:
            return self.queue
        if self.kind is AgentKind.VALIDATOR:
            return base_queue
        return agent_queue_name(base_queue, self.kind.value, self.name)

    def limits(self, table: RateLimits) -> dict[str, RateLimit]:
        """The limits every call of this agent is known to be under: its declared model's and
        its own (a call's named key is the call's: not known here). A name missing from the
        table is left out (the agent's throttle raises ConfigError for it)."""
        try:
            found = table.for_call(model=self.model, key=None, agent=self.name, own=self.rate_limit)
        except ConfigError:
            found = table.for_call(model=self.model, key=None, agent=self.name)
        return dict(found)

    def catalog_entry(
        self,
        default_queue: str,
        published_by: str,
        now: float,
        limits: RateLimits | None = None,
    ) -> CatalogEntry:
        """What this spec looks like to clients that do not import worker code (with the
        limits of ``limits``, the publishing worker's ORCH_RATE_LIMITS, that its calls are
        under: pre-flight plans with them)."""
        known = self.limits(limits or RateLimits())
        return CatalogEntry(
            model=self.model,
            rate_limits={n: lim.model_dump(exclude_none=True) for n, lim in known.items()},
            name=self.name,
            kind=self.kind,
            task_name=self.task_name,
            description=self.description,
            input_schema=self.input.model_json_schema(),
            output_schema=self.output.model_json_schema() if self.output else None,
            queue=self.queue_in(default_queue),
            is_async=self.is_async,
            published_by=published_by,
            published_at=now,
        )


@dataclass
class Registry:
    """Name -> spec, one namespace per kind."""

    specs: dict[tuple[AgentKind, str], AgentSpec] = field(default_factory=dict)

    def add(self, spec: AgentSpec) -> None:
        """Register, refusing a second definition under the same name."""
        key = (spec.kind, spec.name)
        existing = self.specs.get(key)
        if existing is not None and existing.fn is not spec.fn:
            same_place = getattr(existing.fn, "__qualname__", None) == getattr(
                spec.fn, "__qualname__", 1
            ) and getattr(existing.fn, "__module__", None) == getattr(spec.fn, "__module__", 1)
            if not same_place:  # a module imported twice re-registers itself: allowed
                raise ValueError(
                    f"{spec.kind.value} {spec.name!r} is already registered by "
                    f"{existing.fn.__module__}.{existing.fn.__qualname__}; pick another name"
                )
        self.specs[key] = spec

    def get(self, kind: AgentKind, name: str) -> AgentSpec | None:
        """The spec, or None."""
        return self.specs.get((kind, name))

    def of_kind(self, kind: AgentKind) -> list[AgentSpec]:
        """Every spec of one kind, by name."""
        return sorted((s for s in self.specs.values() if s.kind is kind), key=lambda s: s.name)

    def all(self) -> list[AgentSpec]:
        """Every spec."""
        return sorted(self.specs.values(), key=lambda s: (s.kind.value, s.name))


REGISTRY = Registry()


def _check_model(what: str, model: object) -> type[BaseModel]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{what} must be a pydantic BaseModel subclass, got {model!r}")
    return model


def _check_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "_-." for c in name):
        raise ValueError(f"bad name {name!r}: use letters, digits, '_', '-' or '.'")
    return name


def _decorator(
    kind: AgentKind,
    name: str,
    input: type[BaseModel],
    output: type[BaseModel] | None,
    queue: str | None,
    description: str,
    **declared: Any,
) -> Callable[[F], F]:
    def register(fn: F) -> F:
        REGISTRY.add(
            AgentSpec(
                name=_check_name(name),
                kind=kind,
                fn=fn,
                input=_check_model("input", input),
                output=_check_model("output", output) if output is not None else None,
                queue=queue,
                description=description or (fn.__doc__ or "").strip().split("\n")[0],
                **declared,
            )
        )
        return fn

    return register


def agent(
    name: str,
    *,
    input: type[BaseModel],
    output: type[BaseModel],
    queue: str | None = None,
    description: str = "",
    model: str | None = None,
    rate_limit: str | RateLimit | None = None,
    retry: RetryPolicy | None = None,
) -> Callable[[F], F]:
    """Register ``fn(input_model, ctx) -> output_model`` as Celery task ``agents.<name>``.

    ``model``: the model its calls use (``ctx.throttle``'s default, and the limit pre-flight
    plans with); ``rate_limit``: its own limit, a name in ORCH_RATE_LIMITS (``"key:team-a"``)
    or an inline ``RateLimit`` shared by every worker running it, taken with the model's;
    ``retry``: the RetryPolicy of its ``retrying`` and ``workers.llm.chat`` calls."""
    _check_declared(name, model, rate_limit, retry)
    return _decorator(
        AgentKind.AGENT, name, input, output, queue, description,
        model=model, rate_limit=rate_limit, retry=retry,
    )  # fmt: skip


def _check_declared(name: str, model: object, rate_limit: object, retry: object) -> None:
    if model is not None and not (isinstance(model, str) and model):
        raise TypeError(f"agent {name!r}: model must be a model name (str), got {model!r}")
    if rate_limit is not None and not isinstance(rate_limit, str | RateLimit):
        raise TypeError(
            f"agent {name!r}: rate_limit must be a name in ORCH_RATE_LIMITS or a RateLimit, "
            f"got {rate_limit!r}"
        )
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"agent {name!r}: retry must be a RetryPolicy, got {retry!r}")


def merger(
    name: str,
    *,
    input: type[BaseModel],
    output: type[BaseModel],
    queue: str | None = None,
    description: str = "",
) -> Callable[[F], F]:
    """Register ``fn(list[input_model], ctx) -> output_model`` as the body of a gather."""
    return _decorator(AgentKind.MERGER, name, input, output, queue, description)


def validator(name: str, *, input: type[BaseModel], description: str = "") -> Callable[[F], F]:
    """Register ``fn(output_model) -> bool``: a quick check of a race candidate."""
    return _decorator(AgentKind.VALIDATOR, name, input, None, None, description)
