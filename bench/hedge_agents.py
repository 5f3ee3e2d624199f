"""The heavy-tailed agent of ``bench/hedge.py``: one streamed chat completion from the loopback
model server (``tests/model_server.py``) that takes as long as its payload says (the benchmark
draws 95% of the answers at 100 ms and 5% at 5 s). Loaded with
``ORCH_AGENT_MODULES=bench.hedge_agents``; the endpoint is ``ORCH_LLM__BASE_URL``."""

from __future__ import annotations

from pydantic import BaseModel, Field

from workers import AgentContext, agent
from workers.llm import chat


class TailAsk(BaseModel):
    """How long the answer takes, and a sequence number that keeps racers apart."""

    answer_ms: int = Field(ge=1, le=60_000)
    tokens: int = Field(10, ge=1, le=1000)
    seq: int = 0


class TailAnswer(BaseModel):
    text: str
    output_tokens: int


@agent("bench.tail", input=TailAsk, output=TailAnswer)
async def tail(inp: TailAsk, ctx: AgentContext) -> TailAnswer:
    """The answer streams ``tokens`` tokens over ``answer_ms``; a cancel closes the stream."""
    interval_ms = max(1, inp.answer_ms // inp.tokens)
    prompt = f"answer #{inp.seq} [[tokens={inp.tokens} interval_ms={interval_ms}]]"
    text = await chat(ctx, model="tail", messages=[{"role": "user", "content": prompt}])
    return TailAnswer(text=text, output_tokens=ctx.spent.output_tokens)
