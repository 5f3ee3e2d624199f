"""The agent catalog as clients see it: published by workers, validated against without
importing worker code."""

from __future__ import annotations

import time
from typing import Any

from jsonschema.validators import validator_for

from workers.errors import InvalidPayload, UnknownAgent
from workers.models import AgentKind, CatalogEntry, Pattern
from workers.names import catalog_field
from workers.store import RunStore

_CACHE_S = 2.0


class Catalog:
    """A cached view of the catalog hash; refreshed on a miss before saying 'unknown'."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._entries: dict[str, CatalogEntry] = {}
        self._validators: dict[tuple[str, float], Any] = {}
        self._fetched = 0.0

    def refresh(self) -> dict[str, CatalogEntry]:
        """Reload from Redis."""
        self._entries = self.store.catalog_entries()
        self._fetched = time.monotonic()
        return self._entries

    def entries(self) -> list[CatalogEntry]:
        """Every entry, fresh."""
        return sorted(self.refresh().values(), key=lambda e: (e.kind.value, e.name))

    def get(self, kind: AgentKind, name: str) -> CatalogEntry:
        """One entry or UnknownAgent naming what is known."""
        key = catalog_field(kind.value, name)
        if time.monotonic() - self._fetched > _CACHE_S or key not in self._entries:
            self.refresh()
        entry = self._entries.get(key)
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
        errors = sorted(check.iter_errors(payload), key=lambda e: list(e.path))
        if errors:
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e.path) or '<root>'}: {e.message}" for e in errors[:5]
            )
            raise InvalidPayload(
                f"{where}: payload for agent {entry.name!r} is invalid: {detail}. "
                f"Expected input schema: {entry.input_schema.get('title', 'object')} with "
                f"fields {sorted(entry.input_schema.get('properties', {}))}",
                agent=entry.name,
                errors=[e.message for e in errors],
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


__all__ = ["Catalog"]
