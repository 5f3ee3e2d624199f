"""A run record's lineage fields: the child runs it names and the parent it came from (pure;
the record is written by admission and ``workers/store/tree.py``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = [
    "CHILD_FIELD",
    "RunParent",
    "child_ids",
    "child_value",
    "children_in",
    "parent_in",
]


class RunParent(BaseModel):
    """Where a child run comes from: the subagent (of the parent run) that started it."""

    run_id: str = Field(description="The parent run.")
    index: int = Field(description="The index of the subagent in the parent run.")
    agent: str = Field(description="The subagent's agent name.")
    task_id: str = Field(description="The subagent's Celery task id (Flower's task page).")
    root_run_id: str = Field(description="The top run of the tree.")
    depth: int = Field(1, ge=1, description="1 for a child of the root run, 2 below it, ...")
    ancestors: list[str] = Field(
        default_factory=list,
        description="Every run above the child, the root first and the parent last: the runs "
        "whose budgets its spend counts toward.",
    )


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
