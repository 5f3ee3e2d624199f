"""The agent catalog as clients see it: published by workers, validated against without
importing worker code."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from jsonschema.exceptions import ValidationError
from jsonschema.validators import validator_for

from workers.errors import InvalidPayload, UnknownAgent
from workers.models import AgentKind, CatalogEntry, Pattern, WorkerInfo
from workers.names import catalog_field
from workers.store import RunStore

_CACHE_S = 2.0


class Catalog:
    """A cached view of the catalog hash; refreshed on a miss before saying 'unknown'."""

    def __init__(self, store: RunStore, stale_s: float = 600.0, live_s: float = 30.0) -> None:
        self.store = store
        #: An entry no live worker has served for this long is dropped (ORCH_CATALOG_STALE_S).
        self.stale_s = stale_s
        self.live_s = live_s
        self._entries: dict[str, CatalogEntry] = {}
        #: Dropped entries: field -> (last served at, by whom).
        self._stale: dict[str, tuple[float, str]] = {}
        self._validators: dict[tuple[str, float], Any] = {}
        self._fetched = 0.0

    def refresh(self) -> dict[str, CatalogEntry]:
        """Reload from Redis, dropping what no worker has served for ``stale_s``."""
        entries, served = self.store.catalog_view()
        now = time.time()
        self._entries, self._stale = {}, {}
        for key, entry in entries.items():
            stamp = served.get(key)
            # Never stamped: published by an older build, whose heartbeats do not say what
            # they serve; kept, since nothing tells whether it is still served.
            if stamp is not None and now - stamp[0] > self.stale_s:
                self._stale[key] = (stamp[0], stamp[1] or entry.published_by)
            else:
                self._entries[key] = entry
        self._fetched = time.monotonic()
        return self._entries

    def serving(self, entry: CatalogEntry) -> list[WorkerInfo]:
        """The live workers that can run ``entry``: they consume its queue and have it."""
        return [w for w in self.store.live_processes(self.live_s) if w.serves_entry(entry)]

    def entries(self) -> list[CatalogEntry]:
        """Every entry, fresh."""
        return sorted(self.refresh().values(), key=lambda e: (e.kind.value, e.name))

    def get(self, kind: AgentKind, name: str) -> CatalogEntry:
        """One entry or UnknownAgent naming what is known."""
        key = catalog_field(kind.value, name)
        if time.monotonic() - self._fetched > _CACHE_S or key not in self._entries:
            self.refresh()
        entry = self._entries.get(key)
        if entry is None and key in self._stale:
            at, by = self._stale[key]
            when = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
            raise UnknownAgent(
                f"{kind.value} {name!r} is no longer served: it was last served at {when} "
                f"({time.time() - at:.0f}s ago) by {by or 'an unknown worker'}, over "
                f"ORCH_CATALOG_STALE_S={self.stale_s:g}s. Start a worker whose "
                "ORCH_AGENT_MODULES has the module that defines it",
                name=name,
                kind=kind.value,
                known=sorted(e.name for e in self._entries.values() if e.kind is kind),
                last_served_at=at,
                last_served_by=by,
            )
        if entry is None:
            known = sorted(e.name for e in self._entries.values() if e.kind is kind)
            raise UnknownAgent(
                f"unknown {kind.value} {name!r}; known: {', '.join(known) or 'none'}. "
                "Is a worker running with the module that defines it in ORCH_AGENT_MODULES?",
                name=name,
                kind=kind.value,
                known=known,
            )
        return entry

    def check_payload(self, entry: CatalogEntry, payload: Any, where: str) -> None:
        """Validate a payload against the entry's input JSON schema."""
        cache_key = (f"{entry.kind.value}:{entry.name}", entry.published_at)
        check = self._validators.get(cache_key)
        if check is None:
            cls = validator_for(entry.input_schema)
            check = cls(entry.input_schema)
            self._validators[cache_key] = check
        errors = sorted(check.iter_errors(payload), key=lambda e: [str(p) for p in e.path])
        if errors:
            # Never jsonschema's own message: it quotes the value, and the value may be secret
            # (this text reaches the run's error, the logs, Flower and the caller).
            problems = [f"{where}: {p}" for e in errors for p in problems_of(e)]
            raise InvalidPayload(
                f"payload for agent {entry.name!r} is invalid: {'; '.join(problems[:5])}. "
                f"Expected input schema: {entry.input_schema.get('title', 'object')} with "
                f"fields {sorted(entry.input_schema.get('properties', {}))}",
                agent=entry.name,
                errors=problems,
            )

    def check_request(
        self,
        pattern: Pattern,
        tasks: list[tuple[str, dict[str, Any]]],
        merge: str | None,
        validate: str | None,
    ) -> None:
        """Everything that can be checked before anything is enqueued."""
        for i, (name, payload) in enumerate(tasks):
            entry = self.get(AgentKind.AGENT, name)
            self.check_payload(entry, payload, f"task #{i}")
        if merge is not None:  # which patterns take a merger is the request's own check
            self.get(AgentKind.MERGER, merge)
        if validate is not None:
            self.get(AgentKind.VALIDATOR, validate)


_BOUNDS = {
    "minimum": "must be >= {}",
    "maximum": "must be <= {}",
    "exclusiveMinimum": "must be > {}",
    "exclusiveMaximum": "must be < {}",
    "multipleOf": "must be a multiple of {}",
    "minLength": "must have at least {} characters",
    "maxLength": "must have at most {} characters",
    "minItems": "must have at least {} items",
    "maxItems": "must have at most {} items",
    "minProperties": "must have at least {} fields",
    "maxProperties": "must have at most {} fields",
    "pattern": "must match the pattern {!r}",
    "format": "must be a valid {}",
}


def _field(path: Iterable[Any]) -> str:
    return "field " + repr(".".join(str(p) for p in path))


def _schema_text(value: Any) -> str:
    """A value from the schema (never from the payload), kept short."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 100 else text[:97] + "..."


def problems_of(error: ValidationError) -> list[str]:
    """What failed, as 'field ...: rule': the field's path and the schema's rule, never the
    value (field names, from the schema or the payload's keys, are not values)."""
    path = list(error.path)
    instance = error.instance
    required = error.validator_value if error.validator == "required" else None
    if isinstance(required, list) and isinstance(instance, dict):
        missing = [p for p in required if p not in instance]
        if missing:
            return [f"{_field([*path, p])} is a required property" for p in missing]
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        known = schema.get("properties", {})
        patterns = list(schema.get("patternProperties", {}))
        extra = [
            k for k in instance if k not in known and not any(re.search(p, k) for p in patterns)
        ]
        return [f"{_field([*path, k])}: is not a field of the input schema" for k in extra[:5]]
    where = _field(path) if path else "the payload"
    return [f"{where}: {_rule(error)}"]


def _rule(error: ValidationError) -> str:
    rule, value = error.validator, error.validator_value
    if rule == "type":
        kinds = value if isinstance(value, list) else [value]
        return "must be of type " + " or ".join(str(k) for k in kinds)
    if rule in ("anyOf", "oneOf"):
        own = [_rule(sub) for sub in error.context or () if not sub.relative_path]
        if own and all(r.startswith("must be of type ") for r in own):
            return "must be of type " + " or ".join(r.removeprefix("must be of type ") for r in own)
        which = "any" if rule == "anyOf" else "exactly one"
        return f"must match {which} of: " + "; ".join(own) if own else f"must match {rule}"
    if rule == "enum":
        return f"must be one of {_schema_text(value)}"
    if rule == "const":
        return f"must equal {_schema_text(value)}"
    if rule == "uniqueItems":
        return "must not repeat an item"
    if rule in _BOUNDS and not isinstance(value, bool | dict | list):
        return _BOUNDS[str(rule)].format(value)
    if rule is None:  # a `false` schema: nothing is allowed here
        return "is not allowed"
    return f"fails the schema rule {rule!r}"


__all__ = ["Catalog", "problems_of"]
