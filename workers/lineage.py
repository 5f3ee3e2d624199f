"""A run record's lineage fields: the child runs it names and the parent it came from (pure;
the record is written by admission and ``workers/store/tree.py``)."""

from __future__ import annotations

from workers.models import RunParent

__all__ = ["CHILD_FIELD", "child_ids", "child_value", "children_in", "parent_in"]

#: A run record's field naming one child run: ``child:<run id>`` -> ``"<the subagent's index>
#: <when it was started, epoch s>"``.
CHILD_FIELD = "child:"


def child_value(index: int, started_at: float) -> str:
    """The value of a child's field."""
    return f"{index} {started_at!r}"


def _children(record: dict[str, str]) -> dict[str, tuple[int, float]]:
    n = len(CHILD_FIELD)
    out = {}
    for k, v in record.items():
        if k.startswith(CHILD_FIELD):
            index, _, at = v.partition(" ")
            out[k[n:]] = (int(index), float(at or 0))
    return out


def children_in(record: dict[str, str]) -> dict[str, int]:
    """The child runs named by a run record: run id -> the index of the subagent that
    started it."""
    return {run_id: index for run_id, (index, _) in _children(record).items()}


def child_ids(record: dict[str, str]) -> list[str]:
    """The child runs of a record, by the subagent that started each, then in the order they
    were started."""
    kids = _children(record)
    return sorted(kids, key=lambda c: (kids[c], c))


def parent_in(record: dict[str, str]) -> RunParent | None:
    """Where a child run comes from, from its record (None for a top run)."""
    raw = record.get("parent")
    return RunParent.model_validate_json(raw) if raw else None
