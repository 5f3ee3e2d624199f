"""One settings root for every process (environment prefix ``ORCH_``).

Nested sections use ``__`` in environment names, e.g. ``ORCH_CANCEL__GRACE_S=5``.
"""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from workers.errors import ConfigError
from workers.settings_sections import (
    AdvisorSettings,
    AsyncSettings,
    CancelSettings,
    FlowerSettings,
    LedgerSettings,
    LlmSettings,
    RemoteControlSettings,
    TreeSettings,
)

__all__ = [
    "BROKER_SCHEMES",
    "NOT_SETTINGS_PREFIXES",
    "STATE_SCHEMES",
    "AdvisorSettings",
    "AsyncSettings",
    "CancelSettings",
    "FlowerSettings",
    "LedgerSettings",
    "LlmSettings",
    "RemoteControlSettings",
    "Settings",
    "TreeSettings",
    "check_environment",
    "check_scheme",
    "safe_url",
    "setting_names",
]


class Settings(BaseSettings):
    """Settings shared by clients, the coordinator and workers."""

    model_config = SettingsConfigDict(env_prefix="ORCH_", env_nested_delimiter="__", extra="forbid")

    broker_url: str | None = Field(
        None,
        description="Celery broker URL (redis://, rediss://, amqp://, amqps://, pyamqp://). "
        "Unset: only the embedded stack (`orchestrator demo` / `up`) can run.",
    )
    result_backend: str | None = Field(
        None, description="Celery result backend; defaults to the broker URL when it is Redis."
    )
    state_url: str | None = Field(
        None,
        description="Redis holding run records, events, catalog and cancel flags (redis://, "
        "rediss://, unix://); defaults to the result backend, then the broker, whichever is "
        "Redis.",
    )
    key_prefix: str = Field(
        "orch", min_length=1, description="Prefix of every Redis key this project writes."
    )
    agent_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules that define agents, imported by workers (comma separated).",
    )
    agent_queue: str = Field("agents", description="Default queue of agents and mergers.")
    coordinator_queue: str = Field("orchestrator", description="Queue of the coordinator.")
    client_expand_max_n: int = Field(
        0,
        ge=0,
        description="Runs of at most this many subagents are expanded by the submitting client "
        "itself, skipping the hop through a coordinator (a few ms sooner; Flower then shows no "
        "orchestrator.run task for them). 0: every run goes through a coordinator.",
    )
    default_deadline_s: float = Field(
        300.0, gt=0, description="Deadline of an orchestration when the request names none."
    )
    max_deadline_s: float = Field(
        3600.0,
        gt=0,
        description="Longest deadline accepted; the broker's visibility timeout is sized above it.",
    )
    max_request_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="Largest orchestration request (JSON) accepted; big inputs belong in "
        "storage, referenced from payloads.",
    )
    run_ttl_s: int = Field(
        86_400, gt=0, description="How long run records, results and events are kept."
    )
    recent_runs: int = Field(1000, gt=0, description="How many run ids `status` can list.")
    heartbeat_s: float = Field(
        5.0, gt=0, description="How often workers and coordinators refresh their heartbeat."
    )
    lost_worker_s: float = Field(
        30.0,
        ge=0,
        description="A worker whose heartbeat is this old is presumed lost (machine dead or cut "
        "off): coordinators send the spawn and race subtasks it had started again (0: never). "
        "Must be well above heartbeat_s.",
    )
    catalog_stale_s: float = Field(
        600.0,
        gt=0,
        description="An agent (or merger, validator) that no live worker has served for this "
        "long is dropped from the catalog clients see: submitting it raises UnknownAgent saying "
        "when and by which worker it was last served.",
    )
    events_maxlen: int = Field(10_000, gt=0, description="Approximate cap of each run's events.")
    max_attempts: int = Field(
        3,
        ge=1,
        description="Deliveries of one subtask before it is given up with an error envelope: a "
        "subtask whose agent kills its own process (or whose worker keeps dying) would otherwise "
        "be redelivered without end.",
    )
    state_retries: int = Field(
        25,
        ge=0,
        description="Retries of a worker's or coordinator's state Redis commands before the "
        "subtask gives up and Celery retries its message later (25 ride out a restart of about "
        "20 s).",
    )
    client_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Longest a client (Orchestrator, the CLI) waits for one reply of the state "
        "Redis or the broker before it raises BrokerUnavailable (a frozen or cut-off server); "
        "a wait's own timeout_s bounds it further. Workers and coordinators wait servers out.",
    )
    cancel: CancelSettings = Field(default_factory=CancelSettings)
    prices: str | None = Field(
        None,
        description="Dollars per million tokens by model, inline JSON or a JSON file's path: "
        '{"model": {"input_per_mtok": 0.15, "output_per_mtok": 0.60}}. A model without a price '
        "has a cost of None, never a guessed one.",
    )
    rate_limits: str | None = Field(
        None,
        description="Fleet-wide limits of model calls by model or named key, inline JSON or a "
        'JSON file\'s path: {"model": {"requests_per_minute": 60, "input_tokens_per_minute": '
        '200000, "output_tokens_per_minute": 50000, "concurrent": 20}} (any subset; '
        '"window_s" sets the sliding window, default 60). Enforced through Redis before each '
        "request of workers.llm.chat and ctx.throttle.",
    )
    aio: AsyncSettings = Field(default_factory=AsyncSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    advisor: AdvisorSettings = Field(default_factory=AdvisorSettings)
    flower: FlowerSettings = Field(default_factory=FlowerSettings)
    remote_control: RemoteControlSettings = Field(default_factory=RemoteControlSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    tree: TreeSettings = Field(default_factory=TreeSettings)

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_environment(cls, data: Any) -> Any:
        check_environment(os.environ)
        return data

    @model_validator(mode="after")
    def _known_url_schemes(self) -> Settings:
        check_scheme("ORCH_BROKER_URL", self.broker_url, BROKER_SCHEMES)
        check_scheme("ORCH_STATE_URL", self.state_url, STATE_SCHEMES)
        return self

    @field_validator("agent_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @model_validator(mode="after")
    def _lost_after_heartbeats(self) -> Settings:
        if self.lost_worker_s and self.lost_worker_s < 3 * self.heartbeat_s:
            raise ValueError(
                f"lost_worker_s {self.lost_worker_s} must be at least 3 x heartbeat_s "
                f"({self.heartbeat_s}), or 0 to turn recovery off: a live worker would look lost"
            )
        return self

    def require_broker(self) -> str:
        """The broker URL, or a ConfigError that says how to get one."""
        if not self.broker_url:
            raise ConfigError(
                "no broker configured: set ORCH_BROKER_URL (e.g. redis://host:6379/0), "
                "or run `orchestrator up` / `orchestrator demo` for the embedded stack",
                setting="ORCH_BROKER_URL",
            )
        return self.broker_url

    def celery_backend(self) -> str:
        """Result backend URL: explicit, else the broker when it is Redis."""
        if self.result_backend:
            return self.result_backend
        broker = self.require_broker()
        if _is_redis(broker):
            return broker
        raise ConfigError(
            f"broker {_scheme(broker)}:// needs a Redis result backend: set ORCH_RESULT_BACKEND",
            setting="ORCH_RESULT_BACKEND",
        )

    def redis_url(self) -> str:
        """Redis that holds the orchestration state."""
        for url in (self.state_url, self.result_backend, self.broker_url):
            if url and _is_redis(url):
                return url
        if self.broker_url is None:
            self.require_broker()
        raise ConfigError(
            "no Redis for run state: set ORCH_STATE_URL (or a redis:// result backend)",
            setting="ORCH_STATE_URL",
        )


def safe_url(url: str) -> str:
    """A URL without its password (for messages and logs)."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    # The last '@' ends the credentials: a password may contain '@' itself.
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def _is_redis(url: str) -> bool:
    return _scheme(url) in {"redis", "rediss", "unix"}


#: Broker schemes the project runs on (kombu's Redis and AMQP transports; ``unix://`` is not one).
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp")
#: Schemes of the Redis that holds run state (redis-py's ``from_url``).
STATE_SCHEMES = ("redis", "rediss", "unix")
#: ``ORCH_*`` variables that are not settings, so never refused: the test suite's
#: (``ORCH_TEST_REDIS_URL``, ``ORCH_TEST_AMQP_URL``: tests/conftest.py, .ci/run) and the
#: benchmarks' (``ORCH_BENCH_REDIS_URL``: bench/common.py). No setting may be named so.
NOT_SETTINGS_PREFIXES = ("ORCH_TEST_", "ORCH_BENCH_")


def setting_names(model: type[BaseModel] = Settings, prefix: str = "ORCH_") -> frozenset[str]:
    """Every environment name a setting can be given by: ``ORCH_<FIELD>``, and for a section
    both ``ORCH_<SECTION>`` (JSON) and ``ORCH_<SECTION>__<FIELD>``."""
    names: set[str] = set()
    for field_name, field in model.model_fields.items():
        name = f"{prefix}{field_name.upper()}"
        names.add(name)
        for section in _sections(field.annotation):
            names |= setting_names(section, f"{name}__")
    return frozenset(names)


def check_environment(environ: Mapping[str, str]) -> None:
    """ConfigError naming every ``ORCH_*`` variable that is no setting (pydantic-settings would
    ignore a top-level one silently), with the closest known name. Values are never shown."""
    known = setting_names()
    unknown = sorted(
        k
        for k in environ
        if k.upper().startswith("ORCH_")
        and k.upper() not in known
        and not k.upper().startswith(NOT_SETTINGS_PREFIXES)
    )
    if not unknown:
        return
    # Compared without the common prefix, which would make every name look close to every other.
    bare = {k.removeprefix("ORCH_"): k for k in known}
    described = []
    for name in unknown:
        close = difflib.get_close_matches(name.upper().removeprefix("ORCH_"), bare, n=1)
        described.append(f"{name} (did you mean {bare[close[0]]}?)" if close else name)
    raise ConfigError(
        f"unknown setting{'s' if len(unknown) > 1 else ''} in the environment: "
        f"{', '.join(described)}; the settings are listed in the README (Settings) and "
        "workers/settings.py",
        setting=unknown[0],
    )


def check_scheme(setting: str, url: str | None, accepted: tuple[str, ...]) -> None:
    """ConfigError naming the setting when a URL's scheme is not one the project runs on (the
    URL itself is not shown: it may hold a password)."""
    if not url:
        return
    schemes = ", ".join(f"{s}://" for s in accepted)
    if "://" not in url:
        raise ConfigError(
            f"{setting} is not a URL (no scheme://): use one of {schemes}", setting=setting
        )
    scheme = _scheme(url)
    if scheme in accepted:
        return
    close = difflib.get_close_matches(scheme, accepted, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}://?)" if close else ""
    raise ConfigError(
        f"{setting} has the scheme {scheme}://{hint}; accepted: {schemes}", setting=setting
    )


def _sections(annotation: Any) -> list[type[BaseModel]]:
    """The settings sections a field holds (``Section`` or ``Section | None``)."""
    candidates = typing.get_args(annotation) or (annotation,)
    return [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
