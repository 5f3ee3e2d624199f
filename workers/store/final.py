"""Final results: stored once (finalize.lua) and read back in one round trip (result.lua).

When every subtask reported, the stored result names the results hash instead of copying the
envelopes: first envelope per index winning, that hash is final. Deciding *how* a run ends is
:mod:`workers.ending`'s job; this module only reads and writes.
"""

from __future__ import annotations

from collections.abc import Sequence

from workers.models import AgentResult, RunResult, StoredRunResult
from workers.scripts import FINALIZE, RESULT
from workers.store.base import StoreBase
from workers.stored_result import assemble_result, result_args


class FinalStore(StoreBase):
    """Storing and reading final results."""

    def final_inputs(
        self, run_id: str, *, with_envelopes: bool
    ) -> tuple[bool, dict[str, str], dict[int, str], dict[int, AgentResult] | None]:
        """(ended already?, run record, index -> worker that started it, every envelope or
        None), one round trip: what a finaliser reads."""
        k = self.keys
        pipe = self.pipeline()
        pipe.exists(k.result(run_id))
        pipe.hgetall(k.run(run_id))
        pipe.hgetall(k.started_by(run_id))
        if with_envelopes:
            pipe.hgetall(k.results(run_id))
        ended, rec, started, *raw = pipe.execute()
        envs = (
            {int(i): AgentResult.model_validate_json(v) for i, v in raw[0].items()}
            if with_envelopes
            else None
        )
        return bool(ended), rec, {int(i): w for i, w in started.items()}, envs

    def ended_and_record(self, run_id: str) -> tuple[bool, dict[str, str]]:
        """(ended already?, run record), one round trip."""
        pipe = self.pipeline()
        pipe.exists(self.keys.result(run_id))
        pipe.hgetall(self.keys.run(run_id))
        ended, rec = pipe.execute()
        return bool(ended), rec

    def has_ended(self, run_id: str) -> bool:
        """Whether the run's final result is stored."""
        return bool(self.r.exists(self.keys.result(run_id)))

    def store_result(self, result: RunResult, *, in_hash: bool) -> bool:
        """Store the final result once (finalize.lua); False if the run had already ended.

        ``in_hash``: every envelope is in the results hash, so the stored result names it.
        """
        k = self.keys
        run_id = result.run_id
        if in_hash:
            stored = StoredRunResult.model_construct(
                **{**dict(result), "results": [], "results_key": k.results(run_id)}
            ).model_dump_json()
        else:
            stored = result.model_dump_json()
        ended = FINALIZE(
            self.r,
            keys=[
                k.result(run_id),
                k.run(run_id),
                k.done(run_id),
                k.events(run_id),
                k.deadlines,
                k.payloads(run_id),
                k.results(run_id),
            ],
            args=[
                stored,
                result.status.value,
                repr(result.finished_at),
                self.ttl_s,
                self.maxlen,
                run_id,
                "1" if in_hash else "0",
            ],
        )
        return bool(int(ended))

    def write_stand_ins(self, run_id: str, envelopes: dict[int, str]) -> None:
        """Write envelopes for subtasks that never reported, unless one arrived meanwhile."""
        if not envelopes:
            return
        key = self.keys.results(run_id)
        pipe = self.pipeline()
        for index, raw in envelopes.items():
            pipe.hsetnx(key, str(index), raw)
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def result(
        self, run_id: str, have: dict[int, AgentResult] | None = None, n: int = 0
    ) -> RunResult | None:
        """The final result, once the run has ended (one round trip).

        ``have``: envelopes of this run's ``n`` subtasks that the caller already read
        (``orchestrator/api/live_envelopes.py``); only the others are fetched.
        """
        args, missing = result_args(have, n)
        reply = RESULT(self.r, keys=self.result_keys(run_id), args=args)
        return assemble_result(reply, have, missing)

    def summaries(
        self, run_ids: Sequence[str]
    ) -> list[tuple[dict[str, str], StoredRunResult | None]]:
        """(run record, stored result or None while open) of each run, one round trip: a list
        of runs with their ROI. The stored result is read as stored: when its envelopes stayed
        in the results hash, ``results`` is empty (its report has every figure a row needs)."""
        k = self.keys
        pipe = self.pipeline()
        for run_id in run_ids:
            pipe.hgetall(k.run(run_id))
            pipe.get(k.result(run_id))
        replies = pipe.execute()
        out: list[tuple[dict[str, str], StoredRunResult | None]] = []
        for rec, raw in zip(replies[::2], replies[1::2], strict=True):
            out.append((rec, StoredRunResult.model_validate_json(raw) if raw else None))
        return out

    def result_keys(self, run_id: str) -> list[str]:
        """KEYS of result.lua for this run."""
        k = self.keys
        return [k.result(run_id), k.run(run_id), k.results(run_id)]
