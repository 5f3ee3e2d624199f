"""What every pattern shares: one signature per subagent, deterministic task ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.canvas import Signature

from orchestrator.request import OrchestrationRequest, TaskSpec
from workers.models import CatalogEntry, TaskMeta

_REPR_MAX = 200


@dataclass(frozen=True)
class Expansion:
    """A request ready to run: its canvas and the meta every subtask gets."""

    canvas: Signature
    meta: TaskMeta


def task_id(run_id: str, index: int) -> str:
    """Deterministic id: anyone can address subtask ``index`` of a run without a lookup."""
    return f"{run_id}.{index}"


def payload_repr(task: TaskSpec) -> str:
    """What Flower may show of a payload: nothing when secret, truncated otherwise."""
    if task.secret:
        return "<secret>"
    text = repr(task.payload)
    return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 3] + "..."


def agent_signature(
    app: Celery,
    req: OrchestrationRequest,
    index: int,
    entry: CatalogEntry,
    meta: TaskMeta,
) -> Signature:
    """The Celery signature of subtask ``index``."""
    task = req.tasks[index]
    kwargs: dict[str, Any] = {
        "run_id": req.run_id,
        "index": index,
        "payload": task.payload,
        "meta": meta.model_dump(mode="json"),
    }
    return app.signature(
        entry.task_name,
        kwargs=kwargs,
        queue=entry.queue,
        task_id=task_id(req.run_id, index),
        argsrepr=f"run={req.run_id} pattern={req.pattern.value} index={index}/{len(req.tasks)}",
        kwargsrepr=f"payload={payload_repr(task)}",
    )
