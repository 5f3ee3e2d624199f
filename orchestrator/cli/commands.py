"""Commands that talk to a running deployment: submit, follow, stop and judge runs, and the
health check."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from orchestrator.api import Orchestrator
from orchestrator.cli.group import _orch, main
from orchestrator.cli.preflight_text import preflight_lines
from orchestrator.cli.report import report_lines, timeline_lines, timeline_svg
from orchestrator.cli.watch import result_lines, watch_run
from orchestrator.request import OrchestrationRequest
from workers.errors import OrchestratorError, RunNotFound, RunTimedOut
from workers.models import RunResult, Verdict, WorkerInfo
from workers.names import catalog_field
from workers.routing import ROUTER
from workers.store import DeadLetterReport

#: Dead letters listed by ``status``.
DEAD_LETTERS_SHOWN = 5


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def agents(as_json: bool) -> None:
    """List the agents, mergers and validators the workers published."""
    entries = _call(lambda: _orch().agents())
    if as_json:
        click.echo(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
        return
    if not entries:
        click.echo("no agents published yet: is a worker running with ORCH_AGENT_MODULES set?")
    for e in entries:
        fields = ", ".join(sorted(e.input_schema.get("properties", {})))
        click.echo(
            f"{e.kind.value:<9} {e.name:<18} queue={e.queue:<10} input({fields})  {e.description}"
        )


def _read_request(file: Any) -> OrchestrationRequest:
    """An orchestration request from a JSON file (or stdin), or a CLI error saying why."""
    try:
        return OrchestrationRequest.model_validate_json(file.read())
    except ValueError as exc:
        raise click.ClickException(f"invalid orchestration request: {exc}") from exc


def _call(fn: Any) -> Any:
    try:
        return fn()
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc


def _print_result(res: RunResult) -> None:
    click.echo(res.model_dump_json(indent=2))


def _still_going(run_id: str, timeout_s: float | None) -> NoReturn:
    """The end of a wait or watch that ran out of time (exit code 2): what to run next."""
    after = f" after {timeout_s:g}s" if timeout_s is not None else ""
    click.echo(
        f"run {run_id} has not ended{after}; the run goes on: "
        f"orchestrator watch {run_id} / orchestrator cancel {run_id}",
        err=True,
    )
    sys.exit(2)


@main.command()
@click.argument("file", type=click.File("r"), default="-")
@click.option("--wait", is_flag=True, help="Wait and print the result.")
@click.option("--timeout", "timeout_s", default=None, type=float, help="Stop waiting after.")
def submit(file: Any, wait: bool, timeout_s: float | None) -> None:
    """Submit an orchestration from a JSON file (or stdin); prints the run id.

    With --wait, prints the result; exit code 0 when the run succeeded, 1 when it did not, 2
    when --timeout passed first (the run goes on).
    """
    req = _read_request(file)
    orch = _orch()
    run = _call(lambda: orch.submit(req))
    if not wait:
        click.echo(run.id)
        return
    try:
        res = run.wait(timeout_s=timeout_s)
    except RunTimedOut:
        _still_going(run.id, timeout_s)
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_result(res)
    sys.exit(0 if res.ok else 1)


@main.command()
@click.argument("run_id", required=False)
@click.option("--limit", default=20, show_default=True)
def status(run_id: str | None, limit: int) -> None:
    """Show one run's progress, or list recent runs and what was dead-lettered."""
    orch = _orch()
    ids = [run_id] if run_id else _call(lambda: orch.recent_runs(limit))
    if not ids:
        click.echo("no runs yet (or they expired: ORCH_RUN_TTL_S)")
    _run_lines(orch, ids, run_id)
    if not run_id:
        _dead_letter_lines(orch.store.dead_letters(DEAD_LETTERS_SHOWN))


def _dead_letter_lines(report: DeadLetterReport) -> None:
    """How many queue items the processes dropped as unreadable, and the latest reasons."""
    click.echo(f"dead letters: {report.total}" + (" (latest first)" if report.latest else ""))
    for d in report.latest:
        task = f"  task={d.task}" if d.task else ""
        click.echo(
            f"  {_ago(d.at):>8}  {d.queue:<14} {d.reason}  ({d.size_bytes} bytes{task}, {d.host})"
        )


def _run_lines(orch: Orchestrator, ids: list[str], run_id: str | None) -> None:
    for rid in ids:
        try:
            p = orch.get_run(rid).status()
        except RunNotFound as exc:
            if run_id:
                raise click.ClickException(str(exc)) from exc
            continue  # listed but expired since
        except OrchestratorError as exc:
            raise click.ClickException(str(exc)) from exc
        counts = " ".join(f"{k}={v}" for k, v in sorted(p.counts.items()))
        click.echo(
            f"{p.run_id}  {p.pattern.value:<18} {p.status.value:<10} "
            f"{p.finished}/{p.n} done  {_ago(p.created_at):>8}  {counts}"
        )


def _ago(ts: float) -> str:
    s = max(0.0, time.time() - ts)
    if s < 120:
        return f"{s:.0f}s ago"
    return f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


@main.command()
@click.argument("run_id")
@click.option("--timeout", "timeout_s", default=None, type=float, help="Stop watching after.")
@click.option("--json", "as_json", is_flag=True, help="End with the result as JSON.")
def watch(run_id: str, timeout_s: float | None, as_json: bool) -> None:
    """Follow a run live (progress bar, subtasks' states, elapsed time), then its result.

    Exit code 0 when the run succeeded, 1 when it did not, 2 when watching timed out.
    """
    orch = _orch()
    try:
        res = watch_run(
            orch.store,
            orch.revoke,
            run_id,
            click.echo,
            tty=sys.stdout.isatty(),
            timeout_s=timeout_s,
        )
    except RunTimedOut:
        _still_going(run_id, timeout_s)
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(res.model_dump_json(indent=2) if as_json else "\n".join(result_lines(res)))
    sys.exit(0 if res.ok else 1)


@main.command()
@click.argument("run_id")
def cancel(run_id: str) -> None:
    """Cancel a run: queued subtasks skip, running ones are interrupted."""
    orch = _orch()
    res = _call(lambda: orch.get_run(run_id).cancel())
    click.echo(f"{run_id}: {res.status.value}")


@main.command()
@click.argument("run_id")
@click.option("--svg", "svg_path", default=None, help="SVG timeline file [default: run-<id>.svg].")
@click.option("--no-svg", is_flag=True, help="Do not write the SVG file.")
@click.option("--width", default=60, show_default=True, help="Terminal timeline width.")
@click.option("--color/--no-color", default=None, help="ANSI colours [default: if a terminal].")
def report(run_id: str, svg_path: str | None, no_svg: bool, width: int, color: bool | None) -> None:
    """Print a run's ROI report (actual beside predicted) and draw its timeline."""
    orch = _orch()
    run = _call(lambda: orch.get_run(run_id))
    res = _call(run.refreshed)
    click.echo("\n".join(report_lines(res)))
    click.echo()
    click.echo("\n".join(timeline_lines(res, width=max(20, width))), color=color)
    if not no_svg:
        path = Path(svg_path or f"run-{run_id}.svg")
        path.write_text(timeline_svg(res), encoding="utf-8")
        click.echo(f"timeline written to {path}")


@main.command()
@click.argument("file", type=click.File("r"), default="-")
@click.option("--json", "as_json", is_flag=True, help="Print the Preflight as JSON.")
def preflight(file: Any, as_json: bool) -> None:
    """Judge an orchestration (a JSON file or stdin, as for `submit`) without running it.

    Exits 0, or 3 when the verdict is does-not-pay.
    """
    req = _read_request(file)
    orch = _orch()
    pf = _call(lambda: orch.preflight_request(req))
    click.echo(pf.model_dump_json(indent=2) if as_json else "\n".join(preflight_lines(pf)))
    sys.exit(3 if pf.verdict is Verdict.DOES_NOT_PAY else 0)


def serves_an_agent(w: WorkerInfo, base_queue: str) -> bool:
    """Whether a live process can run anything of a plan (a coordinator: yes, by its role)."""
    if w.role != "worker":
        return True
    if w.serves is not None:
        # The built-in router is served by every worker: it is not one of the plan's agents.
        router = catalog_field("agent", ROUTER)
        return any(f.startswith(("agent:", "merger:")) and f != router for f in w.serves)
    return bool(set(w.queues) - {base_queue})  # an older build's heartbeat: by its queues


@main.command()
@click.option("--role", type=click.Choice(["any", "worker", "coordinator"]), default="any")
@click.option("--hostname", default=None, help="This process's hostname to look for.")
def check(role: str, hostname: str | None) -> None:
    """Health probe: exit 0 when Redis answers and a live worker/coordinator is registered that
    can make progress: for workers, the catalog holds every agent of ORCH_AGENT_MODULES; for
    coordinators, the sweeper completed a round lately. 3 when not, 1 when Redis is away.

    A worker that serves no agent (ORCH_AGENT_MODULES empty, or without agents) is not counted
    live: it is named on a warning line, and alone it makes the probe exit 3."""
    orch = _orch()
    ms = _call(orch.ping)
    procs = [
        w
        for w in orch.live_processes()
        if (role == "any" or w.role == role) and (hostname is None or w.hostname == hostname)
    ]
    idle = [w.hostname for w in procs if not serves_an_agent(w, orch.settings.agent_queue)]
    live = [w.hostname for w in procs if w.hostname not in idle]
    problems = []
    if idle:
        click.echo(
            f"warning: live worker(s) {', '.join(idle)} serve no agent (ORCH_AGENT_MODULES "
            "empty or without agents?): they receive no agent task and count for no slot"
        )
    if role == "worker" and live:
        gaps = _call(orch.catalog_gaps)
        if gaps:
            problems.append(
                f"the catalog lacks {len(gaps)} entries of ORCH_AGENT_MODULES "
                f"({', '.join(gaps[:5])}): the state server lost it (restart without "
                "persistence, flush)? Workers publish theirs again at their next heartbeat"
            )
    if role == "coordinator" and live:
        stalled = _call(lambda: orch.stalled_sweepers(live))
        live = [h for h in live if h not in stalled]
        if stalled:
            problems.append(
                f"no sweeper round completed lately on {', '.join(stalled)}: overdue runs are "
                "not being ended (coordinator frozen or stuck? see its log)"
            )
    click.echo(f"redis {ms:.1f} ms; live {role}: {', '.join(live) or 'none'}")
    for problem in problems:
        click.echo(problem)
    sys.exit(0 if live and not problems else 3)
