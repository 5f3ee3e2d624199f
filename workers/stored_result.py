"""A stored final result read back: result.lua's reply assembled into a RunResult.

When every subtask reported, the stored result names the results hash instead of copying the
envelopes (``workers/store/final.py``); these functions put the two back together, with
envelopes a reader already fetched while the run went on (``orchestrator/api/live_envelopes.py``).
"""

from __future__ import annotations

from pydantic import TypeAdapter

from workers.errors import RunNotFound
from workers.models import AgentResult, RunResult, StoredRunResult

_ENVELOPES: TypeAdapter[list[AgentResult]] = TypeAdapter(list[AgentResult])
#: Past this many envelopes still to fetch, fetch them all (a Lua call's argument limit).
MAX_MISSING = 2_000


def parse_envelopes(raws: list[str]) -> dict[int, AgentResult]:
    """Envelopes by index, from their JSON (parsed in one call)."""
    if not raws:
        return {}
    return {e.index: e for e in _ENVELOPES.validate_json("[" + ",".join(raws) + "]")}


def result_args(have: dict[int, AgentResult] | None, n: int) -> tuple[list[str], list[int] | None]:
    """ARGV of result.lua, and the indices it will return (None: all of them)."""
    if not have:
        return [], None
    missing = [i for i in range(n) if i not in have]
    if len(missing) > MAX_MISSING:
        return [], None
    return ["some", *map(str, missing)], missing


def assemble_result(
    reply: list[str | None] | None,
    have: dict[int, AgentResult] | None = None,
    missing: list[int] | None = None,
) -> RunResult | None:
    """The RunResult from result.lua's reply (None: the run has not ended).

    With ``missing``, the reply holds just those envelopes and ``have`` the rest.
    """
    if not reply:
        return None
    assert reply[0] is not None
    stored = StoredRunResult.model_validate_json(reply[0])
    fields = {name: getattr(stored, name) for name in RunResult.model_fields}
    if stored.results_key is not None:
        raws = [v for v in reply[1:] if v is not None]
        known = dict(have or {}) if missing is not None else {}
        if len(raws) + len(known) != stored.report.n:
            raise RunNotFound(
                f"run {stored.run_id}: {len(raws) + len(known)} of {stored.report.n} envelopes "
                f"left in {stored.results_key}; they expired (ORCH_RUN_TTL_S) or were deleted",
                run_id=stored.run_id,
            )
        # One parse for them all: as fast as pydantic gets, and envelopes come in hash order.
        envelopes = [*known.values(), *_ENVELOPES.validate_json("[" + ",".join(raws) + "]")]
        envelopes.sort(key=_index)
        fields["results"] = envelopes
    return RunResult.model_construct(**fields)


def _index(env: AgentResult) -> int:
    return env.index
