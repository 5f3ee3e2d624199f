"""Rate limits as the CLI shows them: throttled time and retries, per run and per subagent."""

from __future__ import annotations

from workers.models import AgentResult, RoiReport

__all__ = ["envelope_limits", "limit_rows", "limits_of"]


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if abs(seconds) < 10 else f"{seconds:.2f} s"


def limit_rows(r: RoiReport) -> list[tuple[str, str, str]]:
    """The report table's rows for a run that waited under a limit or retried (none else)."""
    if not r.throttled_s and not r.retries:
        return []
    throttled = f"{_duration(r.throttled_s)} / {_duration(r.throttled_mean_s)}"
    return [("throttled total/mean", throttled, ""), ("retries", str(r.retries), "")]


def limits_of(throttled_s: float, retries: int) -> str:
    """`` (throttled 2.40 s, 1 retry)`` after a subagent's line; empty when neither."""
    parts = [f"throttled {_duration(throttled_s)}"] if throttled_s else []
    parts += [f"{retries} retr{'y' if retries == 1 else 'ies'}"] if retries else []
    return f" ({', '.join(parts)})" if parts else ""


def envelope_limits(env: AgentResult) -> str:
    """``limits_of`` an envelope."""
    return limits_of(env.throttled_s, env.retries)
