"""Deliberately shaped agents for the integration tests (loaded by the test workers)."""

import os
import signal
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from orchestrator import Task
from workers import AgentContext, agent, merger, validator


class Msg(BaseModel):
    text: str
    fail: bool = False
    invalid_output: bool = False
    inner_validation_error: bool = False
    spin_s: float = Field(default=0.0, ge=0, description="CPU work before answering")


class Echo(BaseModel):
    text: str
    pid: int = 0


class Joined(BaseModel):
    texts: list[str]


class Work(BaseModel):
    seconds: float
    marker: str = Field(description="File written if (and only if) the work completes")
    mode: str = Field(default="cpu", pattern="^(cpu|sleep|socket|cooperative|c_loop|ctx_sleep)$")


class Done(BaseModel):
    marker: str


def _spin(seconds: float) -> int:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


@agent("echo", input=Msg, output=Echo, description="Echo text; can fail or return bad output.")
def echo(msg: Msg, ctx: AgentContext) -> Echo:
    _spin(msg.spin_s)
    if msg.fail:
        raise ValueError(f"asked to fail: {msg.text}")
    if msg.inner_validation_error:
        Echo.model_validate({})  # the agent's own bug: a ValidationError inside its code
    if msg.invalid_output:
        return {"wrong": msg.text}  # type: ignore[return-value]
    return Echo(text=msg.text, pid=os.getpid())


@agent("work", input=Work, output=Done, description="Long work that never checks ctx.")
def work(w: Work, ctx: AgentContext) -> Done:
    Path(w.marker + ".pid").write_text(str(os.getpid()))  # who ran it, for the tests
    if w.mode == "cpu":
        _spin(w.seconds)
    elif w.mode == "sleep":
        time.sleep(w.seconds)  # the workload: a plain sleep the interrupt must break
    elif w.mode == "socket":
        import socket

        a, b = socket.socketpair()
        a.settimeout(w.seconds)
        try:
            a.recv(1)  # nobody writes: blocks until the timeout
        except TimeoutError:
            pass
        finally:
            a.close()
            b.close()
    elif w.mode == "ctx_sleep":
        ctx.sleep(w.seconds)
    elif w.mode == "c_loop":
        # One long C call that never returns to the interpreter: signal handlers cannot run.
        sum(range(int(w.seconds * 5e7)))
    else:
        end = time.monotonic() + w.seconds
        while time.monotonic() < end:
            ctx.raise_if_cancelled()
            time.sleep(0.01)  # the workload between checks (not test synchronisation)
    Path(w.marker).write_text(f"completed by pid {os.getpid()}")
    return Done(marker=w.marker)


@merger("join", input=Echo, output=Joined, description="Join texts in order.")
def join(items: list[Echo], ctx: AgentContext) -> Joined:
    return Joined(texts=[i.text for i in items])


@merger(
    "join_behind_naps",
    input=Echo,
    output=Joined,
    queue="agents.nap",
    description="join, queued on the nap agent's queue: it waits behind the naps queued there.",
)
def join_behind_naps(items: list[Echo], ctx: AgentContext) -> Joined:
    return Joined(texts=[i.text for i in items])


@validator("starts_good", input=Echo, description="Text starts with 'good'.")
def starts_good(e: Echo) -> bool:
    return e.text.startswith("good")


@merger("collect_done", input=Done, output=Joined, description="Markers of finished work.")
def collect_done(items: list[Done], ctx: AgentContext) -> Joined:
    return Joined(texts=[i.marker for i in items])


@validator("explodes", input=Echo, description="Raises on 'boom', accepts 'good...'.")
def explodes(e: Echo) -> bool:
    if "boom" in e.text:
        raise RuntimeError("validator blew up on purpose")
    return e.text.startswith("good")


class Misbehaviour(BaseModel):
    mode: str = Field(pattern="^(object|bytes|die|fine)$")


class Loose(BaseModel):
    value: Any = None


@agent("misbehave", input=Misbehaviour, output=Loose, description="Returns what JSON cannot hold.")
def misbehave(m: Misbehaviour, ctx: AgentContext) -> Loose:
    if m.mode == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # the agent takes its own process down
    if m.mode == "object":
        return Loose(value=object())
    if m.mode == "bytes":
        return Loose(value=b"\xff\xfe")
    return Loose(value="fine")


class _NoTruth:
    def __bool__(self) -> bool:
        raise TypeError("this verdict has no truth value")


@validator("unreadable", input=Loose, description="Returns a verdict that cannot be a bool.")
def unreadable(item: Loose) -> bool:
    return _NoTruth()  # type: ignore[return-value]


class Account(BaseModel):
    iban: str

    @field_validator("iban")
    @classmethod
    def _country(cls, value: str) -> str:
        if not value.startswith("GB"):
            # The common way a model's own check quotes the value it refuses.
            raise ValueError(f"{value!r} is not a British IBAN")
        return value


@agent("iban_check", input=Account, output=Echo, description="Refuses a non-GB IBAN (input).")
def iban_check(account: Account, ctx: AgentContext) -> Echo:
    return Echo(text=account.iban[:2])


class Ticks(BaseModel):
    seconds: float = Field(gt=0, le=30)


class Ticked(BaseModel):
    reports: int


@agent("ticker", input=Ticks, output=Ticked, description="Reports progress often for a while.")
def ticker(t: Ticks, ctx: AgentContext) -> Ticked:
    start = time.monotonic()
    reports = 0
    while (elapsed := time.monotonic() - start) < t.seconds:
        ctx.progress(elapsed / t.seconds, f"{elapsed:.1f}s")
        reports += 1
        ctx.sleep(0.05)  # the workload between reports (wakes at once on cancel)
    return Ticked(reports=reports)


class Nest(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=8)


@agent("nest", input=Nest, output=Joined, description="Echoes its texts in a child run.")
def nest(n: Nest, ctx: AgentContext) -> Joined:
    child = ctx.spawn([Task("echo", {"text": t}) for t in n.texts], preflight="off")
    return Joined(texts=[o["text"] for o in child.wait().raise_for_status().outputs()])
