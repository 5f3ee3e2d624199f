"""Agents that call a model through ``workers.llm.chat`` (loaded by the test workers; the
endpoint and key come from ``ORCH_LLM__BASE_URL`` and ``ORCH_LLM__API_KEY``)."""

from __future__ import annotations

from pydantic import BaseModel

from workers import AgentContext, agent, merger, validator
from workers.llm import chat

#: The system message of every ``llm.ask`` call.
SYSTEM = "be terse"


class Ask(BaseModel):
    prompt: str
    model: str = "m"


class Answer(BaseModel):
    text: str
    output_tokens: int


class Summary(BaseModel):
    texts: list[str]
    summary: str


@agent("llm.ask", input=Ask, output=Answer)
async def ask(inp: Ask, ctx: AgentContext) -> Answer:
    """One streamed chat completion; the usage is recorded by ``chat`` as it arrives."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": inp.prompt}]
    text = await chat(ctx, model=inp.model, messages=messages)
    return Answer(text=text, output_tokens=ctx.spent.output_tokens)


@merger("llm.summarize", input=Answer, output=Summary)
async def summarize(parts: list[Answer], ctx: AgentContext) -> Summary:
    """An async merger that calls the model too (its tokens reach the run's ledger, not an
    envelope); the stream id names the run, so a test finds it on the server."""
    prompt = f"summarize {len(parts)} answers [[tokens=4 interval_ms=5 id=merge-{ctx.run_id}]]"
    summary = await chat(ctx, model="m", messages=[{"role": "user", "content": prompt}])
    return Summary(texts=[p.text for p in parts], summary=summary)


@validator("llm.nonempty", input=Answer)
async def nonempty(out: Answer) -> bool:
    """An async validator: an answer with some text."""
    return bool(out.text.strip())
